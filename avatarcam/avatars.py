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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".jfif", ".tif", ".tiff")
"""Common picture types, for messages; the folder scan tries every file, whatever its name."""
# Files that sit beside pictures and are never pictures: skipped by the folder scan without a message.
NOT_PICTURES = (".md", ".txt", ".json", ".yaml", ".yml", ".ini", ".db", ".py", ".ds_store")
# EXIF orientation (tag 0x0112) -> how to turn the stored pixels upright, as numpy index operations.
_EXIF_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, *range(2, a.ndim)),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, *range(2, a.ndim))[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}
MAX_FILE_BYTES = 60 * 1024 * 1024
MAX_PIXELS = 50_000_000
# Longest side the face search looks at; larger images are searched at this size, then cropped at full size.
SEARCH_SIDE = 1280
# The face detector finds faces at least about a tenth of the picture it is given. Pictures where the whole view
# finds nothing are searched again in overlapping tiles, halving down to this share of the shorter side (and this
# many pixels): together the search finds faces down to about a tenth of the smallest tile.
MIN_TILE_SHARE = 0.25
MIN_TILE_PX = 320
# Canvas framing: the face (forehead to chin) spans this share of the canvas height.
FACE_SHARE = 0.46
FACE_CENTER_Y = 0.55
# Mesh-fit check (issue 12, item 17): the aligned canvas is searched again under small rotations, zooms and shifts.
# A real face (photo, painting, sketch or cartoon of a person) is found every time at the same place; a mesh that
# the landmark model laid over an animal, a toy or a texture is lost or lands elsewhere. Each view is
# (degrees, scale, shift as a share of the canvas). Measured on the aligned canvas, worst landmark disagreement over
# the eye-corner distance: people 0.013..0.065 (22 portraits, photos, paintings, a sketch, a cartoon, video frames);
# animals whose mesh survived at all 0.47 and 0.64, the other 33 animal pictures lost in at least one view.
FIT_VIEWS = ((12.0, 0.9, 0.04), (-12.0, 1.1, -0.04), (0.0, 0.8, 0.0))
FIT_MAX_SPREAD = 0.2
# Points whose agreement is compared: eye corners, nose tip, mouth corners, inner lips, chin, forehead.
FIT_POINTS = (33, 133, 362, 263, 1, 61, 291, 13, 14, 152, 10)


@dataclass(frozen=True)
class MeshFit:
    """Whether the fitted face mesh belongs to a human face (check_mesh_fit), with what was seen."""

    fits: bool
    spread: float
    """Worst disagreement of FIT_POINTS between the views, over the eye-corner distance (inf: lost in a view)."""
    note: str
    """What was found, for messages ("" when it fits)."""


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
    mesh_fit: MeshFit = MeshFit(fits=True, spread=0.0, note="")
    """Whether the face mesh fits a human face; generators draw no mouth interior or eyelids when it does not."""


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8, 1 = upright) stored in an image file's bytes; 1 when there is none."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(0x0112, 1)
    except Exception:  # not a format Pillow knows, or a broken EXIF block: treat as upright
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Pictures OpenCV cannot read (GIF, some TIFF and JPEG variants): the first frame as uint8 BGR or BGRA."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except Exception:
        return None
    return cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA if has_alpha else cv2.COLOR_RGB2BGR)


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 BGR, upright as its EXIF orientation says, with an AvatarError
    naming the problem and the fix. Any format OpenCV or Pillow reads is accepted (PNG, JPEG/JFIF, WebP, BMP,
    GIF's first frame, TIFF, ...); transparency is composited over mid-grey."""
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
    # IMREAD_UNCHANGED keeps transparency and 16-bit depth, and leaves the EXIF orientation to us (below).
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None and data.size:
        image = _decode_with_pillow(data.tobytes())
    if image is None:
        raise AvatarError(f"avatar {path.name} could not be decoded as an image (corrupt or not an image file): "
                          f"re-save it as PNG or JPEG")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise AvatarError(
            f"avatar {path.name} is {image.shape[1]}x{image.shape[0]} pixels, more than the "
            f"{MAX_PIXELS // 1_000_000} megapixel limit: save a smaller copy"
        )
    upright = _EXIF_UPRIGHT.get(exif_orientation(data.tobytes()))
    if upright is not None:  # phone photos store the sensor's pixels plus a tag saying how to turn them
        image = upright(image)
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    if image.ndim == 2:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        # Composite transparent images over mid-grey so cut-out characters keep a neutral background.
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3].astype(np.float32) * alpha + 128.0 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _detect_at(image_bgr: np.ndarray, landmarker: FaceLandmarker, max_side: int) -> np.ndarray | None:
    """(478, 3) landmarks in `image_bgr` pixels, detected on a copy scaled to at most `max_side`; None if no face."""
    h, w = image_bgr.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1.0 else image_bgr
    face = landmarker.detect(np.ascontiguousarray(small))
    return None if face is None else face.points_px / scale


def _tiles(h: int, w: int):
    """Square tiles (y0, x0, side) overlapping by half, largest first, halving down to the smallest tile side."""
    smallest = max(MIN_TILE_PX, round(min(h, w) * MIN_TILE_SHARE))
    side = min(h, w) // 2
    while side >= smallest:
        stride = side // 2
        ys = list(range(0, max(h - side, 0) + 1, stride)) or [0]
        xs = list(range(0, max(w - side, 0) + 1, stride)) or [0]
        if ys[-1] + side < h:
            ys.append(h - side)
        if xs[-1] + side < w:
            xs.append(w - side)
        for y0 in ys:
            for x0 in xs:
                yield y0, x0, side
        side //= 2


def _refine(image_bgr: np.ndarray, points: np.ndarray, landmarker: FaceLandmarker) -> np.ndarray:
    """Landmarks found in a small tile, detected again on a crop around the face (more pixels, better points)."""
    oval = points[list(lm.FACE_OVAL), :2]
    (x0, y0), (x1, y1) = oval.min(0), oval.max(0)
    half = 1.5 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = image_bgr.shape[:2]
    left, top = int(max(0, cx - half)), int(max(0, cy - half))
    right, bottom = int(min(w, cx + half)), int(min(h, cy + half))
    crop = image_bgr[top:bottom, left:right]
    if min(crop.shape[:2]) < 16:
        return points
    scale = 512 / max(crop.shape[:2])  # the landmark model works best with the face at a few hundred pixels
    resized = cv2.resize(crop, None, fx=scale, fy=scale,
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    face = landmarker.detect(resized)
    if face is None:
        return points
    refined = face.points_px / scale
    refined[:, 0] += left
    refined[:, 1] += top
    return refined


def _find_face(image_bgr: np.ndarray, landmarker: FaceLandmarker) -> np.ndarray | None:
    """(478, 3) float32 landmarks of the most prominent face in full-image pixels, or None.

    Looks at the whole picture (scaled to SEARCH_SIDE), then, for faces too small for that (under about a tenth
    of the picture), at overlapping tiles down to MIN_TILE_SHARE of the shorter side (MIN_TILE_PX at least).
    """
    h, w = image_bgr.shape[:2]
    points = _detect_at(image_bgr, landmarker, SEARCH_SIDE)
    if points is not None:
        return points
    if min(h, w) * min(1.0, SEARCH_SIDE / max(h, w)) < 400:
        # Tiny images: the detector works better with some margin and size.
        scale = min(1.0, SEARCH_SIDE / max(h, w))
        small = cv2.resize(image_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else image_bgr
        up = cv2.resize(small, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
        face = landmarker.detect(up)
        if face is not None:
            return face.points_px / (2.0 * scale)
    for y0, x0, side in _tiles(h, w):
        found = _detect_at(image_bgr[y0:y0 + side, x0:x0 + side], landmarker, 640)
        if found is not None:
            found[:, 0] += x0
            found[:, 1] += y0
            return _refine(image_bgr, found, landmarker)
    return None


def smallest_face_px(width: int, height: int) -> int:
    """About the narrowest face (pixels) the search finds in a width x height picture: a tenth of the smallest
    view it looks at (the whole picture scaled to SEARCH_SIDE, or the smallest tile)."""
    tiles = [side for _, _, side in _tiles(height, width)]
    view = min(tiles) if tiles else min(width, height)
    return max(1, round(0.1 * view))


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
        w, h = image_bgr.shape[1], image_bgr.shape[0]
        raise AvatarError(
            f"no face found in avatar {label} ({w}x{h}): the search looks at the whole picture and at tiles, and "
            f"finds a clearly visible, roughly frontal human face about {smallest_face_px(w, h)} pixels wide or "
            "wider in a picture this size; use a portrait, or crop the picture around the face"
        )
    matrix = align_face(image_bgr, points, canvas_size)
    interpolation = cv2.INTER_AREA if matrix[0, 0] ** 2 + matrix[0, 1] ** 2 < 1 else cv2.INTER_CUBIC
    canvas = cv2.warpAffine(image_bgr, matrix, (canvas_size, canvas_size), flags=interpolation,
                            borderMode=cv2.BORDER_REFLECT101)
    face = landmarker.detect(canvas)
    if face is not None:
        canvas_points = face.points_px.astype(np.float32)
        fit = check_mesh_fit(canvas, canvas_points, landmarker)
    else:
        fit = MeshFit(fits=False, spread=math.inf, note="the face mesh was found at one framing only")
        # Stylised images are sometimes found only at one framing: carry the first landmarks over instead.
        scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
        canvas_points = np.empty_like(points, dtype=np.float32)
        canvas_points[:, :2] = points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        canvas_points[:, 2] = points[:, 2] * scale
    if not fit.fits:
        log.warning("avatar %s: %s, so it does not look like a human face (an animal, a toy or a pattern?); it is "
                    "used as it is, moved by the face mesh, but with no drawn mouth interior or eyelids. For a "
                    "talking face use a picture of a person (photo, painting, drawing or cartoon)", label, fit.note)
    return Avatar(name=name, path=path, canvas_bgr=canvas, points=canvas_points, loaded_time_s=time.time(),
                  mesh_fit=fit)


def check_mesh_fit(canvas_bgr: np.ndarray, points: np.ndarray, landmarker: FaceLandmarker) -> MeshFit:
    """Whether the (478, 3) canvas-pixel landmarks of a (S, S, 3) uint8 BGR canvas fit a human face.

    The landmark model always returns a human-shaped mesh, so its shape says little; what separates a face from a
    mesh laid over fur or texture is whether the image keeps it there: the canvas is searched again in each of
    FIT_VIEWS (turned, zoomed, shifted) and the found points are mapped back. Fits when every view finds the face
    and FIT_POINTS agree within FIT_MAX_SPREAD of the eye-corner distance.
    """
    size = canvas_bgr.shape[0]
    eyes = float(np.linalg.norm(points[33, :2] - points[263, :2]))
    if eyes < 1.0:
        return MeshFit(fits=False, spread=math.inf, note="the face mesh has no width between the eyes")
    spread = 0.0
    for degrees, scale, shift in FIT_VIEWS:
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), degrees, scale)
        matrix[0, 2] += shift * size
        view = cv2.warpAffine(canvas_bgr, matrix, (size, size), borderMode=cv2.BORDER_REFLECT101)
        face = landmarker.detect(view)
        if face is None:
            return MeshFit(fits=False, spread=math.inf, note=(
                f"the face mesh is lost when the picture is turned {degrees:+.0f} degrees and zoomed x{scale:g}"))
        back = cv2.invertAffineTransform(matrix)
        found = face.points_px[list(FIT_POINTS), :2] @ back[:, :2].T + back[:, 2]
        spread = max(spread, float(np.abs(found - points[list(FIT_POINTS), :2]).max()) / eyes)
    if spread > FIT_MAX_SPREAD:
        return MeshFit(fits=False, spread=spread, note=(
            f"the face mesh moves by {spread:.2f} eye widths when the picture is turned or zoomed "
            f"(a face stays within {FIT_MAX_SPREAD})"))
    return MeshFit(fits=True, spread=spread, note="")


def scan_folder(folder: Path) -> list[Path]:
    """Files directly inside `folder` that may be pictures, sorted by name (the order of the 1..9 hotkeys).

    No list of extensions decides: every file is tried (loading reports by name the ones that do not decode),
    except hidden files and the notes and documents that live beside pictures (ORIGIN.md, Thumbs.db).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in NOT_PICTURES)


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
