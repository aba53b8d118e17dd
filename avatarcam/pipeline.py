"""The real-time loop: capture -> landmarks -> reenactment, joined by latest-wins hand-offs.

Threads: the capture thread (capture.py) reads frames; the LandmarkWorker runs the face landmarker on the newest
frame; the RenderWorker turns the newest observation into an avatar canvas, writing into two preallocated
canvases in turn (double buffering), and offers it to the outputs. Landmarks of frame N+1 run while frame N is
rendered, so both cores are busy. A frame that fails in any stage is counted and skipped; the last good canvas
stays on the outputs, which never go black.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from avatarcam.avatars import Avatar, load_avatar, scan_folder
from avatarcam.commands import Command
from avatarcam.errors import AvatarError
from avatarcam.handoff import LatestSlot
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import Calibrator
from avatarcam.reenact import Reenactor
from avatarcam.types import FaceObservation, Frame, Observed

log = logging.getLogger(__name__)

# A worker that fails this many frames in a row is broken, not unlucky: its error is raised in the main thread.
MAX_CONSECUTIVE_FAILURES = 100


class RateLimitedLog:
    """Logs a recurring problem at most once per `period_s`, with a count of the repeats."""

    def __init__(self, period_s: float = 5.0):
        self.period_s = period_s
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last >= self.period_s:
            suffix = f" (and {self._suppressed} more)" if self._suppressed else ""
            log.warning(message + suffix, *args)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1


class Worker:
    """A thread with start()/stop(); an exception that breaks it is kept and re-raised by raise_if_failed()."""

    name = "worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self):
        """Start the thread."""
        self._thread = threading.Thread(target=self._guarded, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        """Ask the thread to finish and wait for it."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def raise_if_failed(self) -> None:
        """Re-raise, in the caller's thread, the exception that stopped this worker."""
        if self.error is not None:
            raise RuntimeError(f"the {self.name} thread failed: {self.error}") from self.error

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the main thread by raise_if_failed
            self.error = exc
            log.exception("%s thread stopped", self.name)

    def _wake(self) -> None:
        pass

    def _run(self) -> None:
        raise NotImplementedError


class LandmarkWorker(Worker):
    """Runs the face landmarker on the newest captured frame."""

    name = "landmarks"

    def __init__(self, frames: LatestSlot[Frame], landmarker: FaceLandmarker):
        super().__init__()
        self.frames = frames
        self.landmarker = landmarker
        self.observed: LatestSlot[Observed] = LatestSlot()
        self._warn = RateLimitedLog()
        self._start_s = time.perf_counter()
        self.processed = 0
        self.done_seq = 0
        """Sequence number (in `frames`) of the last frame fully handled; see pipeline_drained()."""

    def _wake(self) -> None:
        self.observed.close()

    def _run(self) -> None:
        seq = 0
        failures = 0
        while not self._stop.is_set():
            self.done_seq = seq
            seq, frame = self.frames.get(seq, timeout_s=0.2)
            if frame is None:
                continue
            start = time.perf_counter()
            try:
                face = self.landmarker.detect(frame.image_bgr, int((frame.capture_time_s - self._start_s) * 1000))
                failures = 0
            except Exception as exc:  # one bad frame must not stop the camera feed
                failures += 1
                self._warn("face landmarks failed on frame %d: %s", frame.index, exc)
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise
                face = None
            self.processed += 1
            self.observed.put(Observed(frame=frame, face=face,
                                       landmarks_ms=(time.perf_counter() - start) * 1000))


@dataclass(frozen=True)
class Rendered:
    """One output canvas and where it came from."""

    canvas_bgr: np.ndarray
    """(S, S, 3) uint8 BGR; one of the render loop's two buffers: copy it before keeping it."""
    frame: Frame | None
    face: FaceObservation | None
    stage_ms: dict[str, float]
    latency_ms: float
    """Capture of the driving frame to the end of rendering."""
    avatar_name: str
    calibration: str
    seq: int
    done_time_s: float = field(default_factory=time.perf_counter)


class AvatarStore:
    """The avatars and their prepared generator data; loading and preparing happen on a background thread."""

    def __init__(self, folder: Path, landmarker_factory: Callable[[], FaceLandmarker], reenactor: Reenactor,
                 *, extra: list[Path] | None = None):
        self.folder = Path(folder)
        self._make_landmarker = landmarker_factory
        self._reenactor = reenactor
        self._extra = list(extra or [])
        self._lock = threading.Lock()
        self._entries: list[tuple[Avatar, Any]] = []
        self.skipped: list[str] = []
        self.loading = threading.Event()
        self.loaded = threading.Event()
        self.version = 0
        """Incremented whenever the list of avatars changes."""
        self.progress: tuple[int, int] | None = None
        """(files prepared, files found) while a background load runs, else None."""
        self._thread: threading.Thread | None = None

    def load_first(self, path: Path) -> tuple[Avatar, Any]:
        """Load and prepare one avatar now (the one shown at start), before the background load."""
        with self._make_landmarker() as landmarker:
            avatar = load_avatar(path, landmarker, self._reenactor.canvas_size)
        entry = (avatar, self._reenactor.prepare(avatar))
        with self._lock:
            self._entries = [entry]
            self.version += 1
        return entry

    def reload(self) -> None:
        """Rescan the folder in the background; avatars already prepared are kept without new work."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.loaded.clear()
        self._thread = threading.Thread(target=self._load_all, name="avatar-loader", daemon=True)
        self._thread.start()

    def _load_all(self) -> None:
        self.loading.set()
        try:
            paths = self._extra + [p for p in scan_folder(self.folder) if p not in self._extra]
            with self._lock:
                known = {a.path: (a, p) for a, p in self._entries if a.path is not None}
            entries, skipped = [], []
            self.progress = (0, len(paths))
            with self._make_landmarker() as landmarker:
                for done, path in enumerate(paths):
                    self.progress = (done, len(paths))
                    if path in known and path.stat().st_mtime <= known[path][0].loaded_time_s:
                        entries.append(known[path])
                        continue
                    try:
                        avatar = load_avatar(path, landmarker, self._reenactor.canvas_size)
                        entries.append((avatar, self._reenactor.prepare(avatar)))
                    except AvatarError as exc:
                        log.warning("skipping avatar: %s", exc)
                        skipped.append(str(exc))
                    except Exception as exc:  # a broken file must not stop the others from loading
                        log.warning("skipping avatar %s: %s", path.name, exc)
                        skipped.append(f"{path.name}: {exc}")
            with self._lock:
                self._entries = entries or self._entries
                self.skipped = skipped
                self.version += 1
            log.info("avatars ready: %s", ", ".join(a.name for a, _ in entries) or "none")
        finally:
            self.progress = None
            self.loading.clear()
            self.loaded.set()

    def preparing(self) -> str:
        """'preparing avatars 3/8' while the background load runs, else ""."""
        progress = self.progress
        return f"preparing avatars {progress[0]}/{progress[1]}" if progress else ""

    def entries(self) -> list[tuple[Avatar, Any]]:
        """Snapshot of the (avatar, prepared) list in hotkey order."""
        with self._lock:
            return list(self._entries)


class RenderWorker(Worker):
    """Calibrates, applies user commands and renders the newest observation into a double-buffered canvas."""

    name = "render"

    def __init__(self, observed: LatestSlot[Observed], reenactor: Reenactor, avatars: AvatarStore,
                 calibrator: Calibrator, *, start_avatar: int = 0,
                 on_intensity: Callable[[float], None] | None = None):
        super().__init__()
        self.observed = observed
        self.reenactor = reenactor
        self.avatars = avatars
        self.calibrator = calibrator
        self.rendered: LatestSlot[Rendered] = LatestSlot()
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        size = reenactor.canvas_size
        self._buffers = [np.zeros((size, size, 3), np.uint8) for _ in range(2)]
        self._next_buffer = 0
        self._avatar_index = start_avatar
        self._neutral: Any = None
        self.passthrough = False
        self.frozen = False
        self._warn = RateLimitedLog()
        self._on_intensity = on_intensity
        self.frames_rendered = 0
        self.render_failures = 0
        self.switch_ms: list[float] = []
        self.done_seq = 0
        """Sequence number (in `observed`) of the last observation fully handled; see pipeline_drained()."""
        self._deferred: list[tuple[Command, float]] = []

    @property
    def calibrated(self) -> bool:
        """True once a neutral pose has been taken."""
        return self._neutral is not None

    @property
    def avatar_name(self) -> str:
        """Name of the avatar being shown."""
        entries = self.avatars.entries()
        return entries[self._avatar_index % len(entries)][0].name if entries else "-"

    def submit(self, command: Command) -> None:
        """Queue a command from any thread; it takes effect before the next frame is rendered."""
        self.commands.put((command, time.perf_counter()))

    def _wake(self) -> None:
        self.rendered.close()

    def _apply(self, command: Command, issued_s: float) -> None:
        entries = self.avatars.entries()
        count = max(len(entries), 1)
        before = self._avatar_index
        switching = command.avatar_slot is not None or command in (Command.NEXT_AVATAR, Command.PREVIOUS_AVATAR)
        if switching and self.avatars.loading.is_set() and \
                (len(entries) <= 1 or (command.avatar_slot or 0) >= len(entries)):
            # The avatars are still being prepared: keep the switch and apply it to the list once it is ready.
            self._deferred.append((command, issued_s))
            return
        if command.avatar_slot is not None:
            if command.avatar_slot < len(entries):
                self._avatar_index = command.avatar_slot
        elif command is Command.NEXT_AVATAR:
            self._avatar_index = (self._avatar_index + 1) % count
        elif command is Command.PREVIOUS_AVATAR:
            self._avatar_index = (self._avatar_index - 1) % count
        elif command is Command.RECALIBRATE:
            self._neutral = None
            self.calibrator.reset()
            self.reenactor.reset()
        elif command is Command.PASSTHROUGH:
            self.passthrough = not self.passthrough
        elif command is Command.FREEZE:
            self.frozen = not self.frozen
        elif command in (Command.INTENSITY_UP, Command.INTENSITY_DOWN) and self._on_intensity:
            self._on_intensity(0.1 if command is Command.INTENSITY_UP else -0.1)
        if self._avatar_index != before:
            # The driver's neutral is kept across avatars (as in Avatarify); only smoothing history restarts.
            self.reenactor.reset()
            self._switch_issued_s = issued_s

    def _run(self) -> None:
        seq = 0
        failures = 0
        self._switch_issued_s = None
        self._seen_version = self.avatars.version
        self._shown_name = None
        while not self._stop.is_set():
            self.done_seq = seq
            seq, observed = self.observed.get(seq, timeout_s=0.1)
            if self.avatars.version != self._seen_version:
                # The list changed (background load or reload): stay on the avatar being shown. This runs before
                # the commands, so a switch asked for now is applied to the new list.
                self._seen_version = self.avatars.version
                names = [a.name for a, _ in self.avatars.entries()]
                if self._shown_name in names:
                    self._avatar_index = names.index(self._shown_name)
            if self._deferred and not self.avatars.loading.is_set():
                deferred, self._deferred = self._deferred, []
                for command, issued_s in deferred:
                    self._apply(command, issued_s)
            while True:
                try:
                    command, issued_s = self.commands.get_nowait()
                except queue.Empty:
                    break
                self._apply(command, issued_s)
            if observed is None or self.frozen:
                continue
            entries = self.avatars.entries()
            if not entries:
                continue
            avatar, prepared = entries[self._avatar_index % len(entries)]
            self._shown_name = avatar.name
            start = time.perf_counter()
            now_s = observed.frame.capture_time_s
            stage_ms = {"decode": observed.frame.decode_ms, "landmarks": observed.landmarks_ms}
            out = self._buffers[self._next_buffer]
            try:
                if self._neutral is None:
                    window = self.calibrator.add(observed, now_s)
                    if window:
                        self._neutral = self.reenactor.neutral_from(window)
                        self.reenactor.reset()
                        log.info("calibrated: neutral pose taken from %d frame(s)", len(window))
                if self.passthrough:
                    passthrough_canvas(observed.frame.image_bgr, out)
                    stage_ms["generate"] = (time.perf_counter() - start) * 1000
                else:
                    self.reenactor.render(prepared, observed, self._neutral, now_s, out, stage_ms)
                failures = 0
            except Exception as exc:  # keep the last good canvas on the outputs
                failures += 1
                self.render_failures += 1
                self._warn("rendering frame %d failed: %s", observed.frame.index, exc)
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise
                continue
            done = time.perf_counter()
            if self._switch_issued_s is not None:
                self.switch_ms.append((done - self._switch_issued_s) * 1000)
                self._switch_issued_s = None
            self._next_buffer ^= 1
            self.frames_rendered += 1
            status = "calibrated" if self._neutral is not None else self.calibrator.status
            self.rendered.put(Rendered(
                canvas_bgr=out, frame=observed.frame, face=observed.face, stage_ms=stage_ms,
                latency_ms=(done - observed.frame.capture_time_s) * 1000, avatar_name=avatar.name,
                calibration=status, seq=self.frames_rendered, done_time_s=done,
            ))


def passthrough_canvas(frame_bgr: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The real camera picture, centre-cropped to a square and resized into `out`."""
    h, w = frame_bgr.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    cv2.resize(frame_bgr[y0:y0 + side, x0:x0 + side], out.shape[1::-1], dst=out, interpolation=cv2.INTER_AREA)
    return out


def pipeline_drained(frames: LatestSlot, landmarks: LandmarkWorker, render: RenderWorker, shown_seq: int) -> bool:
    """True when every hand-off is empty: the newest captured frame went through landmarks and rendering, and the
    newest render (seq `shown_seq`) reached the outputs. A finite source that has ended is then done, even when
    frames were dropped on the way (latest wins), which a count of frames read against frames seen never is."""
    return (frames.peek()[0] == landmarks.done_seq and landmarks.observed.peek()[0] == render.done_seq
            and render.rendered.peek()[0] == shown_seq)
