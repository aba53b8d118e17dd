"""The outputs stage: the rendered stream fanned out to subscribers, and what is built beside it (status, snapshots).

Each output (virtual camera, video file, preview window, later the browser) subscribes to the stage with a named
buffering policy, in the spirit of aiortc's MediaRelay.subscribe(track, buffered=...):

- Buffering.LATEST: one slot, the newest frame wins; the output's own thread (a publisher.Publisher) sends at its
  fixed rate and repeats the last good frame while rendering stalls, so a camera never starves or goes black.
- Buffering.PUMP: called on the main thread at every pump tick with the newest frame, new or not (OpenCV windows
  must be driven from one thread, and the preview polls its keys then).

The stage starts and stops its outputs together. Each reports its own fps and failure; an output that fails is
logged by name, detached and shown on the status line, and the others go on.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from avatarcam.commands import Command
from avatarcam.types import FaceObservation

if TYPE_CHECKING:
    from avatarcam.pipeline import Rendered
    from avatarcam.preview import PreviewOverlay, PreviewStatus, PreviewWindow
    from avatarcam.publisher import FrameSink, Publisher

log = logging.getLogger(__name__)


class Buffering(enum.Enum):
    """How an output receives the rendered stream (see the module doc)."""

    LATEST = "latest"
    PUMP = "pump"


class Output(Protocol):
    """One subscriber of the rendered stream."""

    name: str
    buffering: Buffering

    def start(self, first_canvas_bgr: np.ndarray) -> None:
        """Start sending, beginning with `first_canvas_bgr` ((S, S, 3) uint8 BGR: the avatar at rest)."""

    def push(self, rendered: Rendered) -> None:
        """Take the newest rendered frame (copy what is kept: the canvas is a render buffer)."""

    @property
    def fps(self) -> float | None:
        """Frames per second this output delivered recently; None before it has any."""
        ...

    @property
    def failure(self) -> str | None:
        """Why this output stopped working (its thread died), else None."""
        ...

    def stop(self) -> None:
        """Stop and release the device or file; idempotent."""


class _RateMeter:
    """Frames per second over the last `window` events."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def tick(self) -> None:
        self._times.append(time.perf_counter())

    @property
    def fps(self) -> float | None:
        t = self._times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else None


class PublishedOutput:
    """A FrameSink (virtual camera, video file) fed by a Publisher thread at a fixed rate: Buffering.LATEST."""

    buffering = Buffering.LATEST

    def __init__(self, name: str, sink: FrameSink, *, fps: float,
                 compose: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.name = name
        self.sink = sink
        self._fps = fps
        self._compose = compose or (lambda canvas_bgr: canvas_bgr)
        self.publisher: Publisher | None = None

    def start(self, first_canvas_bgr: np.ndarray) -> None:
        from avatarcam.publisher import Publisher

        first = self._compose(first_canvas_bgr).copy()
        self.publisher = Publisher(self.sink, fps=self._fps, first_frame_bgr=first, name=f"{self.name}-publisher")
        self.publisher.start()

    def push(self, rendered: Rendered) -> None:
        if self.publisher is not None:
            self.publisher.submit(self._compose(rendered.canvas_bgr))

    @property
    def fps(self) -> float | None:
        return self.publisher.measured_fps if self.publisher is not None else None

    @property
    def failure(self) -> str | None:
        return self.publisher.failure if self.publisher is not None else None

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
        self.sink.close()


class PreviewOutput:
    """The preview window, drawn on the main thread at every pump tick: Buffering.PUMP.

    `status` and `overlay` build the status line and the overlay of a frame; keys pressed in the window are handed
    to `on_command`.
    """

    buffering = Buffering.PUMP
    name = "preview"

    def __init__(self, window: PreviewWindow, *, status: Callable[[Rendered], PreviewStatus],
                 overlay: Callable[[Rendered], PreviewOverlay | None], on_command: Callable[[Command], None],
                 help_text: Callable[[], list[str] | None] = lambda: None) -> None:
        self.window = window
        self._status = status
        self._overlay = overlay
        self._on_command = on_command
        self._help_text = help_text
        self._meter = _RateMeter()
        self._last_seq = -1

    def start(self, first_canvas_bgr: np.ndarray) -> None:
        pass  # the window opens on its first show()

    def push(self, rendered: Rendered) -> None:
        if rendered.seq != self._last_seq:
            self._last_seq = rendered.seq
            self._meter.tick()
        for command in self.window.show(rendered.canvas_bgr, status=self._status(rendered),
                                        overlay=self._overlay(rendered), help_text=self._help_text()):
            self._on_command(command)

    @property
    def fps(self) -> float | None:
        return self._meter.fps

    @property
    def failure(self) -> str | None:
        return None  # it runs on the main thread: a failure is raised by push()

    def stop(self) -> None:
        self.window.close()


@dataclass(frozen=True)
class OutputReport:
    """One output's numbers for the status line and the run summary."""

    name: str
    buffering: Buffering
    fps: float | None
    failure: str | None


class OutputStage:
    """Fans the rendered stream out to its outputs; starts and stops them together (see the module doc)."""

    def __init__(self) -> None:
        self._outputs: list[Output] = []
        self._failed: dict[str, str] = {}

    def subscribe(self, output: Output) -> Output:
        """Add an output; it receives frames by its own `buffering` policy. Returns it."""
        if any(o.name == output.name for o in self._outputs):
            raise ValueError(f"an output named {output.name!r} is already subscribed: give each output its own name")
        self._outputs.append(output)
        return output

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the subscribed outputs, in subscription order."""
        return tuple(o.name for o in self._outputs)

    def start(self, first_canvas_bgr: np.ndarray) -> None:
        """Start every output with the avatar at rest; if one cannot start, the started ones are stopped again."""
        started: list[Output] = []
        try:
            for output in self._outputs:
                output.start(first_canvas_bgr)
                started.append(output)
        except BaseException:
            for output in started:
                _stop_quietly(output)
            raise

    def publish(self, rendered: Rendered) -> None:
        """A new frame: every LATEST output takes it."""
        self._deliver(rendered, Buffering.LATEST)

    def pump(self, rendered: Rendered) -> None:
        """A pump tick: every PUMP output is driven with the newest frame."""
        self._deliver(rendered, Buffering.PUMP)

    def _deliver(self, rendered: Rendered, buffering: Buffering) -> None:
        for output in self._outputs:
            if output.buffering is not buffering or output.name in self._failed:
                continue
            try:
                output.push(rendered)
            except Exception as exc:  # one broken output must not take the others down
                self._fail(output, f"{output.name} failed: {type(exc).__name__}: {exc}")

    def check(self) -> list[str]:
        """Detach outputs whose threads died since the last check; returns every failure so far."""
        for output in self._outputs:
            failure = output.failure
            if failure is not None and output.name not in self._failed:
                self._fail(output, failure)
        return list(self._failed.values())

    @property
    def all_failed(self) -> bool:
        """True when there are outputs and none of them works any more."""
        return bool(self._outputs) and len(self._failed) == len(self._outputs)

    def _fail(self, output: Output, message: str) -> None:
        self._failed[output.name] = message
        log.error("output %s: %s (the other outputs go on)", output.name, message)

    def reports(self) -> list[OutputReport]:
        """fps and failure of every output."""
        return [OutputReport(o.name, o.buffering, o.fps, self._failed.get(o.name)) for o in self._outputs]

    def stop(self) -> None:
        """Stop every output (each even if another one fails to stop); idempotent."""
        for output in reversed(self._outputs):
            _stop_quietly(output)


def _stop_quietly(output: Output) -> None:
    try:
        output.stop()
    except Exception as exc:  # stopping the others matters more than this one's error
        log.warning("output %s did not stop cleanly: %s: %s", output.name, type(exc).__name__, exc)


# -- beside the outputs: the status line, the overlay picture and snapshots


def driver_with_landmarks(frame_bgr: np.ndarray, face: FaceObservation | None, *, max_side: int = 320) -> np.ndarray:
    """A copy of (H, W, 3) uint8 BGR `frame_bgr`, scaled so its longer side is at most `max_side` pixels, with the
    face's landmarks drawn (the preview overlay and snapshots)."""
    scale = min(1.0, max_side / max(frame_bgr.shape[:2]))
    small = cv2.resize(frame_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 \
        else frame_bgr.copy()
    if face is not None:
        for x, y in face.points_px[:, :2] * scale:
            cv2.circle(small, (int(x), int(y)), 1, (80, 255, 80), -1, cv2.LINE_AA)
    return small


def status_note(*, passthrough: bool, frozen: bool, face_seen: bool, failures: list[str]) -> str:
    """The note at the end of the status line: 'PASSTHROUGH FROZEN no face', then any failure."""
    flags = " ".join(text for text, on in (("PASSTHROUGH", passthrough), ("FROZEN", frozen),
                                           ("no face", not face_seen)) if on)
    return " | ".join(part for part in (flags, *failures) if part)


def save_snapshot(rendered: Rendered | None, folder: Path) -> list[Path]:
    """Save the driver frame, the driver with landmarks, and the avatar output as PNGs; returns the files written
    (none when nothing has been rendered yet)."""
    if rendered is None or rendered.frame is None:
        log.info("snapshot: nothing rendered yet")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    driver = rendered.frame.image_bgr.copy()
    marked = driver_with_landmarks(driver, rendered.face, max_side=max(driver.shape[:2]))
    files = {
        folder / f"{stamp}-driver.png": driver,
        folder / f"{stamp}-landmarks.png": marked,
        folder / f"{stamp}-avatar.png": rendered.canvas_bgr.copy(),
    }
    for path, image in files.items():
        cv2.imwrite(str(path), image)
    log.info("snapshot saved: %s", ", ".join(p.name for p in files))
    return list(files)


class StatusLine:
    """Builds the preview's status line for a rendered frame: avatar, calibration, fps and latency (when stats are
    on), the passthrough/frozen/no-face flags, the source's and the avatar loader's notes ("camera 0 stalled...",
    "preparing avatars 3/8"), every failure of a worker or an output, the banner and the current notice."""

    def __init__(self, *, outputs: OutputStage, flags: Callable[[], tuple[bool, bool]],
                 show_stats: Callable[[], bool], notes: Callable[[], list[str]] = list, banner: str = "",
                 notice: Callable[[], str] = str) -> None:
        self._outputs = outputs
        self._flags = flags
        self._show_stats = show_stats
        self._notes = notes
        self._banner = banner
        self._notice = notice
        self._shown_note: str | None = None
        self.failures: list[str] = []
        """Failures to show (worker and output failures, in the order seen); the session fills it."""

    def __call__(self, rendered: Rendered) -> PreviewStatus:
        from avatarcam.preview import PreviewStatus

        waiting = rendered.seq == 0  # app.resting_frame: the avatar at rest before the first render
        stats = self._show_stats() and not waiting
        reports = self._outputs.reports()
        # The fps reaching the camera (or the file); the preview's own when it is the only output.
        measured = next((r for r in reports if r.buffering is Buffering.LATEST), None) or \
            next((r for r in reports), None)
        passthrough, frozen = self._flags()
        note = status_note(passthrough=passthrough, frozen=frozen, face_seen=waiting or rendered.face is not None,
                           failures=[*(n for n in self._notes() if n), *self.failures])
        if note != self._shown_note:  # for the log reader (and the tests): what the status line says
            self._shown_note = note
            log.debug("status: %s", note or "ok")
        return PreviewStatus(
            avatar=rendered.avatar_name, calibration=rendered.calibration,
            fps=(measured.fps or 0.0) if measured is not None and stats else None,
            latency_ms=rendered.latency_ms if stats else None,
            server_ms=rendered.stage_ms.get("server_round_trip") if stats else None,
            note=note, banner=self._banner, notice=self._notice(),
        )
