"""A FrameSink that records frames to a video file (the output when there is no display or camera)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from avatarcam.errors import DeviceError


class VideoFileSink:
    """Writes (height, width, 3) uint8 BGR frames to an .mp4/.avi/.mkv file at a fixed fps (publisher.FrameSink)."""

    def __init__(self, path: Path, *, width: int, height: int, fps: float):
        self.path = Path(path)
        self._width, self._height, self.fps_value = width, height, fps
        self._writer: cv2.VideoWriter | None = None
        self.frames_written = 0

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
        from avatarcam.offline import open_writer

        if self._writer is None:
            self._writer = open_writer(self.path, self.fps_value, (self._width, self._height))
        return self

    def send(self, frame_bgr: np.ndarray) -> None:
        """Append one frame."""
        if self._writer is None:
            raise DeviceError(f"video file {self.path} is not open: call open() first")
        self._writer.write(frame_bgr)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file; idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
