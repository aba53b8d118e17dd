"""The avatar library: scan a folder, load images, find, crop and align the face onto a square canvas."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarcam import landmarks as lm
from avatarcam.errors import AvatarError
from avatarcam.landmarks import FaceLandmarker

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_FILE_BYTES = 60 * 1024 * 1024
MAX_PIXELS = 50_000_000
# Longest side the face search looks at; larger images are searched at this size, then cropped at full size.
SEARCH_SIDE = 1280
# Canvas framing: the face (forehead to chin) spans this share of the canvas height.
FACE_SHARE = 0.46
FACE_CENTER_Y = 0.55


@dataclass(frozen=True)
class Avatar:
    """One avatar, cropped and aligned to the canvas."""

    name: str
    path: Path | None
    canvas_bgr: np.ndarray
    """(S, S, 3) uint8 BGR."""
    points: np.ndarray
    """(478, 3) float32 landmarks in canvas pixels."""
    loaded_time_s: float = 0.0
    """time.time() when the file was read (reload re-reads files changed since)."""


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 BGR, with an AvatarError naming the problem and the fix."""
    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"avatar {path} does not exist: check the path, or drop images into avatars/")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AvatarError(
            f"avatar {path.name} is {size / 2**20:.0f} MB, more than the {MAX_FILE_BYTES // 2**20} MB limit: "
            "save a smaller copy (a 1024x1024 portrait is plenty)"
        )
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise AvatarError(f"avatar {path.name} could not be decoded as an image (corrupt or not an image file): "
                          f"re-save it as PNG or JPEG")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise AvatarError(
            f"avatar {path.name} is {image.shape[1]}x{image.shape[0]} pixels, more than the "
            f"{MAX_PIXELS // 1_000_000} megapixel limit: save a smaller copy"
        )
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        # Composite transparent images over mid-grey so cut-out characters keep a neutral background.
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3].astype(np.float32) * alpha + 128.0 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _find_face(image_bgr: np.ndarray, landmarker: FaceLandmarker) -> np.ndarray | None:
    h, w = image_bgr.shape[:2]
    scale = min(1.0, SEARCH_SIDE / max(h, w))
    small = cv2.resize(image_bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) \
        if scale < 1.0 else image_bgr
    face = landmarker.detect(small)
    if face is None and min(small.shape[:2]) < 400:
        # Tiny images: the detector works better with some margin and size.
        up = cv2.resize(small, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
        face = landmarker.detect(up)
        if face is not None:
            return face.points_px / (2.0 * scale)
    return None if face is None else face.points_px / scale


def align_face(image_bgr: np.ndarray, points: np.ndarray, canvas_size: int) -> np.ndarray:
    """(2, 3) affine matrix mapping the image onto a canvas with the face upright, centred and sized."""
    eye_r = points[list(lm.RIGHT_EYE_RING), :2].mean(0)
    eye_l = points[list(lm.LEFT_EYE_RING), :2].mean(0)
    dx, dy = eye_l - eye_r
    roll = math.degrees(math.atan2(dy, dx))
    oval = points[list(lm.FACE_OVAL), :2]
    center = oval.mean(0)
    face_height = float(np.linalg.norm(points[lm.FOREHEAD, :2] - points[lm.CHIN, :2]))
    scale = FACE_SHARE * canvas_size / max(face_height, 1.0)
    h, w = image_bgr.shape[:2]
    # Never frame wider than the photo itself: a large face fills more of the canvas instead of showing mirrored
    # borders; the window is then slid (not shrunk) to stay inside the photo.
    scale = max(scale, canvas_size / min(h, w))
    window = canvas_size / scale
    cx = float(np.clip(center[0], window / 2, w - window / 2))
    top = center[1] - FACE_CENTER_Y * window
    cy = float(np.clip(top, 0, h - window)) + FACE_CENTER_Y * window
    matrix = cv2.getRotationMatrix2D((cx, cy), roll, scale)
    matrix[0, 2] += canvas_size / 2 - cx
    matrix[1, 2] += FACE_CENTER_Y * canvas_size - cy
    return matrix


def load_avatar(path: Path, landmarker: FaceLandmarker, canvas_size: int = 512, name: str | None = None) -> Avatar:
    """Read an image, find the face, and return it cropped and aligned on a (canvas_size, canvas_size) canvas."""
    image = read_image(path)
    return avatar_from_image(image, landmarker, canvas_size, name=name or Path(path).stem, path=Path(path))


def avatar_from_image(
    image_bgr: np.ndarray, landmarker: FaceLandmarker, canvas_size: int = 512, *, name: str, path: Path | None = None
) -> Avatar:
    """Crop and align an in-memory (H, W, 3) uint8 BGR image into an Avatar."""
    label = path.name if path else name
    points = _find_face(image_bgr, landmarker)
    if points is None:
        raise AvatarError(
            f"no face found in avatar {label} ({image_bgr.shape[1]}x{image_bgr.shape[0]}): use a portrait where "
            "the face is clearly visible, roughly frontal and at least 80 pixels wide"
        )
    matrix = align_face(image_bgr, points, canvas_size)
    interpolation = cv2.INTER_AREA if matrix[0, 0] ** 2 + matrix[0, 1] ** 2 < 1 else cv2.INTER_CUBIC
    canvas = cv2.warpAffine(image_bgr, matrix, (canvas_size, canvas_size), flags=interpolation,
                            borderMode=cv2.BORDER_REFLECT101)
    face = landmarker.detect(canvas)
    if face is not None:
        canvas_points = face.points_px.astype(np.float32)
    else:
        # Stylised images are sometimes found only at one framing: carry the first landmarks over instead.
        scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
        canvas_points = np.empty_like(points, dtype=np.float32)
        canvas_points[:, :2] = points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        canvas_points[:, 2] = points[:, 2] * scale
    return Avatar(name=name, path=path, canvas_bgr=canvas, points=canvas_points, loaded_time_s=time.time())


def scan_folder(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (the order of the 1..9 hotkeys)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass(frozen=True)
class LoadReport:
    """What loading a folder of avatars gave: the avatars, and one message per file skipped."""

    avatars: list[Avatar]
    skipped: list[str]


def load_folder(folder: Path, landmarker: FaceLandmarker, canvas_size: int = 512) -> LoadReport:
    """Load every image in a folder; a bad file is skipped with a message and the others still load."""
    avatars, skipped = [], []
    for path in scan_folder(folder):
        try:
            avatars.append(load_avatar(path, landmarker, canvas_size))
        except AvatarError as exc:
            log.warning("skipping avatar: %s", exc)
            skipped.append(str(exc))
    return LoadReport(avatars=avatars, skipped=skipped)
