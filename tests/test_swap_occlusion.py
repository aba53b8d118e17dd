"""Face swap under a cover (generators/swap/occlusion.py): a hand in front of the face shows, the rest stays swapped.

The hand is synthetic: four finger shapes cut from another person's cheek skin (d14, frame 0), shaded darker towards
their edges, pasted over the lower left of d12's face from frame 40 on. MediaPipe keeps tracking a face behind a
hand, so the landmarks given to the swap are those of the uncovered frames, as the live pipeline would see them.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from avatarcam import landmarks as lm
from avatarcam.capture import iter_frames
from avatarcam.generators.swap.reenactor import SwapReenactor, SwapSettings
from avatarcam.landmarks import FaceLandmarker
from avatarcam.types import FaceObservation, Frame, Observed
from tests.conftest import D12, D14

CLEAN_FRAMES = 40
COVERED_FRAMES = 15


@pytest.fixture(scope="module")
def d12_faces(model_path) -> list[tuple[np.ndarray, FaceObservation]]:
    """Frames 0..54 of d12 with their (uncovered) landmarks."""
    frames = list(itertools.islice(iter_frames(str(D12)), CLEAN_FRAMES + COVERED_FRAMES))
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        faces = [landmarker.detect(f, i * 40) for i, f in enumerate(frames)]
    assert all(face is not None for face in faces)
    return list(zip(frames, faces))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def other_skin(model_path) -> np.ndarray:
    """A square of another person's cheek (d14 frame 0, around landmark 205), BGR uint8."""
    frame = next(iter_frames(str(D14)))
    with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
        points = landmarker.detect(frame).points_px
    width = float(np.ptp(points[list(lm.FACE_OVAL), 0]))
    x, y = np.round(points[205, :2]).astype(int)
    r = round(0.07 * width)
    return frame[y - r:y + r, x - r:x + r].copy()


def _hand(skin: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A (h, w, 3) uint8 hand picture of four fingers and its (h, w) float32 0..1 shape."""
    w, h = size
    shape = np.zeros((h, w), np.float32)
    for k in range(4):
        centre = (int((k + 0.5) * w / 4), h // 2 + (k % 2) * h // 12)
        cv2.ellipse(shape, centre, (int(w / 8.5), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    shade = cv2.GaussianBlur(shape, (0, 0), w / 40)
    picture = cv2.resize(skin, (w, h)).astype(np.float32) * (0.55 + 0.45 * shade[..., None])
    return picture.clip(0, 255).astype(np.uint8), shape


def _cover(frame: np.ndarray, face: FaceObservation, skin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame with the hand over the lower left of the face, and the (H, W) bool mask of the hand's inside."""
    points = face.points_px
    centre = points[[61, 234, 152], :2].mean(0)  # between the mouth corner, the cheek and the chin (image left)
    width = float(np.ptp(points[:, 0]))
    size = (int(width * 0.55), int(width * 0.6))
    picture, shape = _hand(skin, size)
    x0, y0 = int(centre[0] - size[0] / 2), int(centre[1] - size[1] / 2)
    covered = frame.copy()
    roi = covered[y0:y0 + size[1], x0:x0 + size[0]]
    roi[:] = (picture * shape[..., None] + roi * (1.0 - shape[..., None])).astype(np.uint8)
    inside = np.zeros(frame.shape[:2], bool)
    inside[y0:y0 + size[1], x0:x0 + size[0]] = cv2.erode(shape, np.ones((9, 9), np.uint8)) > 0.5
    return covered, inside


def _render(portrait_avatar, d12_faces, other_skin, *, occlusion: bool):
    """Mean change (levels) inside the hand and on the uncovered right cheek, per covered frame."""
    swap = SwapReenactor(settings=SwapSettings(occlusion=occlusion))
    prepared = swap.prepare(portrait_avatar)
    out = np.zeros_like(d12_faces[0][0])
    hand_change, cheek_change = [], []
    for i, (frame, face) in enumerate(d12_faces):
        image, inside = _cover(frame, face, other_skin) if i >= CLEAN_FRAMES else (frame, None)
        swap.render(prepared, Observed(frame=Frame(image, i, i / 25.0), face=face), None, i / 25.0, out)
        if inside is not None:
            change = np.abs(out.astype(int) - image.astype(int)).mean(2)
            cheek = np.zeros(image.shape[:2], np.uint8)
            cv2.circle(cheek, tuple(int(v) for v in face.points_px[425, :2]), 12, 1, -1)  # the left cheek
            hand_change.append(float(change[inside].mean()))
            cheek_change.append(float(change[cheek > 0].mean()))
    return np.array(hand_change), np.array(cheek_change)


def test_a_hand_in_front_of_the_face_shows_and_the_rest_stays_swapped(portrait_avatar, d12_faces, other_skin):
    hand, cheek = _render(portrait_avatar, d12_faces, other_skin, occlusion=True)
    print(f"\ninside the hand {np.round(hand, 1)}, uncovered cheek {np.round(cheek, 1)}")
    # Measured: 2.2-3.9 levels inside the hand with the cue, 48-62 without it (the avatar's skin drawn over it).
    assert hand.max() < 6.0, f"the hand shows through (mean change inside it {np.round(hand, 1)})"
    assert cheek.min() > 8.0, f"the uncovered cheek still has the avatar's face ({np.round(cheek, 1)})"
    plain, _ = _render(portrait_avatar, d12_faces, other_skin, occlusion=False)
    print(f"without the cue: inside the hand {np.round(plain, 1)}")
    assert plain.mean() > 4 * hand.mean(), "without the cue the avatar is drawn over the hand"


def test_an_uncovered_face_is_not_read_as_covered(portrait_avatar, model_path):
    """Over the whole of d14 (talking, blinking, turning) hardly any of the face box is ever called covered."""
    swap = SwapReenactor()
    prepared = swap.prepare(portrait_avatar)
    shares = []
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        for i, frame in enumerate(iter_frames(str(D14))):
            out = np.zeros_like(frame)
            face = landmarker.detect(frame, i * 40)
            swap.render(prepared, Observed(frame=Frame(frame, i, i / 25.0), face=face), None, i / 25.0, out)
            covered = swap.last_covered[0] if swap.last_covered else None
            shares.append(0.0 if covered is None else float((covered > 0.5).mean()))
    # Measured: at most 1.5 % of the box in one frame, none in 95 % of the frames (d12, with glasses and fast
    # turns: 4 % in one frame).
    assert len(shares) == 250 and max(shares) < 0.05 and np.percentile(shares, 95) < 0.01, max(shares)
