"""A live session: the main-thread pump between the render worker, the outputs and the user's commands.

Each tick takes the newest rendered frame to the outputs (outputs.OutputStage), drives the preview, carries out
queued commands and checks every worker and output. A worker that dies ends the session: its failure is logged by
name and shown on the status line, and run() re-raises the worker's own error (a FaceMimicError as it is).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from avatarcam.commands import Command
from avatarcam.errors import DeviceError
from avatarcam.handoff import LatestSlot
from avatarcam.outputs import OutputStage, StatusLine
from avatarcam.pipeline import Rendered
from avatarcam.workers import Worker, first_failure

log = logging.getLogger(__name__)


@dataclass
class SessionHooks:
    """What the session calls back: commands, each new frame, and the end-of-source test."""

    handle: Callable[[Command], None]
    """Carries out one user command (the app's command table)."""
    drain_commands: Callable[[], list[Command]]
    """Commands queued by hotkeys and the preview since the last tick."""
    source_finished: Callable[[int], bool] = lambda last_seq: False
    """True when a non-looping source has ended and its last frame (seq) is out."""
    on_frame: list[Callable[[Rendered], None]] = field(default_factory=list)
    """Called with every new rendered frame (the app keeps the newest for snapshots and best match)."""
    listeners: list[Callable[[], None]] = field(default_factory=list)
    """raise_if_failed of helpers that are not workers (the global hotkey listener)."""


class Session:
    """Runs the pump on the calling (main) thread until stop_event, duration_s, the end of the source or a failure.

    `workers` returns the workers to watch (called every tick: the avatar loader comes and goes).
    """

    def __init__(self, *, rendered: LatestSlot[Rendered], outputs: OutputStage, workers: Callable[[], list[Worker]],
                 status: StatusLine, hooks: SessionHooks, stop_event: threading.Event,
                 duration_s: float | None = None, tick_s: float = 0.05) -> None:
        self._rendered = rendered
        self._outputs = outputs
        self._workers = workers
        self._status = status
        self._hooks = hooks
        self._stop_event = stop_event
        self._duration_s = duration_s
        self._tick_s = tick_s
        self.last: Rendered | None = None
        self.last_seq = 0
        self.failed: Worker | None = None
        """The worker whose death ended the session, if one did."""
        self.resting: Rendered | None = None
        """Pumped to the outputs until the first frame is rendered (the avatar at rest while a camera is awaited)."""
        self.started_s = time.perf_counter()

    def run(self) -> None:
        """Pump until the session ends; re-raises a dead worker's error after showing it."""
        self.started_s = time.perf_counter()
        while not self._stop_event.is_set() and not self._finished():
            self.tick()
            if self.failed is not None:
                break
        if self.failed is not None:
            self.failed.raise_if_failed()

    def tick(self) -> None:
        """One pump step (see the module doc)."""
        self._take_newest()
        self._check()
        shown = self.last if self.last is not None else self.resting
        if shown is not None:
            self._outputs.pump(shown)
        for command in self._hooks.drain_commands():
            self._hooks.handle(command)

    def _take_newest(self) -> None:
        seq, rendered = self._rendered.get(self.last_seq, timeout_s=self._tick_s)
        if rendered is None or seq == self.last_seq:
            return
        self.last_seq, self.last = seq, rendered
        self._outputs.publish(rendered)
        for callback in self._hooks.on_frame:
            callback(rendered)

    def _check(self) -> None:
        for listener in self._hooks.listeners:
            listener()
        failures = self._outputs.check()
        dead = first_failure(self._workers())
        if dead is not None and self.failed is None:
            self.failed = dead
            log.error("stopping: %s", dead.failure)
            failures.append(dead.failure or dead.name)
        self._status.failures[:] = failures
        if self._outputs.all_failed:
            raise DeviceError(f"every output failed ({'; '.join(failures)}): see the messages above for the fix")

    def _finished(self) -> bool:
        if self._duration_s is not None and time.perf_counter() - self.started_s >= self._duration_s:
            return True
        return self._hooks.source_finished(self.last_seq)
