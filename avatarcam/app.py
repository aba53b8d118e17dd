"""The composition root: the one place that builds concrete stages from the config and wires them together.

App.run builds every stage in one visible block and hands the running to a session.Session (the main-thread pump);
commands from hotkeys and the preview are carried out through one table per owner (App._actions here, the render
worker's for what happens on the render thread).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from avatarcam.capture import CaptureThread, SourceSpec, camera_device_exists, first_frame, probe_camera
from avatarcam.commands import Command, SelectAvatar
from avatarcam.config import AvatarsConfig, Config
from avatarcam.disclosure import DisclosureBadge
from avatarcam.errors import AvatarError, DeviceError, FaceMimicError
from avatarcam.generators import build_reenactor, family, landmark_faces
from avatarcam.landmarks import FaceLandmarker, landmark_model_path
from avatarcam.motion import Calibrator
from avatarcam.outputs import (
    OutputStage,
    PreviewOutput,
    PublishedOutput,
    StatusLine,
    driver_with_landmarks,
    save_snapshot,
)
from avatarcam.paths import PROJECT_ROOT, SAMPLE_DRIVER, project_path
from avatarcam.pipeline import AvatarStore, LandmarkWorker, Rendered, RenderWorker, pipeline_drained
from avatarcam.session import Session, SessionHooks
from avatarcam.sinks.video_file import VideoFileSink
from avatarcam.types import Observed
from avatarcam.workers import Worker

log = logging.getLogger(__name__)

DEMO_BANNER = "DEMO: sample clip drives the avatar (no webcam)"
NOTICE_S = 2.0
"""How long a notice (snapshot saved, best match, ...) stays on the preview."""

__all__ = ["App", "RunSummary", "VideoFileSink", "driver_with_landmarks", "resolve_avatar"]


def resolve_avatar(config: Config) -> tuple[Path | None, int | None, str | None]:
    """The start avatar as (explicit path, 1-based index, name); exactly one is set."""
    value = config.avatars.default.strip()
    path = Path(value).expanduser()
    if path.suffix and (path.is_file() or "/" in value or "\\" in value):
        if not path.is_file():
            raise AvatarError(f"avatar {value} does not exist: check the path, or give a name from the avatars folder")
        return path.resolve(), None, None
    if value.isdigit():
        return None, int(value), None
    return None, None, value


@dataclass
class RunSummary:
    """What a run did, for the closing log line and the tests."""

    frames_rendered: int = 0
    frames_captured: int = 0
    video_path: Path | None = None
    outputs: tuple[str, ...] = ()
    seconds: float = 0.0


class App:
    """FaceMimic live: capture, landmarks, reenactment, virtual camera, preview, hotkeys."""

    def __init__(self, config: Config, *, duration_s: float | None = None, source_explicit: bool = False,
                 on_rendered: Callable[[Rendered], None] | None = None):
        self.config = config
        self.duration_s = duration_s
        self.source_explicit = source_explicit
        self.stop_event = threading.Event()
        self.show_overlay = False
        self.show_stats = True
        self.summary = RunSummary()
        self._on_rendered = on_rendered
        self._last: Rendered | None = None
        self.render_worker: RenderWorker | None = None
        self.store: AvatarStore | None = None
        self.capture: CaptureThread | None = None
        self.notes: list[str] = []
        self.inbox: Any = None
        self.status: StatusLine | None = None
        """The status line of the running session (failures included); None before run()."""
        self.is_sample = False
        """True while the bundled sample clip stands in for a missing webcam (the preview says DEMO)."""
        self.show_help = False
        self._notice: tuple[str, float] = ("", 0.0)
        self.badge = DisclosureBadge.for_output(config.output.badge, family(config.generator.model).draws_on_frame)
        """The "virtual avatar" label on the virtual camera and recordings (output.badge; the badge hotkey)."""
        # The app's command table; every other command goes to the render worker's table.
        self._actions: dict[Command, Callable[[], Any]] = {
            Command.QUIT: self.stop_event.set,
            Command.OVERLAY: self._toggle_overlay,
            Command.STATS: self._toggle_stats,
            Command.HELP: self._toggle_help,
            Command.RELOAD_AVATARS: self._reload_avatars,
            Command.SNAPSHOT: self._snapshot_with_notice,
            Command.BEST_MATCH_AVATAR: self._best_match,
            Command.BADGE: self._toggle_badge,
        }

    def notify(self, text: str) -> None:
        """A short message on the preview for NOTICE_S seconds (any thread)."""
        self._notice = (text, time.perf_counter())

    def notice(self) -> str:
        """The current on-screen notice, "" once it has expired."""
        text, since = self._notice
        return text if text and time.perf_counter() - since < NOTICE_S else ""

    # -- commands from hotkeys and the preview window

    def handle(self, command: Command) -> None:
        """Carry out one user command."""
        log.info("command: %s", command.value)
        action = self._actions.get(command)
        if action is not None:
            action()
        elif self.render_worker is not None:
            self.render_worker.submit(command)

    def _toggle_overlay(self) -> None:
        self.show_overlay = not self.show_overlay

    def _toggle_stats(self) -> None:
        self.show_stats = not self.show_stats

    def _toggle_badge(self) -> None:
        self.notify(f"'virtual avatar' badge {'on' if self.badge.toggle() else 'off'}")

    def _toggle_help(self) -> None:
        self.show_help = not self.show_help

    def _reload_avatars(self) -> None:
        if self.store is not None:
            self.store.reload()
            self.notify("reloading avatars...")

    def _snapshot_with_notice(self) -> None:
        files = self.snapshot()
        self.notify(f"snapshot saved: {files[-1].parent.name}/{files[-1].name}" if files
                    else "snapshot: nothing rendered yet")

    def _best_match(self) -> None:
        worker, last = self.render_worker, self._last
        if worker is None or last is None or last.face is None or last.frame is None or self.store is None:
            log.info("best match needs a face in view")
            self.notify("best match needs a face in view")
            return
        entries = self.store.entries()
        index = worker.reenactor.best_match([p for _, p in entries], Observed(frame=last.frame, face=last.face))
        log.info("best match: %s", entries[index][0].name if index is not None else "none")
        self.notify(f"best match: {entries[index][0].name if index is not None else 'none'}")
        if index is not None:
            worker.submit(SelectAvatar(index))

    def snapshot(self) -> list[Path]:
        """Save the driver frame, the driver with landmarks, and the avatar output; returns the files written."""
        return save_snapshot(self._last, project_path(self.config.output.snapshot_dir))

    def _keep_last(self, rendered: Rendered) -> None:
        self._last = rendered
        if self._on_rendered is not None:
            self._on_rendered(rendered)

    def _overlay(self, rendered: Rendered) -> Any:
        from avatarcam.preview import PreviewOverlay

        if not self.show_overlay or rendered.frame is None:
            return None
        return PreviewOverlay(driver_bgr=driver_with_landmarks(rendered.frame.image_bgr, rendered.face))

    # -- the run

    def _source(self, *, vcam_live: bool = False) -> tuple[SourceSpec, bool]:
        """The capture source, and whether it is the bundled sample clip standing in for a missing webcam.

        Only the untouched default camera may fall back, and only when no webcam exists at all: a busy webcam, a
        camera the user named, or a live virtual camera (a call may be watching) means waiting for the camera with
        the avatar at rest instead, so the avatar never lip-syncs to a recording in a call.
        """
        spec = SourceSpec.parse(self.config.capture.source)
        if spec.kind != "camera" or self.source_explicit or probe_camera(spec.target):
            return spec, False
        if vcam_live:
            reason = "the virtual camera is on, so the sample clip is not used"
        elif camera_device_exists(spec.target):
            reason = "it exists but is busy (another app may be using it)"
        else:
            message = (f"No webcam could be opened at index {spec.target}; driving the avatar from the sample clip "
                       f"{SAMPLE_DRIVER.relative_to(PROJECT_ROOT)} instead (choose a camera or video with --source)")
            log.warning("%s", message)
            self.notes.append(message)
            return SourceSpec("file", str(SAMPLE_DRIVER)), True
        message = f"{spec.describe()} is not available ({reason}): waiting for it, with the avatar at rest"
        log.warning("%s", message)
        self.notes.append(message)
        return spec, False

    def run(self) -> RunSummary:
        """Run until quit, the end of a non-looping video, or duration_s; returns a summary.

        A worker that dies ends the run with its own error (FaceMimicError as it is, else WorkerError).
        """
        from avatarcam.hotkeys import CommandInbox, parse_global_bindings, parse_preview_bindings
        from avatarcam.preview import has_display

        config = self.config
        # Everything that can be wrong in the config is checked before anything opens.
        model_path = landmark_model_path(config)
        global_bindings = parse_global_bindings(config.hotkeys.global_keys)
        preview_bindings = parse_preview_bindings(config.hotkeys.preview_keys)
        reenactor = build_reenactor(config.generator, config.motion)
        want_preview = config.output.preview == "on" or (config.output.preview == "auto" and has_display())
        spec = SourceSpec.parse(config.capture.source)
        if spec.kind == "file":
            first_frame(str(spec.target))  # a file that opens but decodes nothing: an error before any output opens
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(reenactor.close)
            # The avatar shown first is loaded before any output opens: a wrong avatar is an error that leaves no
            # empty recording behind.
            store = self.store = self._avatar_store(model_path, reenactor)
            cleanup.callback(store.close)
            first_avatar, _ = self._load_first_avatar(store)
            outputs = OutputStage()
            cleanup.callback(outputs.stop)
            video_path = self._subscribe_sinks(outputs, self._recording_size(reenactor), want_preview)
            spec, self.is_sample = self._source(vcam_live="vcam" in outputs.names)
            store.reload()
            capture = self.capture = self._capture(spec, looping=want_preview or "vcam" in outputs.names)
            landmarker = cleanup.enter_context(self._landmarker(model_path))
            landmark_worker = LandmarkWorker(capture.frames, landmarker)
            # A recorded driver cannot be asked to close its mouth: files calibrate on the first frames as they
            # are, like tools/render.py; live cameras wait for a rest pose.
            calibrator = Calibrator(window_s=config.calibration.window_s if spec.live else 0.0,
                                    strict=config.calibration.strict and spec.live)
            worker = self.render_worker = RenderWorker(landmark_worker.observed, reenactor, store, calibrator)
            inbox = self.inbox = CommandInbox()
            status = self.status = StatusLine(
                outputs=outputs, flags=lambda: (worker.passthrough, worker.frozen),
                show_stats=lambda: self.show_stats, notes=lambda: [capture.health(), store.preparing()],
                banner=DEMO_BANNER if self.is_sample else "", notice=self.notice)
            if want_preview:
                outputs.subscribe(self._preview(preview_bindings, status, inbox))
            hotkeys = self._hotkeys(global_bindings, inbox, cleanup)
            listeners = [hotkeys.raise_if_failed] if hotkeys is not None else []
            if spec.live and not want_preview and "vcam" not in outputs.names:  # a recording nobody watches
                listeners.append(camera_wait_limit(capture, config.capture.wait_s, video_path))
            threads: list[Worker] = [capture, landmark_worker, worker]
            session = Session(
                rendered=worker.rendered, outputs=outputs, status=status, stop_event=self.stop_event,
                workers=lambda: [*threads, *([store.loader] if store.loader is not None else [])],
                duration_s=self.duration_s,
                hooks=SessionHooks(
                    handle=self.handle, drain_commands=inbox.drain, on_frame=[self._keep_last],
                    # A finite source is done once it has ended and every hand-off is empty (frames may have been
                    # dropped on the way: latest wins).
                    source_finished=lambda seq: capture.ended.is_set()
                    and pipeline_drained(capture.frames, landmark_worker, worker, seq),
                    listeners=listeners,
                ),
            )
            session.resting = resting_frame(first_avatar.canvas_bgr, first_avatar.name)
            outputs.start(first_avatar.canvas_bgr)
            for thread in threads:
                thread.start()
                cleanup.callback(thread.stop)
            self._pump(session)
        self.summary = RunSummary(
            frames_rendered=worker.frames_rendered, frames_captured=capture.frames_read, video_path=video_path,
            outputs=outputs.names, seconds=time.perf_counter() - session.started_s,
        )
        return self.summary

    @staticmethod
    def _pump(session: Session) -> None:
        """Run the session on this (the main) thread; Ctrl+C ends it like quit."""
        try:
            session.run()
        except KeyboardInterrupt:
            log.info("stopping (Ctrl+C)")

    # -- the stages, one builder each

    def _avatar_store(self, model_path: Path, reenactor: Any) -> AvatarStore:
        path, _, _ = resolve_avatar(self.config)

        def make_landmarker() -> FaceLandmarker:
            return FaceLandmarker(model_path=model_path, mode="image")

        return AvatarStore(project_path(self.config.avatars.folder), make_landmarker, reenactor,
                           extra=[path] if path else None)

    def _load_first_avatar(self, store: AvatarStore) -> tuple[Any, Any]:
        """The avatar shown at start. One the user named must load; when starting with the first picture of the
        user's own folder, a picture that does not load (no face, not an image) is skipped with a warning, as the
        folder scan skips it, and the next one is tried."""
        path, index, name = resolve_avatar(self.config)
        if path is not None:
            return store.load_first(path)
        candidates = self._first_avatar_path(store, index, name)
        problems = []
        for candidate in candidates:
            try:
                return store.load_first(candidate)
            except AvatarError as exc:
                if len(candidates) == 1:
                    raise
                log.warning("skipping avatar: %s", exc)
                problems.append(f"{candidate.name}: {exc}")
        raise AvatarError(f"none of the {len(candidates)} pictures in {store.folder} could be used as an avatar "
                          f"({'; '.join(problems)}): add a portrait with one clear face, or pass one with "
                          "--avatar path/to/image.jpg")

    def _capture(self, spec: SourceSpec, *, looping: bool) -> CaptureThread:
        c = self.config.capture
        return CaptureThread(spec, width=c.width, height=c.height, fps=c.fps, mirror=c.mirror, pace=c.pace,
                             loop=spec.kind == "file" and looping and c.loop, retry_s=c.retry_s)

    def _landmarker(self, model_path: Path) -> FaceLandmarker:
        lm = self.config.landmarks
        return FaceLandmarker(model_path=model_path, mode="video",
                              min_detection_confidence=lm.min_detection_confidence,
                              min_tracking_confidence=lm.min_tracking_confidence,
                              num_faces=landmark_faces(self.config.generator))

    def _recording_size(self, reenactor: Any) -> tuple[int, int]:
        """(width, height) of a recording: the square canvas, or the requested camera size for a family that draws
        on the camera frame (frames of another size are fitted into it)."""
        if family(reenactor.name).draws_on_frame:
            return self.config.capture.width, self.config.capture.height
        return reenactor.canvas_size, reenactor.canvas_size

    def _preview(self, bindings: Any, status: StatusLine, inbox: Any) -> PreviewOutput:
        from avatarcam.preview import PreviewWindow, help_lines

        hints = help_lines(bindings)
        # Global combos and preview keys meet in one inbox, which drops the copy a focused preview also sees.
        return PreviewOutput(PreviewWindow(bindings=bindings), status=status, overlay=self._overlay,
                             on_command=lambda command: inbox.put(command, source="preview"),
                             help_text=lambda: hints if self.show_help else None)

    def _hotkeys(self, bindings: Any, inbox: Any, cleanup: contextlib.ExitStack) -> Any:
        from avatarcam.hotkeys import GlobalHotkeyListener

        if not self.config.hotkeys.enabled:
            return None
        hotkeys = GlobalHotkeyListener(bindings, lambda command: inbox.put(command, source="global"))
        if not hotkeys.start() and hotkeys.note:
            self.notes.append(f"global hotkeys off: {hotkeys.note}")
        cleanup.callback(hotkeys.stop)
        return hotkeys

    def _first_avatar_path(self, store: AvatarStore, index: int | None, name: str | None) -> list[Path]:
        """The avatar to start with (one path), or, when the built-in default's name is not in the user's own
        folder, every picture of the folder in order (the first that loads is used)."""
        from avatarcam.avatars import scan_folder

        if not store.folder.is_dir():
            raise AvatarError(f"the avatars folder {store.folder} does not exist: create it and add a portrait, or "
                              "choose another with --avatars-folder (avatars.folder)")
        paths = scan_folder(store.folder)
        if not paths:
            raise AvatarError(f"the avatars folder {store.folder} has no pictures (PNG, JPEG, WebP, GIF, TIFF, ...): "
                              "add a portrait, or pass one with --avatar path/to/image.jpg")
        if index is not None:
            if not 1 <= index <= len(paths):
                raise AvatarError(f"avatar index {index} is out of range: the folder has {len(paths)} images "
                                  f"({', '.join(p.stem for p in paths)})")
            return [paths[index - 1]]
        for p in paths:
            if p.stem == name:
                return [p]
        if name == AvatarsConfig().default:  # the built-in default, in a folder of the user's own: start with theirs
            log.info("no %r in %s: starting with the first picture that loads, %s (set avatars.default to choose)",
                     name, store.folder, paths[0].name)
            return paths
        raise AvatarError(f"no avatar named {name!r} (avatars.default) in {store.folder}: choose one of "
                          f"{', '.join(p.stem for p in paths)}, or give an image path")

    def _subscribe_sinks(self, outputs: OutputStage, size: tuple[int, int], want_preview: bool) -> Path | None:
        """Open the virtual camera and/or the video file and subscribe them; returns the video path, if any."""
        self._subscribe_camera(outputs)
        video_path = project_path(self.config.output.video)
        if video_path is None and not want_preview and not outputs.names:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]  # two runs in one second get two files
            video_path = PROJECT_ROOT / "out" / f"facemimic-{stamp}.mp4"
            message = (f"no display and no virtual camera: writing the output to {video_path} "
                       "(see README, 'Virtual camera')")
            log.warning("%s", message)
            self.notes.append(message)
        if video_path is not None:
            fps = float(self.config.vcam.fps)
            from avatarcam.vcam import FrameComposer

            sink = VideoFileSink(video_path, width=size[0], height=size[1], fps=fps).open()
            fit = FrameComposer(width=size[0], height=size[1], mode="fit", background="#000000")

            def record(canvas_bgr: Any) -> Any:
                same = canvas_bgr.shape[:2] == (size[1], size[0])
                return self.badge.stamp(canvas_bgr) if same else self.badge.stamp(fit.compose(canvas_bgr),
                                                                                  fit.picture_box)

            outputs.subscribe(PublishedOutput("video", sink, fps=fps, compose=record))
        return video_path

    def _subscribe_camera(self, outputs: OutputStage) -> None:
        from avatarcam.vcam import FrameComposer, VirtualCameraSink

        v, mode = self.config.vcam, self.config.output.vcam
        if mode == "off":
            return
        sink = VirtualCameraSink(backend=v.backend, device=v.device, width=v.width, height=v.height, fps=v.fps)
        try:
            sink.open()
        except (FaceMimicError, RuntimeError) as exc:
            if mode == "on":
                raise
            # One line here; the full set-up guide is for `run.py --check` and tools/vcam_setup.py.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = (f"virtual camera off: {first_line.rstrip(':')} (set-up steps: python tools/vcam_setup.py, "
                       "or python run.py --check)")
            log.warning("%s", message)
            self.notes.append(message)
            return
        composer = FrameComposer(width=v.width, height=v.height, mode=v.fit, background=v.background)
        outputs.subscribe(PublishedOutput("vcam", sink, fps=v.fps, compose=lambda canvas_bgr: self.badge.stamp(
            composer.compose(canvas_bgr), composer.picture_box)))  # the badge on the picture, not a letterbox bar
        log.info("virtual camera: %s on %s, %dx%d @ %g fps", sink.backend, sink.device, v.width, v.height, v.fps)


def camera_wait_limit(capture: CaptureThread, wait_s: float, video_path: Path | None) -> Callable[[], None]:
    """A session listener that ends a recording-only run when the live source has delivered no frame for wait_s
    seconds (never, or not since the last one): DeviceError naming the source, the wait and the fix. The session's
    clean-up then finishes the recording (the avatar at rest), so the file plays."""
    started_s = time.perf_counter()

    def check() -> None:
        last_s = max(started_s, capture.last_frame_s or started_s)
        waited_s = time.perf_counter() - last_s
        if waited_s <= wait_s:
            return
        what = "gave no frame" if capture.last_frame_s is None else "stopped delivering frames"
        saved = f"; the recording {video_path} was finished with what it had" if video_path is not None else ""
        raise DeviceError(
            f"{capture.spec.describe()} {what} for {wait_s:g} s (capture.wait_s) and there is no display or virtual "
            "camera to keep waiting on: check it is plugged in and not used by another app, choose another with "
            f"--source, or wait longer with --set capture.wait_s=SECONDS{saved}")

    return check


def resting_frame(canvas_bgr: Any, avatar_name: str) -> Rendered:
    """What the outputs show before the first render (a camera still being waited for): the avatar at rest.

    seq 0 marks it (rendered frames count from 1): the status line shows no numbers and no "no face" for it."""
    return Rendered(canvas_bgr=canvas_bgr, frame=None, face=None, stage_ms={}, latency_ms=0.0,
                    avatar_name=avatar_name, calibration="", seq=0)
