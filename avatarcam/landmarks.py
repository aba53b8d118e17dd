"""Face landmarks with the MediaPipe Face Landmarker: 478 points, 52 blendshapes and the head transform."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from avatarcam.errors import ModelFileError
from avatarcam.paths import ENGINES_DIR, project_path
from avatarcam.types import BLENDSHAPE_INDEX, BLENDSHAPE_NAMES, FaceObservation  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MODEL_FILENAME = "face_landmarker.task"
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MODEL_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
)
DEFAULT_MODEL_PATH = ENGINES_DIR / MODEL_FILENAME
NUM_LANDMARKS = 478

# Landmark index groups of the 478-point MediaPipe face mesh ("left"/"right" are the subject's own).
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
INNER_LIP_UPPER_MID, INNER_LIP_LOWER_MID = 13, 14
MOUTH_CORNERS = (61, 291)
RIGHT_EYE_RING = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE_RING = (362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382)
RIGHT_EYE_UPPER = (246, 161, 160, 159, 158, 157, 173)
RIGHT_EYE_LOWER = (7, 163, 144, 145, 153, 154, 155)
LEFT_EYE_UPPER = (398, 384, 385, 386, 387, 388, 466)
LEFT_EYE_LOWER = (382, 381, 380, 374, 373, 390, 249)
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)
RIGHT_BROW = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107)
LEFT_BROW = (276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149,
    150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
# Points that move with the skull and hardly with expression: forehead, temples, nose bridge and tip, eye corners.
RIGID_POINTS = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 109, 67, 103, 338, 297, 332, 127, 356, 234, 454,
                33, 133, 362, 263, 98, 327)
NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10


# MediaPipe's C++ start-up lines (absl "W0000 ..."/"I0000 ...", TensorFlow Lite's delegate note) say nothing a
# user can act on; they are filtered out of the native stderr while a graph is built. Anything else is passed on.
_NATIVE_NOISE = re.compile(r"^(?:[WI]0000 |WARNING: Logging before InitGoogle|INFO: Created TensorFlow Lite)")
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def filtered_native_stderr():
    """Route file descriptor 2 to a temporary file for the duration, then pass on every line but MediaPipe's
    start-up noise. One at a time (a lock), since the descriptor is shared by the whole process."""
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real stderr (embedded, pytest capture without fd): nothing to filter
            yield
            return
        with tempfile.TemporaryFile(mode="w+b") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                kept = [line for line in sink.read().decode("utf-8", "replace").splitlines()
                        if line.strip() and not _NATIVE_NOISE.match(line)]
                if kept:
                    sys.stderr.write("\n".join(kept) + "\n")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def landmark_model_path(config) -> Path:
    """The verified landmark model of config.landmarks.model_path (ModelFileError with the fix otherwise)."""
    return verify_model_file(project_path(config.landmarks.model_path))


def verify_model_file(path: Path | str) -> Path:
    """Return the landmarker model path after checking it exists and has the expected sha256."""
    path = Path(path)
    fix = f"run `python tools/install.py --models` (or download {MODEL_URL} to {path})"
    if not path.is_file():
        raise ModelFileError(f"the face landmark model {path} is missing: {fix}")
    seen = file_sha256(path)
    if seen != MODEL_SHA256:
        raise ModelFileError(
            f"the face landmark model {path} is corrupt or a different file: sha256 {seen[:16]}… "
            f"but expected {MODEL_SHA256[:16]}…; delete it and {fix}"
        )
    return path


def _to_observation(result, width: int, height: int, face: int = 0) -> FaceObservation | None:
    if len(result.face_landmarks) <= face:
        return None
    points = np.array([(p.x, p.y, p.z) for p in result.face_landmarks[face]], dtype=np.float32)
    # MediaPipe's x, y are normalised to the image, z to roughly the image width.
    points *= np.array([width, height, width], dtype=np.float32)
    if len(result.face_blendshapes) > face:
        blend = np.array([c.score for c in result.face_blendshapes[face]], dtype=np.float32)
    else:
        blend = np.zeros(len(BLENDSHAPE_NAMES), np.float32)
    if len(result.facial_transformation_matrixes) > face:
        matrix = np.asarray(result.facial_transformation_matrixes[face], dtype=np.float32).reshape(4, 4)
    else:
        matrix = np.eye(4, dtype=np.float32)
    return FaceObservation(points_px=points, blendshapes=blend, head_matrix=matrix, image_size=(width, height))


class FaceLandmarker:
    """MediaPipe Face Landmarker for up to `num_faces` faces (the first drives the avatar); `video` mode tracks
    across frames, `image` mode analyses stills."""

    def __init__(
        self,
        *,
        model_path: Path | str = DEFAULT_MODEL_PATH,
        mode: str = "video",
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        num_faces: int = 1,
    ) -> None:
        if mode not in ("video", "image"):
            raise ValueError(f"mode {mode!r} is not one of 'video', 'image'")
        if not 1 <= num_faces <= 8:
            raise ValueError(f"num_faces {num_faces} is not in 1..8: choose how many faces to track")
        self._model_path = verify_model_file(model_path)
        self._mode = mode
        self._last_timestamp_ms = -1
        from mediapipe.tasks.python import BaseOptions, vision

        running_mode = vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self._model_path)),
            running_mode=running_mode,
            num_faces=num_faces,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        with filtered_native_stderr():
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
            self._warm_up()

    def _warm_up(self) -> None:
        """One detection on a blank image, so the graph's lazy start-up (and its log lines) happens now."""
        import mediapipe as mp

        blank = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((64, 64, 3), np.uint8))
        if self._mode == "video":
            self._landmarker.detect_for_video(blank, 0)
            self._last_timestamp_ms = 0
        else:
            self._landmarker.detect(blank)

    def detect(self, image_bgr: np.ndarray, timestamp_ms: int | None = None) -> FaceObservation | None:
        """Landmarks of the most prominent face in a (H, W, 3) uint8 BGR image, or None when there is none."""
        faces = self.detect_all(image_bgr, timestamp_ms)
        return faces[0] if faces else None

    def detect_all(self, image_bgr: np.ndarray, timestamp_ms: int | None = None) -> list[FaceObservation]:
        """Landmarks of every face found (at most num_faces), in MediaPipe's order; [] when there is none."""
        import cv2
        import mediapipe as mp

        if image_bgr is None or image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            shape = None if image_bgr is None else (image_bgr.shape, image_bgr.dtype)
            raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {shape}")
        height, width = image_bgr.shape[:2]
        rgb = np.ascontiguousarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        if self._mode == "video":
            # MediaPipe requires strictly increasing timestamps in video mode.
            ts = self._last_timestamp_ms + 1 if timestamp_ms is None else int(timestamp_ms)
            ts = max(ts, self._last_timestamp_ms + 1)
            self._last_timestamp_ms = ts
            result = self._landmarker.detect_for_video(image, ts)
        else:
            result = self._landmarker.detect(image)
        faces = (_to_observation(result, width, height, i) for i in range(len(result.face_landmarks)))
        return [face for face in faces if face is not None]

    def close(self) -> None:
        """Release the MediaPipe graph; safe to call twice."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # MediaPipe's own finaliser fails at interpreter exit; close early instead.
        try:
            self.close()
        except Exception:
            pass
