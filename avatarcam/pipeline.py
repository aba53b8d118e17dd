"""The real-time loop: capture -> landmarks -> reenactment, joined by latest-wins hand-offs.

Threads (each a workers.Worker): the capture thread (capture.py) reads frames; the LandmarkWorker runs the face
landmarker on the newest frame; the RenderWorker turns the newest observation into an avatar canvas, writing into
two preallocated canvases in turn (double buffering), and offers it to the outputs (outputs.py). Landmarks of
frame N+1 run while frame N is rendered, so both cores are busy. A frame that fails in any stage is counted and
skipped; the last good canvas stays on the outputs, which never go black.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcam.avatars import Avatar, load_avatar, scan_folder
from avatarcam.commands import Command, SelectAvatar, as_render_request
from avatarcam.errors import AvatarError, EngineUnavailable
from avatarcam.generators import output_shape
from avatarcam.generators.base import Reenactor
from avatarcam.handoff import LatestSlot
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import Calibrator
from avatarcam.types import FaceObservation, Frame, Observed
from avatarcam.workers import RateLimitedLog, TaskWorker, Worker

log = logging.getLogger(__name__)

# A worker that fails this many frames in a row is broken, not unlucky: its error is raised in the main thread.
# EngineUnavailable (a remote runtime reconnecting) is not counted: the outputs hold the last frame until it is back.
MAX_CONSECUTIVE_FAILURES = 100


def counts_towards_failure_limit(exc: BaseException) -> bool:
    """Whether a failed frame counts towards MAX_CONSECUTIVE_FAILURES (False for a runtime that is reconnecting)."""
    return not isinstance(exc, EngineUnavailable)


class LandmarkWorker(Worker):
    """Runs the face landmarker on the newest captured frame."""

    name = "landmarks"

    def __init__(self, frames: LatestSlot[Frame], landmarker: FaceLandmarker):
        super().__init__()
        self.frames = frames
        self.landmarker = landmarker
        self.observed: LatestSlot[Observed] = LatestSlot()
        self._warn = RateLimitedLog(logger=log)
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
                faces = self.landmarker.detect_all(frame.image_bgr,
                                                   int((frame.capture_time_s - self._start_s) * 1000))
                failures = 0
            except Exception as exc:  # one bad frame must not stop the camera feed
                failures += 1
                self._warn("face landmarks failed on frame %d: %s", frame.index, exc)
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise
                faces = []
            self.processed += 1
            self.observed.put(Observed(frame=frame, face=faces[0] if faces else None, more_faces=tuple(faces[1:]),
                                       landmarks_ms=(time.perf_counter() - start) * 1000))


@dataclass(frozen=True)
class Rendered:
    """One output canvas and where it came from."""

    canvas_bgr: np.ndarray
    """(S, S, 3) uint8 BGR (a draws_on_frame family: the driver frame's (H, W, 3)); one of the render loop's two
    buffers: copy it before keeping it."""
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
        self._loader: TaskWorker | None = None
        self._closing = threading.Event()

    @property
    def loader(self) -> TaskWorker | None:
        """The worker of the current (or last) background load; None before the first reload()."""
        return self._loader

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
        if self._loader is not None and self._loader.is_running:
            return
        self.loaded.clear()
        self._loader = TaskWorker("avatar-loader", self._load_all).start()

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
                    if self._closing.is_set():  # the app is stopping: the list is not needed any more
                        return
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

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop a background load after the avatar it is preparing, and wait up to timeout_s for it; idempotent."""
        self._closing.set()
        if self._loader is not None:
            self._loader.stop(timeout_s)

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
                 calibrator: Calibrator, *, start_avatar: int = 0):
        super().__init__()
        self.observed = observed
        self.reenactor = reenactor
        self.avatars = avatars
        self.calibrator = calibrator
        self.rendered: LatestSlot[Rendered] = LatestSlot()
        self.commands: queue.SimpleQueue[tuple[Command | SelectAvatar, float]] = queue.SimpleQueue()
        shape = output_shape(reenactor, None)
        self._buffers = [np.zeros(shape, np.uint8) for _ in range(2)]
        self._next_buffer = 0
        self._avatar_index = start_avatar
        self._neutral: Any = None
        self.passthrough = False
        self.frozen = False
        self._warn = RateLimitedLog(logger=log)
        self.frames_rendered = 0
        self.render_failures = 0
        self._failures_in_a_row = 0
        self.switch_ms: list[float] = []
        self._switch_issued_s: float | None = None
        self._seen_version = avatars.version
        self._shown_name: str | None = None
        # The render thread's command table; avatar selection (SelectAvatar) is data and handled in _apply.
        self._actions: dict[Command, Callable[[], None]] = {
            Command.NEXT_AVATAR: lambda: self._step_avatar(1),
            Command.PREVIOUS_AVATAR: lambda: self._step_avatar(-1),
            Command.RECALIBRATE: self._recalibrate,
            Command.PASSTHROUGH: self._toggle_passthrough,
            Command.FREEZE: self._toggle_freeze,
            Command.INTENSITY_UP: lambda: self._step_intensity(0.1),
            Command.INTENSITY_DOWN: lambda: self._step_intensity(-0.1),
        }
        self.done_seq = 0
        """Sequence number (in `observed`) of the last observation fully handled; see pipeline_drained()."""
        self._deferred: list[tuple[Command | SelectAvatar, float]] = []

    @property
    def calibrated(self) -> bool:
        """True once a neutral pose has been taken."""
        return self._neutral is not None

    @property
    def avatar_name(self) -> str:
        """Name of the avatar being shown."""
        entries = self.avatars.entries()
        return entries[self._avatar_index % len(entries)][0].name if entries else "-"

    def submit(self, command: Command | SelectAvatar) -> None:
        """Queue a command from any thread; it takes effect before the next frame is rendered."""
        request = as_render_request(command) if isinstance(command, Command) else command
        self.commands.put((request, time.perf_counter()))

    def _wake(self) -> None:
        self.rendered.close()

    # -- commands (render thread)

    def _step_avatar(self, step: int) -> None:
        self._avatar_index = (self._avatar_index + step) % max(len(self.avatars.entries()), 1)

    def _recalibrate(self) -> None:
        self._neutral = None
        self.calibrator.reset()
        self.reenactor.reset()

    def _toggle_passthrough(self) -> None:
        self.passthrough = not self.passthrough

    def _toggle_freeze(self) -> None:
        self.frozen = not self.frozen

    def _step_intensity(self, step: float) -> None:
        settings = self.reenactor.motion.settings.with_intensity_step(step)
        self.reenactor.motion.update_settings(settings)
        log.info("expression intensity: %s", ", ".join(f"{k} {v:.1f}" for k, v in settings.intensity.items()))

    def _apply(self, request: Command | SelectAvatar, issued_s: float) -> None:
        before = self._avatar_index
        if self._must_wait_for_avatars(request):
            # The avatars are still being prepared: keep the switch and apply it to the list once it is ready.
            self._deferred.append((request, issued_s))
            return
        if isinstance(request, SelectAvatar):
            if request.index < len(self.avatars.entries()):
                self._avatar_index = request.index
        elif request in self._actions:
            self._actions[request]()
        if self._avatar_index != before:
            # The driver's neutral is kept across avatars (as in Avatarify); only smoothing history restarts.
            self.reenactor.reset()
            self._switch_issued_s = issued_s

    def _must_wait_for_avatars(self, request: Command | SelectAvatar) -> bool:
        """True for an avatar switch that the list being prepared cannot serve yet."""
        if not self.avatars.loading.is_set():
            return False
        count = len(self.avatars.entries())
        if isinstance(request, SelectAvatar):
            return request.index >= count
        return request in (Command.NEXT_AVATAR, Command.PREVIOUS_AVATAR) and count <= 1

    def _drain_commands(self) -> None:
        if self._deferred and not self.avatars.loading.is_set():
            deferred, self._deferred = self._deferred, []
            for request, issued_s in deferred:
                self._apply(request, issued_s)
        while True:
            try:
                request, issued_s = self.commands.get_nowait()
            except queue.Empty:
                return
            self._apply(request, issued_s)

    def _follow_avatar_list(self) -> None:
        if self.avatars.version == self._seen_version:
            return
        # The list changed (background load or reload): stay on the avatar being shown. This runs before the
        # commands, so a switch asked for now is applied to the new list.
        self._seen_version = self.avatars.version
        names = [a.name for a, _ in self.avatars.entries()]
        if self._shown_name in names:
            self._avatar_index = names.index(self._shown_name)

    # -- the loop

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            self.done_seq = seq
            seq, observed = self.observed.get(seq, timeout_s=0.1)
            self._follow_avatar_list()
            self._drain_commands()
            if observed is None or self.frozen:
                continue
            entries = self.avatars.entries()
            if entries:
                self._render_one(observed, *entries[self._avatar_index % len(entries)])

    def _calibrate(self, observed: Observed, now_s: float) -> None:
        window = self.calibrator.add(observed, now_s)
        if window:
            self._neutral = self.reenactor.neutral_from(window)
            self.reenactor.reset()
            log.info("calibrated: neutral pose taken from %d frame(s)", len(window))

    def _draw(self, observed: Observed, prepared: Any, out: np.ndarray, stage_ms: dict[str, float]) -> bool:
        """Calibrate and render into `out`; False (and the last good canvas stays on the outputs) on a failure."""
        start = time.perf_counter()
        now_s = observed.frame.capture_time_s
        try:
            if self._neutral is None:
                self._calibrate(observed, now_s)
            if self.passthrough:
                passthrough_canvas(observed.frame.image_bgr, out)
                stage_ms["generate"] = (time.perf_counter() - start) * 1000
            else:
                self.reenactor.render(prepared, observed, self._neutral, now_s, out, stage_ms)
        except Exception as exc:
            self._failures_in_a_row += counts_towards_failure_limit(exc)
            self.render_failures += 1
            self._warn("rendering frame %d failed: %s", observed.frame.index, exc)
            if self._failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise
            return False
        self._failures_in_a_row = 0
        return True

    def _render_one(self, observed: Observed, avatar: Avatar, prepared: Any) -> None:
        self._shown_name = avatar.name
        stage_ms = {"decode": observed.frame.decode_ms, "landmarks": observed.landmarks_ms}
        shape = output_shape(self.reenactor, observed.frame.image_bgr.shape)
        if self._buffers[0].shape != shape:  # a family that draws on the frame: the camera's size (it may change)
            self._buffers = [np.zeros(shape, np.uint8) for _ in range(2)]
        out = self._buffers[self._next_buffer]
        if not self._draw(observed, prepared, out, stage_ms):
            return
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
    """The real camera picture, centre-cropped to a square and resized into `out` (copied as it is when `out` has
    the frame's shape)."""
    if out.shape == frame_bgr.shape:
        np.copyto(out, frame_bgr)
        return out
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
