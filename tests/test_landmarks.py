"""The real MediaPipe Face Landmarker on real fixture frames, and the model-file checks."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from avatarcam.capture import iter_frames
from avatarcam.errors import ModelFileError
from avatarcam.landmarks import BLENDSHAPE_NAMES, FaceLandmarker, verify_model_file
from avatarcam.motion import eye_openness, mouth_openness
from tests.conftest import D12, D14, PORTRAIT


def test_detects_478_points_blendshapes_and_head_matrix(image_landmarker):
    image = cv2.imread(str(PORTRAIT))
    face = image_landmarker.detect(image)
    assert face is not None
    assert face.points_px.shape == (478, 3) and face.points_px.dtype == np.float32
    assert face.blendshapes.shape == (len(BLENDSHAPE_NAMES),) == (52,)
    assert face.head_matrix.shape == (4, 4)
    h, w = image.shape[:2]
    xy = face.points_px[:, :2]
    assert (xy[:, 0] > 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] > 0).all() and (xy[:, 1] < h).all()
    # The nose tip is between the eyes horizontally and below them.
    assert face.points_px[33, 0] < face.points_px[1, 0] < face.points_px[263, 0]
    assert face.points_px[1, 1] > face.points_px[159, 1]


def test_no_face_gives_none(image_landmarker):
    blank = np.full((480, 640, 3), 127, np.uint8)
    assert image_landmarker.detect(blank) is None


def test_video_mode_tracks_mouth_and_blinks_on_real_clips(model_path):
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        mouth = [mouth_openness(landmarker.detect(f, i * 40).points_px) for i, f in enumerate(iter_frames(str(D12)))
                 if i < 130]
    # d12 opens the mouth wide around frames 115-130 and has it nearly closed at the start.
    assert max(mouth[115:130]) > 0.4 > 0.15 > mouth[0]
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        eyes = [float(eye_openness(landmarker.detect(f, i * 40).points_px).mean())
                for i, f in enumerate(iter_frames(str(D14))) if i < 160]
    # d14 has the eyes closed for a long stretch around frames 110-160.
    assert np.median(eyes[120:150]) < 0.5 * np.median(eyes[:60])


def test_rejects_bad_images(image_landmarker):
    with pytest.raises(ValueError, match="uint8 BGR"):
        image_landmarker.detect(np.zeros((10, 10), np.uint8))


def test_missing_or_corrupt_model_says_how_to_fix(tmp_path, model_path):
    with pytest.raises(ModelFileError, match="tools/install.py --models"):
        verify_model_file(tmp_path / "face_landmarker.task")
    corrupt = tmp_path / "face_landmarker.task"
    shutil.copy(model_path, corrupt)
    with open(corrupt, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00" * 16)
    with pytest.raises(ModelFileError, match="corrupt or a different file.*sha256"):
        verify_model_file(corrupt)
    with pytest.raises(ModelFileError):
        FaceLandmarker(model_path=corrupt)
