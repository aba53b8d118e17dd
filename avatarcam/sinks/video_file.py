"""A FrameSink that records frames to a video file (the output when there is no display or camera), and the video
writers it and offline rendering share: H.264 through PyAV for .mp4 (what browsers and phones play), Motion JPEG
for .avi and lossless FFV1 for .mkv through OpenCV."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcam.errors import DeviceError

log = logging.getLogger(__name__)

# H.264 settings: CRF 20 keeps a 512x512 face close to the source; "superfast" costs about what OpenCV's mp4v
# encoder did beside the live pipeline, with smaller files; yuv420p is the pixel format every player decodes.
H264_OPTIONS = {"crf": "20", "preset": "superfast"}


class H264Writer:
    """Writes (H, W, 3) uint8 BGR frames as H.264 (avc1) in an mp4 through PyAV (FFmpeg's libx264).

    Frames get timestamps k / fps (a constant rate). H.264 in yuv420p needs even sides: an odd width or height
    loses its last column or row. The `moov` index is written by release(), so call it (it is idempotent).
    """

    codec = "H.264 (avc1, libx264)"

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        import av

        width, height = size
        self._even = (width - width % 2, height - height % 2)
        if min(self._even) < 2:
            raise DeviceError(f"cannot write video {path}: frames of {width}x{height} are too small for H.264")
        rate = Fraction(fps).limit_denominator(1001)
        self._container: Any = av.open(str(path), "w")
        try:
            stream = self._container.add_stream("libx264", rate=rate, options=dict(H264_OPTIONS))
            stream.width, stream.height = self._even
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = 1 / rate
        except Exception:
            self._container.close()
            raise
        self._stream = stream
        self._frame_type = av.VideoFrame
        self._count = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        """Encode one frame (cropped to even sides)."""
        w, h = self._even
        frame = self._frame_type.from_ndarray(np.ascontiguousarray(frame_bgr[:h, :w]), format="bgr24")
        frame.pts = self._count
        self._count += 1
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def release(self) -> None:
        """Flush the encoder and write the file's index; idempotent."""
        container, self._container = self._container, None
        if container is None:
            return
        try:
            for packet in self._stream.encode(None):
                container.mux(packet)
        finally:
            container.close()


class OpenCvWriter:
    """cv2.VideoWriter with a codec label: Motion JPEG (.avi), FFV1 (.mkv) or MPEG-4 part 2 (mp4v, the fallback)."""

    _LABELS = {"MJPG": "Motion JPEG", "FFV1": "FFV1 (lossless)", "mp4v": "MPEG-4 part 2 (mp4v)"}

    def __init__(self, path: Path, fps: float, size: tuple[int, int], fourcc: str):
        self.codec = self._LABELS.get(fourcc, fourcc)
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise DeviceError(f"cannot write video {path}: use a .mp4, .avi or .mkv name in a writable folder")

    def write(self, frame_bgr: np.ndarray) -> None:
        """Append one frame."""
        self._writer.write(frame_bgr)

    def release(self) -> None:
        """Finish the file; idempotent."""
        self._writer.release()


def open_writer(out_path: Path, fps: float, size: tuple[int, int]) -> H264Writer | OpenCvWriter:
    """A writer for (width, height) BGR frames: H.264 (PyAV) for .mp4, falling back to OpenCV's mp4v with a
    warning that says so when PyAV or its libx264 is missing; Motion JPEG for .avi; lossless FFV1 for .mkv.
    DeviceError naming the file and the fix when nothing can write it."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise DeviceError(f"cannot write video {out_path}: it is a folder; give a file name in it, such as "
                          f"{out_path / 'facemimic.mp4'}")
    blocking = next((p for p in out_path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise DeviceError(f"cannot write video {out_path}: {blocking} is a file, not a folder; choose another "
                          "name or folder")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, a read-only or virtual file system
        raise DeviceError(f"cannot write video {out_path}: its folder {out_path.parent} cannot be made "
                          f"({exc.strerror or exc}); choose a writable folder") from exc
    suffix = out_path.suffix.lower()
    writer: H264Writer | OpenCvWriter
    if suffix in (".avi", ".mkv"):
        writer = OpenCvWriter(out_path, fps, size, "MJPG" if suffix == ".avi" else "FFV1")
        log.info("writing %s as %s", out_path, writer.codec)
        return writer
    try:
        writer = H264Writer(out_path, fps, size)
        log.info("writing %s as %s", out_path, writer.codec)
        return writer
    except DeviceError:
        raise
    except OSError as exc:  # no permission, a read-only or virtual file system (PyAV's errors are OSErrors too)
        raise DeviceError(f"cannot write video {out_path}: {exc.strerror or exc}; choose a writable folder") from exc
    except Exception as exc:  # PyAV missing, or an FFmpeg build without libx264
        writer = OpenCvWriter(out_path, fps, size, "mp4v")
        log.warning("video %s: H.264 is not available (%s: %s), writing %s instead, which most browsers do not "
                    "play; `pip install av` brings H.264", out_path, type(exc).__name__, exc, writer.codec)
        return writer


MAX_CATCH_UP_S = 10.0
"""Longest gap a live recording fills with repeats of the last frame in one go (a longer stall is shortened)."""


class VideoFileSink:
    """Writes (height, width, 3) uint8 BGR frames to an .mp4/.avi/.mkv file at a fixed fps (publisher.FrameSink).

    A live recording keeps the wall clock: when frames come late (a busy machine, where the publisher restarts its
    schedule rather than burst), the frame is written again for each tick missed since the first frame, so the file
    lasts as long as the run and plays at the right speed (at most MAX_CATCH_UP_S filled per gap).
    """

    def __init__(self, path: Path, *, width: int, height: int, fps: float,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self._width, self._height, self.fps_value = width, height, fps
        self._writer: H264Writer | OpenCvWriter | None = None
        self._clock = clock
        self._start_s: float | None = None
        self.frames_written = 0
        """Frames in the file, repeats included."""
        self.codec = ""
        """The codec in use once open ("H.264 (avc1, libx264)", ...)."""

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return self._width

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return self._height

    def open(self) -> VideoFileSink:
        """Create the file (DeviceError naming the fix when it cannot be written); idempotent."""
        if self._writer is None:
            self._writer = open_writer(self.path, self.fps_value, (self._width, self._height))
            self.codec = self._writer.codec
        return self

    def send(self, frame_bgr: np.ndarray) -> None:
        """Append one frame (more than once when it comes late: see the class)."""
        if self._writer is None:
            raise DeviceError(f"video file {self.path} is not open: call open() first")
        now = self._clock()
        if self._start_s is None:
            self._start_s = now
        due = int((now - self._start_s) * self.fps_value + 0.5) + 1  # frames the file should hold after this one
        copies = max(1, min(due - self.frames_written, int(MAX_CATCH_UP_S * self.fps_value)))
        for _ in range(copies):
            self._writer.write(frame_bgr)
        self.frames_written += copies

    def close(self) -> None:
        """Finish the file; idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
