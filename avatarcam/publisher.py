"""The fixed-cadence publisher: sends a frame to the virtual camera every tick, whatever the pipeline is doing."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from avatarcam.errors import DeviceError
from avatarcam.workers import Worker

log = logging.getLogger(__name__)

DROP_POLICY = "latest-wins"
"""submit() keeps only the newest frame; a frame not yet sent when a newer one arrives is dropped (and counted)."""
BLACK_LEVEL = 8
"""A frame whose brightest value is at or below this is treated as black and never sent."""


@runtime_checkable
class FrameSink(Protocol):
    """Where the publisher sends frames (VirtualCameraSink, or any object with these members)."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def open(self) -> object: ...

    def send(self, frame_bgr: np.ndarray) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PublisherStats:
    """A snapshot of the publisher's counters."""

    frames_sent: int
    """Frames the sink accepted."""
    repeats: int
    """Of those, frames that repeated the previous one because no new frame had arrived (stalled producer)."""
    send_errors: int
    """send() calls that raised."""
    reopens: int
    """Times the sink was closed and opened again after repeated failures."""
    dropped: int
    """Submitted frames replaced by a newer one before they were sent (latest-wins)."""
    rejected: int
    """Submitted frames refused because they were black."""
    measured_fps: float
    """Sends per second over roughly the last second."""
    seconds_since_new_frame: float
    """Time since the last accepted submit() (since start() before the first one)."""


class Publisher(Worker):
    """Sends a (sink.height, sink.width, 3) uint8 BGR frame to `sink` at a fixed cadence from its own thread.

    It starts with `first_frame_bgr` (the avatar at neutral), then sends the newest submitted frame, repeating the
    last good one while the producer stalls. A failing send is counted, logged (rate-limited) and retried next
    tick; after `reopen_after_failures` failures in a row the sink is closed and opened again with backoff.
    Open the sink before start(); stop() the publisher before closing the sink.
    """

    def __init__(self, sink: FrameSink, *, fps: float, first_frame_bgr: np.ndarray,
                 reopen_after_failures: int = 30, reopen_backoff_s: tuple[float, float] = (0.5, 10.0),
                 max_reopen_attempts: int | None = None, log_interval_s: float = 5.0,
                 name: str = "facemimic-publisher") -> None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 1 <= fps <= 120:
            raise ValueError(f"publisher fps {fps!r} is not valid: expected a number 1..120")
        if reopen_after_failures < 1:
            raise ValueError(f"reopen_after_failures {reopen_after_failures!r} is not valid: expected >= 1")
        first_backoff, max_backoff = reopen_backoff_s
        if not 0 <= first_backoff <= max_backoff:
            raise ValueError(f"reopen_backoff_s {reopen_backoff_s!r} is not valid: expected (first, max) "
                             "with 0 <= first <= max")
        self._sink = sink
        self._fps = float(fps)
        self._period_s = 1.0 / self._fps
        self._shape = (int(sink.height), int(sink.width), 3)
        self._check_frame(first_frame_bgr, "first_frame_bgr")
        if _is_black(first_frame_bgr):
            raise ValueError("first_frame_bgr is black (max value <= "
                             f"{BLACK_LEVEL}); pass the avatar at neutral so the camera never shows black")
        # Two buffers: submit() writes `_pending`, the thread sends `_current`; a new frame swaps them.
        self._current = first_frame_bgr.copy()
        self._pending = first_frame_bgr.copy()
        self._has_new = False
        self._lock = threading.Lock()
        Worker.__init__(self, name)
        self._reopen_after = int(reopen_after_failures)
        self._backoff_first_s = float(first_backoff)
        self._backoff_max_s = float(max_backoff)
        self._max_reopen_attempts = max_reopen_attempts
        self._log_interval_s = float(log_interval_s)
        # The sink's own pacing (pyvirtualcam's sleep_until_next_frame) is used when it targets our rate.
        sleeper = getattr(sink, "sleep_until_next_frame", None)
        sink_fps = getattr(sink, "fps", None)
        self._sink_sleep = sleeper if callable(sleeper) and sink_fps is not None \
            and abs(float(sink_fps) - self._fps) < 1e-6 else None
        # counters (written by the publisher thread, read under the lock)
        self._frames_sent = 0
        self._repeats = 0
        self._send_errors = 0
        self._reopens = 0
        self._dropped = 0
        self._rejected = 0
        self._send_times: collections.deque[float] = collections.deque(maxlen=max(4, int(self._fps * 2)))
        self._last_submit_t = time.monotonic()
        self._consecutive_failures = 0
        self._unlogged_failures = 0
        self._last_failure_log_t = -float("inf")
        self._unlogged_rejects = 0
        self._last_reject_log_t = -float("inf")

    # -- lifecycle

    def start(self) -> Publisher:
        """Start the thread (idempotent); the first frame goes out at once."""
        if self._thread is None:
            self._last_submit_t = time.monotonic()
        return super().start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and wait up to timeout_s for it. Idempotent; does not close the sink."""
        super().stop(timeout_s)

    def _wrap(self, error: BaseException) -> DeviceError:
        return DeviceError(f"The virtual camera publisher stopped: {type(error).__name__}: {error}")

    # -- producer side

    def submit(self, frame_bgr: np.ndarray) -> bool:
        """Hand over the newest frame (copied; latest wins). False when it was refused as black."""
        self._check_frame(frame_bgr, "frame_bgr")
        if _is_black(frame_bgr):
            with self._lock:
                self._rejected += 1
                self._unlogged_rejects += 1
                now = time.monotonic()
                if now - self._last_reject_log_t >= self._log_interval_s:
                    log.warning("Refused %d black frame(s) from the pipeline; repeating the last good frame.",
                                self._unlogged_rejects)
                    self._last_reject_log_t = now
                    self._unlogged_rejects = 0
            return False
        with self._lock:
            np.copyto(self._pending, frame_bgr)
            if self._has_new:
                self._dropped += 1
            self._has_new = True
            self._last_submit_t = time.monotonic()
        return True

    # -- counters

    @property
    def frames_sent(self) -> int:
        """Frames the sink accepted."""
        return self._frames_sent

    @property
    def repeats(self) -> int:
        """Sent frames that repeated the previous one."""
        return self._repeats

    @property
    def send_errors(self) -> int:
        """send() calls that raised."""
        return self._send_errors

    @property
    def reopens(self) -> int:
        """Successful sink reopenings."""
        return self._reopens

    @property
    def measured_fps(self) -> float:
        """Sends per second over roughly the last second."""
        return self.stats().measured_fps

    def stats(self) -> PublisherStats:
        """A consistent snapshot of all counters."""
        now = time.monotonic()
        with self._lock:
            times = [t for t in self._send_times if now - t <= 1.5]
            since_new = now - self._last_submit_t
            counters = (self._frames_sent, self._repeats, self._send_errors, self._reopens, self._dropped,
                        self._rejected)
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] else 0.0
        return PublisherStats(*counters, measured_fps=fps, seconds_since_new_frame=since_new)

    # -- thread

    def _check_frame(self, frame: np.ndarray, what: str) -> None:
        if not isinstance(frame, np.ndarray) or frame.shape != self._shape or frame.dtype != np.uint8:
            raise ValueError(f"unexpected {what}: shape {getattr(frame, 'shape', None)}, dtype "
                             f"{getattr(frame, 'dtype', None)}; expected {self._shape} uint8 BGR, the sink size "
                             "(compose the avatar canvas with avatarcam.vcam.FrameComposer first)")

    def _run(self) -> None:
        self._loop()

    def _loop(self) -> None:
        next_tick = time.monotonic()
        sent_this_session = False  # pyvirtualcam's pacing needs a sent frame to measure from
        first = True
        while not self._stop.is_set():
            with self._lock:
                fresh = self._has_new
                if fresh:
                    self._current, self._pending = self._pending, self._current
                    self._has_new = False
            try:
                self._sink.send(self._current)
            except Exception as exc:
                self._on_send_failure(exc)
                sent_this_session = False
                if self._consecutive_failures >= self._reopen_after:
                    self._reopen()
                    next_tick = time.monotonic()
                    continue
            else:
                now = time.monotonic()
                with self._lock:
                    self._frames_sent += 1
                    if not fresh and not first:
                        self._repeats += 1
                    self._send_times.append(now)
                first = False
                sent_this_session = True
                if self._consecutive_failures:
                    log.info("Virtual camera sends work again after %d failure(s).", self._consecutive_failures)
                    self._consecutive_failures = 0
            if self._sink_sleep is not None and sent_this_session:
                self._sink_sleep()
                next_tick = time.monotonic()
            else:
                next_tick += self._period_s
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -self._period_s:
                    next_tick = time.monotonic()  # fell behind: restart the schedule rather than burst

    def _on_send_failure(self, exc: Exception) -> None:
        with self._lock:
            self._send_errors += 1
        self._consecutive_failures += 1
        self._unlogged_failures += 1
        now = time.monotonic()
        if now - self._last_failure_log_t >= self._log_interval_s:
            log.warning("Virtual camera send failed (%d time(s) since last report, %d in a row): %s: %s",
                        self._unlogged_failures, self._consecutive_failures, type(exc).__name__,
                        _first_lines(exc))
            self._last_failure_log_t = now
            self._unlogged_failures = 0

    def _reopen(self) -> None:
        """Close and reopen the sink with exponential backoff until it works, stop() is called, or attempts run out."""
        backoff = self._backoff_first_s
        attempts = 0
        log.warning("Virtual camera failed %d times in a row; reopening it.", self._consecutive_failures)
        while not self._stop.is_set():
            try:
                self._sink.close()
            except Exception as exc:  # a broken device may also fail to close; opening again is what matters
                log.debug("closing the failed sink raised %s: %s", type(exc).__name__, exc)
            if self._stop.wait(backoff):
                return
            attempts += 1
            try:
                self._sink.open()
            except Exception as exc:
                if self._max_reopen_attempts is not None and attempts >= self._max_reopen_attempts:
                    raise DeviceError(
                        f"The virtual camera could not be reopened after {attempts} attempt(s): check that it "
                        "still exists (python tools/vcam_setup.py --check), then restart FaceMimic. Last error: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("Reopening the virtual camera failed (attempt %d, next in %.1f s): %s", attempts,
                            min(max(backoff * 2, 0.01), self._backoff_max_s), _first_lines(exc))
                backoff = min(max(backoff * 2, 0.01), self._backoff_max_s)
                continue
            with self._lock:
                self._reopens += 1
            self._consecutive_failures = 0
            log.info("Virtual camera reopened after %d attempt(s).", attempts)
            return


def _first_lines(exc: BaseException, count: int = 2) -> str:
    """The head of a (possibly long, set-up-text-carrying) error message, for repeated log lines."""
    lines = str(exc).strip().splitlines()
    return " / ".join(lines[:count]) + (" ..." if len(lines) > count else "")


def _is_black(frame_bgr: np.ndarray) -> bool:
    return int(frame_bgr.max()) <= BLACK_LEVEL
