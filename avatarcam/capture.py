"""Frame sources: a camera index, a video file or a URL. A CaptureThread owns the device."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarcam.errors import DeviceError
from avatarcam.handoff import LatestSlot
from avatarcam.types import Frame
from avatarcam.workers import Worker

log = logging.getLogger(__name__)

MAX_RETRY_S = 10.0


@dataclass(frozen=True)
class SourceSpec:
    """A parsed capture source."""

    kind: str
    """'camera', 'file' or 'url'."""
    target: int | str

    @property
    def live(self) -> bool:
        """True for sources that produce frames in real time (cameras, streams)."""
        return self.kind != "file"

    @staticmethod
    def parse(source: str | int) -> SourceSpec:
        """Interpret a --source value; a missing file is an error naming the path."""
        text = str(source).strip()
        if text.isdigit():
            return SourceSpec("camera", int(text))
        if "://" in text:
            return SourceSpec("url", text)
        path = Path(text).expanduser()
        if not path.is_file():
            raise DeviceError(
                f"video source {text!r} is neither a camera index (0, 1, ...), an existing file, nor a URL: "
                "check the path, or pass --source 0 for the first webcam"
            )
        return SourceSpec("file", str(path))

    def describe(self) -> str:
        """Human-readable name of the source."""
        return f"camera {self.target}" if self.kind == "camera" else str(self.target)


def open_capture(spec: SourceSpec, *, width: int = 1280, height: int = 720, fps: float = 30.0) -> cv2.VideoCapture:
    """Open a cv2.VideoCapture for the source, raising DeviceError with a fix when it cannot be opened."""
    capture = cv2.VideoCapture(spec.target)
    if spec.kind == "camera":
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver's queue short: we want the newest frame
    if not capture.isOpened():
        capture.release()
        if spec.kind == "camera":
            raise DeviceError(
                f"camera {spec.target} could not be opened: check it is plugged in and not used by another app "
                "(close Zoom/Meet previews), or choose another with --source 1"
            )
        raise DeviceError(f"{spec.describe()} could not be opened as a video: check the file or URL")
    return capture


def probe_camera(index: int = 0) -> bool:
    """True when a camera at `index` opens and delivers a frame."""
    capture = cv2.VideoCapture(index)
    try:
        return bool(capture.isOpened() and capture.read()[0])
    finally:
        capture.release()


def file_info(path: str) -> tuple[int, float, tuple[int, int]]:
    """(frame count, fps, (width, height)) of a video file."""
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise DeviceError(f"video {path} could not be opened: is it a video file?")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        return count, fps, size
    finally:
        capture.release()


def iter_frames(path: str):
    """Yield (H, W, 3) uint8 BGR frames of a video file in order (offline rendering: nothing is dropped)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DeviceError(f"video {path} could not be opened: is it a video file?")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


class CaptureThread(Worker):
    """Reads a source on its own thread into a LatestSlot; reopens a failing camera with backoff.

    Live sources publish only the newest frame. Files are paced at their own frame rate (or read as fast as
    possible with pace=False) and loop when loop=True. `status` says what the device is doing.
    """

    def __init__(self, spec: SourceSpec, *, width: int = 1280, height: int = 720, fps: float = 30.0,
                 mirror: bool = False, pace: bool = True, loop: bool = True, retry_s: float = 1.0,
                 pace_fps: float | None = None, max_frames: int | None = None) -> None:
        self.spec = spec
        self.frames: LatestSlot[Frame] = LatestSlot()
        self._size = (width, height)
        self._fps = fps
        self._mirror = mirror and spec.kind == "camera"
        self._pace = pace
        self._pace_fps = pace_fps
        self._loop = loop
        self._retry_s = retry_s
        self._max_frames = max_frames
        Worker.__init__(self, "capture")
        self.status = "starting"
        self.frames_read = 0
        self.ended = threading.Event()
        self.source_fps = fps

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop reading and release the device."""
        super().stop(timeout_s)
        self.frames.close()

    def _run(self) -> None:
        wait_s = self._retry_s
        index = 0
        while not self._stop.is_set():
            try:
                capture = open_capture(self.spec, width=self._size[0], height=self._size[1], fps=self._fps)
            except DeviceError as exc:
                self.status = f"{exc} (retrying in {wait_s:.0f} s)"
                log.warning("%s", self.status)
                if self.spec.kind == "file":
                    self.ended.set()
                    return
                self._stop.wait(wait_s)
                wait_s = min(MAX_RETRY_S, wait_s * 2)
                continue
            self.status = "running"
            fps = capture.get(cv2.CAP_PROP_FPS)
            if fps and fps > 0:
                self.source_fps = fps
            period = 1.0 / (self._pace_fps or self.source_fps or 30.0)
            next_time = time.perf_counter()
            failures = 0
            try:
                while not self._stop.is_set():
                    read_start = time.perf_counter()
                    ok, image = capture.read()
                    decode_ms = (time.perf_counter() - read_start) * 1000
                    if not ok or image is None:
                        if self.spec.kind == "file":
                            if self._loop:
                                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                                continue
                            self.status = "ended"
                            self.ended.set()
                            return
                        failures += 1
                        if failures >= 5:  # unplugged or the driver gave up: reopen with backoff
                            self.status = f"{self.spec.describe()} stopped delivering frames; reopening"
                            log.warning("%s", self.status)
                            break
                        continue
                    failures = 0
                    wait_s = self._retry_s
                    if self.spec.kind == "file" and self._pace:
                        next_time += period
                        delay = next_time - time.perf_counter()
                        if delay > 0:
                            self._stop.wait(delay)
                        else:
                            next_time = time.perf_counter()
                    if self._mirror:
                        image = cv2.flip(image, 1)
                    self.frames.put(Frame(image_bgr=np.ascontiguousarray(image), index=index,
                                          capture_time_s=time.perf_counter(), decode_ms=decode_ms))
                    index += 1
                    self.frames_read = index
                    if self._max_frames is not None and index >= self._max_frames:
                        self.status = "ended"
                        self.ended.set()
                        return
            finally:
                capture.release()
            if not self._stop.is_set():
                self._stop.wait(wait_s)
                wait_s = min(MAX_RETRY_S, wait_s * 2)
