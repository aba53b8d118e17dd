"""The avatar library: real face finding and cropping, bad files skipped with clear messages."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from avatarcam import landmarks as lm
from avatarcam.avatars import FACE_SHARE, load_avatar, load_folder, read_image, scan_folder
from avatarcam.errors import AvatarError
from tests.conftest import ASTRONAUT, PORTRAIT, ROOT


def _face_height(points):
    return float(np.linalg.norm(points[lm.FOREHEAD, :2] - points[lm.CHIN, :2]))


def test_small_face_in_a_busy_scene_is_found_cropped_and_centred(astronaut_avatar):
    a = astronaut_avatar
    assert a.canvas_bgr.shape == (512, 512, 3)
    # The face fills the planned share of the canvas and sits in the middle, upright.
    assert _face_height(a.points) == pytest.approx(FACE_SHARE * 512, rel=0.12)
    centre = a.points[list(lm.FACE_OVAL), :2].mean(0)
    assert abs(centre[0] - 256) < 30
    eyes_dy = a.points[list(lm.LEFT_EYE_RING), 1].mean() - a.points[list(lm.RIGHT_EYE_RING), 1].mean()
    assert abs(eyes_dy) < 4


def test_large_face_is_framed_without_mirrored_borders(portrait_avatar, image_landmarker):
    # The portrait's face is large: the crop stays inside the photo rather than padding with reflections.
    original = cv2.imread(str(PORTRAIT))
    assert portrait_avatar.canvas_bgr.shape == (512, 512, 3)
    top_row = portrait_avatar.canvas_bgr[0].astype(int)
    assert np.abs(top_row - original[0, :, :].astype(int)).mean() < 40


def test_rotated_portrait_is_levelled(image_landmarker, tmp_path):
    image = cv2.imread(str(PORTRAIT))
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((256, 256), 20, 0.9), (512, 512),
                             borderMode=cv2.BORDER_REPLICATE)
    path = tmp_path / "tilted.png"
    cv2.imwrite(str(path), rotated)
    avatar = load_avatar(path, image_landmarker)
    dy = avatar.points[list(lm.LEFT_EYE_RING), 1].mean() - avatar.points[list(lm.RIGHT_EYE_RING), 1].mean()
    assert abs(dy) < 5


def test_grey_and_transparent_images_load(image_landmarker, tmp_path):
    image = cv2.imread(str(PORTRAIT))
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]))
    assert read_image(grey).shape == (512, 512, 3)
    assert load_avatar(rgba, image_landmarker).canvas_bgr.shape == (512, 512, 3)


def test_bad_files_are_skipped_with_messages_and_the_rest_load(image_landmarker, tmp_path):
    shutil.copy(PORTRAIT, tmp_path / "a_good.jpg")
    (tmp_path / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    cv2.imwrite(str(tmp_path / "c_noface.png"), np.full((300, 300, 3), 90, np.uint8))
    (tmp_path / "d_empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    report = load_folder(tmp_path, image_landmarker)
    assert [a.name for a in report.avatars] == ["a_good"]
    messages = "\n".join(report.skipped)
    assert "b_corrupt.png could not be decoded" in messages and "re-save it as PNG or JPEG" in messages
    assert "no face found in avatar c_noface.png" in messages
    assert "d_empty.jpg could not be decoded" in messages
    assert len(report.skipped) == 3


def test_huge_image_is_refused_with_the_limit(image_landmarker, tmp_path, monkeypatch):
    import avatarcam.avatars as avatars

    monkeypatch.setattr(avatars, "MAX_PIXELS", 100_000)
    with pytest.raises(AvatarError, match="512x512 pixels, more than the 0 megapixel limit: save a smaller copy"):
        load_avatar(PORTRAIT, image_landmarker)
    monkeypatch.setattr(avatars, "MAX_FILE_BYTES", 1000)
    with pytest.raises(AvatarError, match="MB limit"):
        read_image(ASTRONAUT)


def test_shipped_avatars_all_load_and_have_origins(image_landmarker):
    folder = ROOT / "avatars"
    paths = scan_folder(folder)
    assert len(paths) >= 3
    report = load_folder(folder, image_landmarker)
    assert report.skipped == [] and len(report.avatars) == len(paths)
    origin = (folder / "ORIGIN.md").read_text()
    for path in paths:
        assert path.name in origin, f"{path.name} has no origin note in avatars/ORIGIN.md"
