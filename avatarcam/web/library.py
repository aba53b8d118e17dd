"""The avatars every browser session chooses from: names, thumbnails, loaded avatars per canvas size, uploads."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import cv2

from avatarcam.avatars import Avatar, load_avatar, read_image, scan_folder
from avatarcam.errors import AvatarError
from avatarcam.landmarks import FaceLandmarker

THUMBNAIL_PX = 112
"""Side of the square gallery thumbnails in pixels."""

# Leading bytes of the picture formats a visitor may upload; anything else is refused before it is decoded.
UPLOAD_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "webp": (b"RIFF",),
    "gif": (b"GIF87a", b"GIF89a"),
    "bmp": (b"BM",),
}
UPLOAD_MAX_PIXELS = 25_000_000


def upload_kind(data: bytes) -> str | None:
    """The picture format of an upload from its leading bytes ('png', 'jpeg', 'webp', 'gif', 'bmp'), else None."""
    for kind, signatures in UPLOAD_SIGNATURES.items():
        if any(data.startswith(s) for s in signatures) and (kind != "webp" or data[8:12] == b"WEBP"):
            return kind
    return None


class AvatarLibrary:
    """The pictures in the avatars folder, shared by every session; loading and cropping run once per canvas size.

    Thread-safe: sessions load avatars from their own threads. Loaded Avatars are immutable (frozen dataclass,
    arrays not written by the generators' prepare()), so sessions share them.
    """

    def __init__(self, folder: Path, model_path: Path):
        self.folder = Path(folder)
        self._model_path = model_path
        self._lock = threading.Lock()
        # Made now, not on a session's first use: MediaPipe keeps the Python frames of the call that built its
        # graph alive, and a session's constructor among them would never be freed.
        self._landmarker: FaceLandmarker | None = FaceLandmarker(model_path=model_path, mode="image")
        self._loaded: dict[tuple[str, int], tuple[float, Avatar]] = {}
        self._thumbs: dict[str, tuple[float, bytes]] = {}

    def names(self) -> list[str]:
        """Avatar names (file names without extension) in gallery order."""
        return [p.stem for p in scan_folder(self.folder)]

    def path(self, name: str) -> Path:
        """The file of avatar `name`; AvatarError listing the names when there is none."""
        for p in scan_folder(self.folder):
            if p.stem == name:
                return p
        raise AvatarError(f"no avatar named {name!r} in {self.folder}: choose one of {', '.join(self.names())}")

    def thumbnail(self, name: str) -> bytes:
        """A JPEG of the picture's centre, THUMBNAIL_PX square (cached until the file changes)."""
        path = self.path(name)
        mtime = path.stat().st_mtime
        cached = self._thumbs.get(name)
        if cached and cached[0] == mtime:
            return cached[1]
        image = read_image(path)
        h, w = image.shape[:2]
        side = min(h, w)
        square = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        small = cv2.resize(square, (THUMBNAIL_PX, THUMBNAIL_PX), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise AvatarError(f"could not make a thumbnail of {path.name}")
        self._thumbs[name] = (mtime, data.tobytes())
        return data.tobytes()

    def _image_landmarker(self) -> FaceLandmarker:
        if self._landmarker is None:
            self._landmarker = FaceLandmarker(model_path=self._model_path, mode="image")
        return self._landmarker

    def load(self, name: str, canvas_size: int) -> Avatar:
        """The avatar `name` cropped and aligned to a canvas_size canvas (AvatarError when it has no usable face)."""
        path = self.path(name)
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._loaded.get((name, canvas_size))
            if cached and cached[0] == mtime:
                return cached[1]
            avatar = load_avatar(path, self._image_landmarker(), canvas_size)
            self._loaded[(name, canvas_size)] = (mtime, avatar)
            return avatar

    def from_upload(self, data: bytes, canvas_size: int, *, max_bytes: int, name: str = "upload") -> Avatar:
        """An avatar from an uploaded picture, for one session only (never written to the avatars folder).

        Raises AvatarError when it is too large, not a PNG/JPEG/WebP/GIF/BMP picture, or has no usable face.
        """
        if len(data) > max_bytes:
            raise AvatarError(f"the picture is {len(data) / 2**20:.1f} MB, more than the {max_bytes / 2**20:.1f} MB "
                              "limit (web.max_upload_mb): upload a smaller copy")
        kind = upload_kind(data)
        if kind is None:
            raise AvatarError("the upload is not a PNG, JPEG, WebP, GIF or BMP picture: choose a portrait photo")
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as probe:  # the header only: no decoding of a huge picture
                width, height = probe.size
        except Exception:
            raise AvatarError(f"the uploaded {kind.upper()} could not be read (damaged file): re-save it") from None
        if width * height > UPLOAD_MAX_PIXELS:
            raise AvatarError(f"the picture is {width}x{height} pixels, more than {UPLOAD_MAX_PIXELS // 1_000_000} "
                              "megapixels: upload a smaller copy")
        with tempfile.TemporaryDirectory(prefix="facemimic-upload-") as folder:
            path = Path(folder) / f"{name}.{kind}"
            path.write_bytes(data)
            image = read_image(path)  # EXIF orientation, transparency and bit depth handled as for the folder
        from avatarcam.avatars import avatar_from_image

        with self._lock:
            return avatar_from_image(image, self._image_landmarker(), canvas_size, name=name)

    def close(self) -> None:
        """Release the landmarker; idempotent."""
        with self._lock:
            if self._landmarker is not None:
                self._landmarker.close()
                self._landmarker = None
