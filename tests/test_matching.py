"""Best-matching avatar (the B hotkey) for the built-in generator."""

from __future__ import annotations

import cv2

from avatarcam.matching import best_matching_avatar, shape_distance
from tests.conftest import PORTRAIT


def test_the_driver_matches_the_avatar_with_its_own_face(image_landmarker, portrait_avatar, astronaut_avatar):
    face = image_landmarker.detect(cv2.imread(str(PORTRAIT)))
    avatars = [astronaut_avatar, portrait_avatar]
    assert best_matching_avatar(face, avatars) == 1
    assert shape_distance(face.points_px, portrait_avatar.points) < shape_distance(face.points_px,
                                                                                  astronaut_avatar.points)
    assert best_matching_avatar(face, []) is None
