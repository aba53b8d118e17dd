"""Frame sources: a camera index, a video file or a URL. A CaptureThread owns the device."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from avatarcam.errors import DeviceError
from avatarcam.handoff import LatestSlot
from avatarcam.types import Frame
from avatarcam.workers import Worker

log = logging.getLogger(__name__)

# Reopening is retried with backoff up to this interval: short, so a camera that comes back is used within
# about a second (an attempt on an absent device costs next to nothing).
MAX_RETRY_S = 1.0
# Network sources: give up opening after this long, and treat a read that waits longer as a stalled stream
# (OpenCV's FFmpeg defaults are 30 s each, which froze the avatar mid-blink without a word).
URL_OPEN_TIMEOUT_MS = 5000
URL_READ_TIMEOUT_MS = 2000
# A live source with no new frame for this long is "stalled": the status line says so and it is reopened.
STALL_S = 2.0
# A picture whose pixel spread (standard deviation over a sparse grid, 0..255) stays below this is uniform:
# a black, covered or disconnected camera.
UNIFORM_SPREAD = 4.0
UNIFORM_REPORT_S = 1.0
_DEVICE_PATH = re.compile(r"^/dev/video(\d+)$")


class VideoSource(Protocol):
    """What the capture thread reads from: cv2.VideoCapture, or any object with the same four methods."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def set(self, prop: int, value: float) -> bool: ...

    def release(self) -> None: ...


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV's own log while probing devices (it prints backend errors for every absent camera)."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    level = logging_api.getLogLevel()
    logging_api.setLogLevel(logging_api.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging_api.setLogLevel(level)


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
        if _DEVICE_PATH.match(text):
            # A capture card or another virtual camera by device path: opened like a camera, retried while absent.
            return SourceSpec("camera", text)
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


def open_capture(spec: SourceSpec, *, width: int = 1280, height: int = 720, fps: float = 30.0,
                 open_timeout_ms: int = URL_OPEN_TIMEOUT_MS, read_timeout_ms: int = URL_READ_TIMEOUT_MS
                 ) -> cv2.VideoCapture:
    """Open a cv2.VideoCapture for the source, raising DeviceError with a fix when it cannot be opened.

    URLs get short open and read timeouts (milliseconds) so a camera that never answers or stops sending fails
    fast instead of hanging for OpenCV's default 30 s.
    """
    if spec.kind == "url":
        capture = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_ms), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_ms)])
    elif spec.kind == "camera":
        # V4L2 waits 10 s for a frame by default; a stalled camera should be noticed and reopened sooner.
        os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", str(max(1, round(read_timeout_ms / 1000))))
        with quiet_opencv():
            capture = cv2.VideoCapture(spec.target)
    else:
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
                f"{spec.describe()} could not be opened: check it is plugged in and not used by another app "
                "(close Zoom/Meet previews), or choose another with --source 1"
            )
        if spec.kind == "url":
            raise DeviceError(f"{spec.describe()} could not be opened (refused, or no answer within "
                              f"{open_timeout_ms / 1000:g} s): check the address and that the camera or stream is on")
        if spec.kind == "file":
            raise file_error(str(spec.target))
        raise DeviceError(f"{spec.describe()} could not be opened as a video: check the file or URL")
    return capture


def probe_camera(index: int | str = 0) -> bool:
    """True when a camera at `index` opens and delivers a frame (quietly: no OpenCV backend errors printed)."""
    with quiet_opencv():
        capture = cv2.VideoCapture(index)
        try:
            return bool(capture.isOpened() and capture.read()[0])
        finally:
            capture.release()


def camera_device_exists(target: int | str, *, system: str | None = None, dev_root: str = "/dev") -> bool | None:
    """Whether the camera device exists at all (True/False on Linux, where /dev/videoN tells); None elsewhere.

    Lets a busy webcam (present, but another app holds it) be told apart from no webcam at all.
    """
    if (system or platform.system()) != "Linux":
        return None
    path = str(target) if not isinstance(target, int) else f"{dev_root}/video{target}"
    return os.path.exists(path)


def first_frame(path: str) -> np.ndarray:
    """The first decodable frame of a video file; DeviceError naming the file and the fix when there is none."""
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise file_error(path)
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok or frame is None:
        raise DeviceError(no_frames_message(path))
    return frame


def no_frames_message(path: str) -> str:
    """The error for a video that opens but decodes no frame (an interrupted download, a broken encode)."""
    cut = mp4_truncation(path)
    return (f"video {path} opens but no frame could be decoded ({cut or 'an interrupted download or a damaged file'}"
            "): download or export it again, or re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`")


# ISO base media (mp4, mov, m4v, 3gp) top-level box types: a file whose first box is one of these is walked.
_MP4_TOP_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pdin", b"moof", b"mfra",
                  b"styp", b"sidx", b"meta"}


def mp4_truncation(path: str | Path) -> str:
    """How an mp4/mov file is cut short, in words ("" when it is whole, or not such a file).

    Walks the top-level boxes (ISO/IEC 14496-12: a 32-bit big-endian size, a 4-character type, a 64-bit size when
    the first is 1): a box that claims more bytes than the file has left means the file ends early; a file with
    media but no 'moov' (or fragment 'moof') box has lost its index, which most recorders write last.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            seen: list[bytes] = []
            offset = 0
            while offset + 8 <= size and len(seen) < 10_000:
                handle.seek(offset)
                header = handle.read(16)
                box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if not seen and kind not in _MP4_TOP_BOXES:
                    return ""
                if box_size == 1 and len(header) == 16:
                    box_size = int.from_bytes(header[8:16], "big")
                elif box_size == 0:  # "to the end of the file"
                    box_size = size - offset
                if box_size < 8:
                    return ""  # not a box structure we can judge
                seen.append(kind)
                if offset + box_size > size:
                    index = "" if b"moov" in seen or b"moof" in seen else "; its index ('moov' box) is missing"
                    return (f"the file ends early: it is truncated at byte {size:,} of {offset + box_size:,} (its "
                            f"'{kind.decode('latin-1')}' box is cut off{index}), an interrupted download or copy")
                offset += box_size
    except OSError:
        return ""
    if seen and b"mdat" in seen and b"moov" not in seen and b"moof" not in seen:
        return ("the file has no index ('moov' box): the recording or download was cut off before it was finished")
    return ""


def file_error(path: str) -> DeviceError:
    """The error for a video file that cannot be opened at all, saying why when the file is cut short."""
    cut = mp4_truncation(path)
    if cut:
        return DeviceError(f"video {path} could not be opened: {cut}; download, copy or export it again")
    return DeviceError(f"video {path} could not be opened: is it a video file? Check the path, or re-save it as .mp4")


def ends_early_message(path: str, decoded: int, header_count: int = 0) -> str:
    """The warning for a video that decodes some frames but is cut short ("" when it is whole)."""
    cut = mp4_truncation(path)
    if not cut:
        return ""
    listed = f" of the {header_count} its header lists" if header_count > decoded else ""
    return (f"video {path} ends early: it is truncated at frame {decoded}{listed} ({cut}); using the {decoded} "
            "frames that decoded. Download or export it again for the rest")


def picture_spread(image_bgr: np.ndarray) -> float:
    """Standard deviation (0..255) of a sparse grid of pixels: near 0 for a black or uniform picture."""
    h, w = image_bgr.shape[:2]
    step = max(1, min(h, w) // 48)
    return float(image_bgr[::step, ::step].std())


def as_bgr(image: np.ndarray | None) -> np.ndarray | None:
    """A decoded picture as (H, W, 3) uint8 BGR; None for anything that is not a picture (garbage from a source)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        return None
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 2:
        return image
    return None


def fit_to_size(image_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) of `size` = (width, height): centre-cropped to its aspect, resized.

    A camera that comes back at another resolution keeps feeding the pipeline frames of the size it calibrated on,
    so the neutral pose (in pixels) stays valid.
    """
    width, height = size
    h, w = image_bgr.shape[:2]
    if (w, h) == (width, height):
        return image_bgr
    target_aspect = width / height
    if w / h > target_aspect:  # too wide: crop the sides
        crop_w = max(1, round(h * target_aspect))
        x0 = (w - crop_w) // 2
        image_bgr = image_bgr[:, x0:x0 + crop_w]
    else:  # too tall: crop top and bottom
        crop_h = max(1, round(w / target_aspect))
        y0 = (h - crop_h) // 2
        image_bgr = image_bgr[y0:y0 + crop_h]
    shrink = image_bgr.shape[1] > width
    return cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def file_info(path: str) -> tuple[int, float, tuple[int, int]]:
    """(frame count, fps, (width, height)) of a video file."""
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise file_error(path)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        return count, fps, size
    finally:
        capture.release()


def iter_frames(path: str):
    """Yield (H, W, 3) uint8 BGR frames of a video file in order (offline rendering: nothing is dropped)."""
    for frame, _ in iter_timed_frames(path):
        yield frame


def _timestamp_s(capture: VideoSource) -> float | None:
    """The presentation time in seconds of the frame just read, or None where the backend gives none."""
    ms = capture.get(cv2.CAP_PROP_POS_MSEC)
    return ms / 1000.0 if ms is not None and ms == ms and ms >= 0 else None


def iter_timed_frames(path: str):
    """Yield (frame, timestamp_s) for every frame of a video file: (H, W, 3) uint8 BGR and its presentation time
    in seconds from the stream's own timestamps (CAP_PROP_POS_MSEC), so variable frame rates keep their timing."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise file_error(path)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame, _timestamp_s(capture)
    finally:
        capture.release()


def frame_timestamps(path: str) -> list[float]:
    """Presentation times (seconds) of every decodable frame, in order; the list's length is the true frame count
    (container headers may give none, or a wrong one)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise file_error(path)
    times: list[float] = []
    try:
        while capture.grab():
            times.append(_timestamp_s(capture) or 0.0)
    finally:
        capture.release()
    return times


class CaptureThread(Worker):
    """Reads a source on its own thread into a LatestSlot; reopens a failing or stalled live source with backoff.

    Live sources publish only the newest frame. Files are paced by their frame timestamps (or read as fast as
    possible with pace=False) and loop when loop=True. Every frame handed on is (H, W, 3) uint8 BGR at the size of
    the first frame: a camera that comes back at another resolution is centre-cropped and scaled to it.
    `status` says what the device is doing; `health()` is the one-line problem for the status line ("" when fine).
    `opener` replaces cv2.VideoCapture (any VideoSource; it raises DeviceError when the source cannot be opened).
    """

    def __init__(self, spec: SourceSpec, *, width: int = 1280, height: int = 720, fps: float = 30.0,
                 mirror: bool = False, pace: bool = True, loop: bool = True, retry_s: float = 1.0,
                 pace_fps: float | None = None, max_frames: int | None = None,
                 opener: Callable[[], VideoSource] | None = None, stall_s: float = STALL_S) -> None:
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
        self._opener = opener or (lambda: open_capture(spec, width=width, height=height, fps=fps))
        self.stall_s = stall_s
        self.status = "starting"
        self.frames_read = 0
        self.ended = threading.Event()
        self.source_fps = fps
        self.frame_size: tuple[int, int] | None = None
        """(width, height) of the frames handed on: the first frame's size."""
        self.last_frame_s: float | None = None
        """time.perf_counter() of the newest frame handed on."""
        self.spread = 255.0
        """picture_spread() of the newest frame."""
        self._uniform_since: float | None = None
        self._last_seen_size: tuple[int, int] | None = None
        self.reconnects = 0
        self._cut_checked = False
        self.notes: list[str] = []
        """Warnings about the source that the run summary may repeat (a file that ends early)."""
        self.resized_frames = 0
        self.garbage_frames = 0

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop reading and release the device."""
        super().stop(timeout_s)
        self.frames.close()

    def health(self, now_s: float | None = None) -> str:
        """The source's problem in a few words for the status line, or "" when frames arrive and look like a picture."""
        if self.ended.is_set() or not self.spec.live:
            return ""
        now_s = time.perf_counter() if now_s is None else now_s
        name = self.spec.describe()
        if self.last_frame_s is None:
            return f"waiting for {name}..."
        age = now_s - self.last_frame_s
        if age > self.stall_s:
            return f"{name} stalled: no frame for {age:.0f} s, reconnecting"
        if self._uniform_since is not None and now_s - self._uniform_since >= UNIFORM_REPORT_S:
            return f"{name} shows a uniform (black?) picture: lens cover or privacy shutter?"
        return ""

    def _open(self) -> VideoSource:
        return self._opener()

    def _run(self) -> None:
        wait_s = self._retry_s
        index = 0
        while not self._stop.is_set():
            try:
                capture = self._open()
            except DeviceError as exc:
                self.status = f"{exc} (retrying in {wait_s:.0f} s)"
                log.warning("%s", self.status)
                if self.spec.kind == "file":
                    self.error = exc  # raise_if_failed() re-raises it; the status line names it
                    self.ended.set()
                    return
                self._stop.wait(wait_s)
                wait_s = min(MAX_RETRY_S, wait_s * 2)
                continue
            self.status = "running"
            fps = capture.get(cv2.CAP_PROP_FPS)
            if fps and 0 < fps <= 240:
                self.source_fps = fps
            try:
                index = self._read_until_broken(capture, index)
            finally:
                capture.release()
            if self.ended.is_set():
                return
            if not self._stop.is_set():
                self.reconnects += 1
                self._stop.wait(wait_s)
                wait_s = min(MAX_RETRY_S, wait_s * 2)
            if index > 0:
                wait_s = self._retry_s  # it delivered before: the next loss starts the backoff afresh

    def _read_until_broken(self, capture: VideoSource, index: int) -> int:
        """Read frames until stop, the end of a file, or a live source that fails or stalls; returns the next index."""
        period = 1.0 / (self._pace_fps or self.source_fps or 30.0)
        prev_due: float | None = None  # when the previous file frame was due (perf_counter seconds)
        prev_ts: float | None = None  # its stream timestamp (seconds)
        opened_s = time.perf_counter()
        last_good_s = opened_s
        delivered_here = 0
        since_restart = 0  # frames since a looping file last restarted
        while not self._stop.is_set():
            read_start = time.perf_counter()
            ok, raw = capture.read()
            decode_ms = (time.perf_counter() - read_start) * 1000
            image = as_bgr(raw) if ok else None
            if ok and image is None:
                self.garbage_frames += 1
            if image is None:
                if self.spec.kind == "file":
                    if not ok and index == 0 and delivered_here == 0:
                        self.error = DeviceError(no_frames_message(str(self.spec.target)))
                        self.status = "ended"
                        self.ended.set()
                        return index
                    if ok:
                        continue  # one undecodable frame inside a file: skip it
                    self._warn_if_cut_short(since_restart)
                    if self._loop and since_restart > 0:  # (a restart that gives no frame ends the file)
                        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        since_restart = 0
                        continue
                    self.status = "ended"
                    self.ended.set()
                    return index
                if time.perf_counter() - last_good_s > self.stall_s:
                    # Unplugged, a dead stream, or the driver gave up: reopen with backoff.
                    self.status = f"{self.spec.describe()} stopped delivering frames; reopening"
                    log.warning("%s", self.status)
                    return index
                if not ok:
                    self._stop.wait(0.01)  # a failing read can return at once: do not spin
                continue
            last_good_s = time.perf_counter()
            delivered_here += 1
            since_restart += 1
            if self.spec.kind == "file" and self._pace:
                prev_due, prev_ts = self._pace_frame(capture, prev_due, prev_ts, period)
            image = self._normalise(image)
            if self._mirror:
                image = cv2.flip(image, 1)
            now = time.perf_counter()
            self._track_picture(image, now)
            self.frames.put(Frame(image_bgr=np.ascontiguousarray(image), index=index,
                                  capture_time_s=now, decode_ms=decode_ms))
            self.last_frame_s = now
            index += 1
            self.frames_read = index
            if self._max_frames is not None and index >= self._max_frames:
                self.status = "ended"
                self.ended.set()
                return index
        return index

    def _warn_if_cut_short(self, decoded: int) -> None:
        """Once per source: say so when the file just played out ends early (a truncated download)."""
        if self._cut_checked or self.spec.kind != "file":
            return
        self._cut_checked = True
        message = ends_early_message(str(self.spec.target), decoded)
        if message:
            log.warning("%s", message)
            self.notes.append(message)

    def _pace_frame(self, capture: VideoSource, prev_due: float | None, prev_ts: float | None,
                    period: float) -> tuple[float, float | None]:
        """Wait until a file frame is due: its own timestamp after the previous one (variable frame rates play at
        their true speed), or one nominal period where timestamps are missing or jump back (a loop)."""
        ts = _timestamp_s(capture) if self._pace_fps is None else None
        now = time.perf_counter()
        if prev_due is None:
            due = now
        elif ts is not None and prev_ts is not None and 0 < ts - prev_ts < 5.0:
            due = prev_due + (ts - prev_ts)
        else:
            due = prev_due + period
        if due < now - 0.25:  # fell far behind (a slow disk, a paused process): count afresh from now
            due = now
        delay = due - now
        if delay > 0:
            self._stop.wait(delay)
        return due, ts

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        size = (image.shape[1], image.shape[0])
        if self.frame_size is None:
            self.frame_size = size
            return image
        if size != self.frame_size:
            if self.resized_frames == 0 or self._last_seen_size != size:
                log.warning("%s now delivers %dx%d frames instead of %dx%d: they are scaled to %dx%d so the "
                            "calibration stays valid (press c to recalibrate if the picture looks different)",
                            self.spec.describe(), *size, *self.frame_size, *self.frame_size)
            self._last_seen_size = size
            self.resized_frames += 1
            return fit_to_size(image, self.frame_size)
        return image

    def _track_picture(self, image: np.ndarray, now_s: float) -> None:
        self.spread = picture_spread(image)
        if self.spread < UNIFORM_SPREAD:
            if self._uniform_since is None:
                self._uniform_since = now_s
        else:
            self._uniform_since = None
