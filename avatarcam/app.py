"""The composition root: the one place that builds concrete stages from the config and wires them together."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from avatarcam import landmarks as lm
from avatarcam.capture import CaptureThread, SourceSpec, camera_device_exists, first_frame, probe_camera
from avatarcam.commands import Command
from avatarcam.config import Config
from avatarcam.errors import AvatarError, ConfigError, DeviceError, FaceMimicError
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import Calibrator, MotionSettings
from avatarcam.paths import PROJECT_ROOT, SAMPLES_DIR
from avatarcam.pipeline import AvatarStore, LandmarkWorker, Rendered, RenderWorker, pipeline_drained

log = logging.getLogger(__name__)

SAMPLE_DRIVER = SAMPLES_DIR / "driver.mp4"
DEMO_BANNER = "DEMO: sample clip drives the avatar (no webcam)"
NOTICE_S = 2.0


def project_path(value: str | None) -> Path | None:
    """A config path: absolute as given, relative to the project folder otherwise."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def motion_settings(config: Config) -> MotionSettings:
    """The motion section as the motion module's settings."""
    m = config.motion
    return MotionSettings(
        intensity=dict(vars(m.intensity)), head_rotation=m.head_rotation, head_translation=m.head_translation,
        scale_lock=m.scale_lock, smoothing=m.smoothing, lost_face_hold_s=m.lost_face_hold_s,
        lost_face_ease_s=m.lost_face_ease_s,
    )


def require_torch(what: str) -> None:
    """ConfigError with the install command when torch (an optional extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ConfigError(f"{what} needs torch, which is not installed (the built-in CPU generator does not need "
                          "it): run `python tools/install.py --torch` (or pip install -r requirements-torch.txt)")


def build_reenactor(config: Config):
    """The generator chosen by generator.model."""
    g = config.generator
    if g.model == "fomm":
        require_torch("--model fomm")
    elif g.backend not in ("auto",):
        require_torch(f"generator.backend {g.backend}")
    if g.model == "mesh":
        from avatarcam.generators.mesh import MeshSettings
        from avatarcam.reenact import MeshReenactor

        # A motion-field cell finer than 4 canvas pixels buys nothing but time.
        mesh = MeshSettings(canvas_size=g.canvas_size, grid_size=min(g.grid_size, g.canvas_size // 4),
                            mouth_interior=g.mouth_interior)
        return MeshReenactor(mesh=mesh, motion=motion_settings(config), warp_runner=mesh_warp_runner(g.backend, mesh))
    if g.model == "fomm":
        from avatarcam.generators.fomm import build_fomm_reenactor

        return build_fomm_reenactor(config)
    raise ConfigError(f"generator.model {g.model!r} is not one of mesh, fomm")


def mesh_warp_runner(backend: str, mesh):
    """An open MeshWarpRunner for a GPU runtime or a runtime asked for by name; None for the numpy/cv2 CPU path."""
    if backend == "auto":
        from avatarcam.backends import detect_hardware

        hardware = detect_hardware()
        if not hardware.cuda_available:
            log.info("mesh warp: numpy/cv2 on the CPU (no CUDA device; the fastest CPU path)")
            return None
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            log.info("mesh warp: numpy/cv2 on the CPU (a CUDA device, but torch is not installed: "
                     "python tools/install.py --torch)")
            return None
    from avatarcam.generators.mesh_torch import MeshWarpRunner

    runner = MeshWarpRunner(requested=backend, settings=mesh).open()
    if backend == "auto" and runner.device == "cpu":  # no GPU runtime opened: the CPU path is faster
        runner.close()
        return None
    log.info("mesh warp: %s", runner.label)
    return runner


def landmark_model_path(config: Config) -> Path:
    """The verified landmark model path (ModelFileError with the fix otherwise)."""
    return lm.verify_model_file(project_path(config.landmarks.model_path))


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


def driver_with_landmarks(frame_bgr: np.ndarray, face, *, max_side: int = 320) -> np.ndarray:
    """A small copy of the driver frame with its landmarks drawn (the preview overlay and snapshots)."""
    scale = min(1.0, max_side / max(frame_bgr.shape[:2]))
    small = cv2.resize(frame_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 \
        else frame_bgr.copy()
    if face is not None:
        for x, y in face.points_px[:, :2] * scale:
            cv2.circle(small, (int(x), int(y)), 1, (80, 255, 80), -1, cv2.LINE_AA)
    return small


class VideoFileSink:
    """A FrameSink that records frames to a video file (the output when there is no display or camera)."""

    def __init__(self, path: Path, *, width: int, height: int, fps: float):
        self.path = Path(path)
        self._width, self._height, self.fps_value = width, height, fps
        self._writer: cv2.VideoWriter | None = None
        self.frames_written = 0

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    def open(self) -> VideoFileSink:
        from avatarcam.offline import open_writer

        if self._writer is None:
            self._writer = open_writer(self.path, self.fps_value, (self._width, self._height))
        return self

    def send(self, frame_bgr: np.ndarray) -> None:
        if self._writer is None:
            raise DeviceError(f"video file {self.path} is not open")
        self._writer.write(frame_bgr)
        self.frames_written += 1

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()


class App:
    """FaceMimic live: capture, landmarks, reenactment, virtual camera, preview, hotkeys."""

    def __init__(self, config: Config, *, duration_s: float | None = None, source_explicit: bool = False,
                 on_rendered=None):
        self.config = config
        self.duration_s = duration_s
        self.source_explicit = source_explicit
        self.stop_event = threading.Event()
        self.show_overlay = False
        self.show_stats = True
        self.summary = RunSummary()
        self._on_rendered = on_rendered
        self._last: Rendered | None = None
        self._lock = threading.Lock()
        self.render_worker: RenderWorker | None = None
        self.store: AvatarStore | None = None
        self.capture: CaptureThread | None = None
        self.notes: list[str] = []
        self.inbox = None
        self.is_sample = False
        self.show_help = False
        self._notice: tuple[str, float] = ("", 0.0)

    def notify(self, text: str) -> None:
        """A short message on the preview for a couple of seconds (any thread)."""
        self._notice = (text, time.perf_counter())

    def notice(self) -> str:
        """The current on-screen notice, "" once it has expired."""
        text, since = self._notice
        return text if text and time.perf_counter() - since < NOTICE_S else ""

    # -- commands from hotkeys and the preview window (any thread)

    def handle(self, command: Command) -> None:
        """Carry out one user command."""
        log.info("command: %s", command.value)
        if command is Command.QUIT:
            self.stop_event.set()
        elif command is Command.OVERLAY:
            self.show_overlay = not self.show_overlay
        elif command is Command.STATS:
            self.show_stats = not self.show_stats
        elif command is Command.HELP:
            self.show_help = not self.show_help
        elif command is Command.RELOAD_AVATARS and self.store is not None:
            self.store.reload()
            self.notify("reloading avatars...")
        elif command is Command.SNAPSHOT:
            files = self.snapshot()
            self.notify(f"snapshot saved: {files[-1].parent.name}/{files[-1].name}" if files
                        else "snapshot: nothing rendered yet")
        elif command is Command.BEST_MATCH_AVATAR:
            self._best_match()
        elif self.render_worker is not None:
            self.render_worker.submit(command)

    def _best_match(self) -> None:
        worker, last = self.render_worker, self._last
        if worker is None or last is None or last.face is None or self.store is None:
            log.info("best match needs a face in view")
            self.notify("best match needs a face in view")
            return
        from avatarcam.matching import best_matching_avatar
        from avatarcam.types import Observed

        entries = self.store.entries()
        reenactor = worker.reenactor
        if hasattr(reenactor, "best_match"):  # FOMM ranks avatars by keypoints, as Avatarify does
            index = reenactor.best_match([p for _, p in entries], Observed(frame=last.frame, face=last.face))
        else:
            index = best_matching_avatar(last.face, [a for a, _ in entries])
        log.info("best match: %s", entries[index][0].name if index is not None else "none")
        self.notify(f"best match: {entries[index][0].name if index is not None else 'none'}")
        if index is not None and index < 9:
            worker.submit(list(Command)[index])

    def snapshot(self) -> list[Path]:
        """Save the driver frame, the driver with landmarks, and the avatar output; returns the files written."""
        last = self._last
        if last is None or last.frame is None:
            log.info("snapshot: nothing rendered yet")
            return []
        folder = project_path(self.config.output.snapshot_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
        driver = last.frame.image_bgr.copy()
        marked = driver_with_landmarks(driver, last.face, max_side=max(driver.shape[:2]))
        files = {
            folder / f"{stamp}-driver.png": driver,
            folder / f"{stamp}-landmarks.png": marked,
            folder / f"{stamp}-avatar.png": last.canvas_bgr.copy(),
        }
        for path, image in files.items():
            cv2.imwrite(str(path), image)
        log.info("snapshot saved: %s", ", ".join(p.name for p in files))
        return list(files)

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
        name = spec.describe()
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
        message = f"{name} is not available ({reason}): waiting for it, with the avatar at rest"
        log.warning("%s", message)
        self.notes.append(message)
        return spec, False

    def run(self) -> RunSummary:
        """Run until quit, the end of a non-looping video, or duration_s; returns a summary."""
        from avatarcam.hotkeys import CommandInbox, GlobalHotkeyListener, parse_global_bindings, parse_preview_bindings
        from avatarcam.preview import PreviewOverlay, PreviewStatus, PreviewWindow, has_display

        config = self.config
        model_path = landmark_model_path(config)
        global_bindings = parse_global_bindings(config.hotkeys.global_keys)
        preview_bindings = parse_preview_bindings(config.hotkeys.preview_keys)
        reenactor = build_reenactor(config)
        want_preview = config.output.preview == "on" or (config.output.preview == "auto" and has_display())
        spec = SourceSpec.parse(config.capture.source)
        if spec.kind == "file":
            first_frame(str(spec.target))  # a file that opens but decodes nothing: an error before any output opens
        outputs = self._open_outputs(reenactor.canvas_size, want_preview, spec)
        try:
            spec, self.is_sample = self._source(vcam_live="vcam" in outputs["names"])
        except FaceMimicError:
            for sink in outputs["sinks"]:
                sink.close()
            raise

        def make_landmarker() -> FaceLandmarker:
            return FaceLandmarker(model_path=model_path, mode="image")

        path, index, name = resolve_avatar(config)
        store = AvatarStore(project_path(config.avatars.folder), make_landmarker, reenactor,
                            extra=[path] if path else None)
        self.store = store
        first_path = path or self._first_avatar_path(store, index, name)
        first_avatar, _ = store.load_first(first_path)
        store.reload()
        start_index = 0

        loop = spec.kind == "file" and (want_preview or "vcam" in outputs["names"]) and config.capture.loop
        capture = CaptureThread(
            spec, width=config.capture.width, height=config.capture.height, fps=config.capture.fps,
            mirror=config.capture.mirror, pace=config.capture.pace, loop=loop, retry_s=config.capture.retry_s,
        )
        self.capture = capture
        landmarker = FaceLandmarker(model_path=model_path, mode="video",
                                    min_detection_confidence=config.landmarks.min_detection_confidence,
                                    min_tracking_confidence=config.landmarks.min_tracking_confidence)
        landmark_worker = LandmarkWorker(capture.frames, landmarker)

        def on_intensity(step: float) -> None:
            settings = reenactor.motion.settings.with_intensity_step(step)
            reenactor.motion.update_settings(settings)
            text = ", ".join(f"{k} {v:.1f}" for k, v in settings.intensity.items())
            log.info("expression intensity: %s", text)
            self.notify(f"intensity: {text}")

        worker = RenderWorker(landmark_worker.observed, reenactor, store,
                              # A recorded driver cannot be asked to close its mouth: files calibrate on the
                              # first frames as they are, like tools/render.py; live cameras wait for a rest pose.
                              Calibrator(window_s=config.calibration.window_s if spec.live else 0.0,
                                         strict=config.calibration.strict and spec.live),
                              start_avatar=start_index,
                              on_intensity=on_intensity if hasattr(reenactor, "motion") else None)
        self.render_worker = worker

        publishers = []
        first_frame_canvas = first_avatar.canvas_bgr
        for publisher_factory in outputs["publishers"]:
            publishers.append(publisher_factory(first_frame_canvas))
        preview = PreviewWindow(bindings=preview_bindings) if want_preview else None
        from avatarcam.preview import help_lines

        hints = help_lines(preview_bindings)
        rendered_fps = RateMeter()
        # Global combos and preview keys meet in one inbox, which drops the copy a focused preview also sees.
        inbox = CommandInbox()
        self.inbox = inbox
        hotkeys = GlobalHotkeyListener(global_bindings, lambda c: inbox.put(c, source="global")) \
            if config.hotkeys.enabled else None
        if hotkeys is not None and not hotkeys.start() and hotkeys.note:
            self.notes.append(f"global hotkeys off: {hotkeys.note}")

        start = time.perf_counter()
        capture.start()
        landmark_worker.start()
        worker.start()
        for publisher in publishers:
            publisher.start()
        workers = [landmark_worker, worker]
        last_seq = 0
        shown_note = None
        try:
            while not self.stop_event.is_set():
                seq, rendered = worker.rendered.get(last_seq, timeout_s=0.05)
                if rendered is not None and seq != last_seq:
                    last_seq = seq
                    self._last = rendered
                    rendered_fps.tick(rendered.done_time_s)
                    for composer, publisher in zip(outputs["composers"], publishers):
                        publisher.submit(composer.compose(rendered.canvas_bgr))
                    if self._on_rendered is not None:
                        self._on_rendered(rendered)
                if preview is not None:
                    # Until the first render (a camera still being waited for) the avatar shows at rest.
                    shown = self._last
                    fps = publishers[0].measured_fps if publishers else rendered_fps.rate()
                    notes = [n for n, on in (("PASSTHROUGH", worker.passthrough), ("FROZEN", worker.frozen),
                                             ("no face", shown is not None and shown.face is None)) if on]
                    notes += [n for n in (capture.health(), store.preparing()) if n]
                    status = PreviewStatus(
                        avatar=shown.avatar_name if shown else first_avatar.name,
                        calibration=shown.calibration if shown else "",
                        fps=fps if self.show_stats and shown else None,
                        latency_ms=shown.latency_ms if self.show_stats and shown else None,
                        note=" | ".join(notes), banner=DEMO_BANNER if self.is_sample else "", notice=self.notice(),
                    )
                    if status.note != shown_note:  # for the log reader (and the tests): what the status line says
                        shown_note = status.note
                        log.debug("status: %s", shown_note or "ok")
                    overlay = None
                    if self.show_overlay and shown is not None and shown.frame is not None:
                        overlay = PreviewOverlay(driver_bgr=driver_with_landmarks(shown.frame.image_bgr, shown.face))
                    canvas = shown.canvas_bgr if shown is not None else first_frame_canvas
                    for command in preview.show(canvas, status=status, overlay=overlay,
                                                help_text=hints if self.show_help else None):
                        inbox.put(command, source="preview")
                for command in inbox.drain():
                    self.handle(command)
                if hotkeys is not None:
                    hotkeys.raise_if_failed()
                for w in workers:
                    w.raise_if_failed()
                capture.raise_if_failed()
                for publisher in publishers:
                    publisher.raise_if_failed()
                if self.duration_s is not None and time.perf_counter() - start >= self.duration_s:
                    break
                if capture.ended.is_set() and pipeline_drained(capture.frames, landmark_worker, worker, last_seq):
                    break
        except KeyboardInterrupt:
            log.info("stopping (Ctrl+C)")
        finally:
            if hotkeys is not None:
                hotkeys.stop()
            capture.stop()
            landmark_worker.stop()
            worker.stop()
            for publisher in publishers:
                publisher.stop()
            for sink in outputs["sinks"]:
                sink.close()
            if preview is not None:
                preview.close()
            landmarker.close()
            if hasattr(reenactor, "close"):
                reenactor.close()
        self.summary = RunSummary(
            frames_rendered=worker.frames_rendered, frames_captured=capture.frames_read,
            video_path=outputs["video_path"], outputs=tuple(outputs["names"]) + (("preview",) if preview else ()),
            seconds=time.perf_counter() - start,
        )
        return self.summary

    def _first_avatar_path(self, store: AvatarStore, index: int | None, name: str | None) -> Path:
        from avatarcam.avatars import scan_folder

        paths = scan_folder(store.folder)
        if not paths:
            raise AvatarError(f"the avatars folder {store.folder} has no pictures (PNG, JPEG, WebP, GIF, TIFF, ...): "
                              "add a portrait, or pass one with --avatar path/to/image.jpg")
        if index is not None:
            if not 1 <= index <= len(paths):
                raise AvatarError(f"avatar index {index} is out of range: the folder has {len(paths)} images "
                                  f"({', '.join(p.stem for p in paths)})")
            return paths[index - 1]
        for p in paths:
            if p.stem == name:
                return p
        raise AvatarError(f"no avatar named {name!r} in {store.folder}: choose one of "
                          f"{', '.join(p.stem for p in paths)}, or give an image path")

    def _open_outputs(self, canvas_size: int, want_preview: bool, spec: SourceSpec) -> dict:
        """Open the virtual camera and/or the video file; returns sinks, composers and publisher factories."""
        from avatarcam.publisher import Publisher
        from avatarcam.vcam import FrameComposer, VirtualCameraSink

        config = self.config
        v = config.vcam
        sinks, composers, factories, names = [], [], [], []
        if config.output.vcam != "off":
            sink = VirtualCameraSink(backend=v.backend, device=v.device, width=v.width, height=v.height, fps=v.fps)
            try:
                sink.open()
            except (DeviceError, FaceMimicError, RuntimeError) as exc:
                if config.output.vcam == "on":
                    raise
                # One line here; the full set-up guide is for `run.py --check` and tools/vcam_setup.py.
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                message = (f"virtual camera off: {first_line.rstrip(':')} (set-up steps: python tools/vcam_setup.py, "
                           "or python run.py --check)")
                log.warning("%s", message)
                self.notes.append(message)
            else:
                sinks.append(sink)
                composers.append(FrameComposer(width=v.width, height=v.height, mode=v.fit, background=v.background))
                factories.append(lambda first, s=sink, c=composers[-1]: Publisher(s, fps=v.fps,
                                                                                first_frame_bgr=c.compose(first).copy()))
                names.append("vcam")
                log.info("virtual camera: %s on %s, %dx%d @ %g fps", sink.backend, sink.device, v.width, v.height, v.fps)
        video_path = project_path(config.output.video)
        if video_path is None and not want_preview and not names:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            video_path = PROJECT_ROOT / "out" / f"facemimic-{stamp}.mp4"
            message = (f"no display and no virtual camera: writing the output to {video_path} "
                       "(see README, 'Virtual camera')")
            log.warning("%s", message)
            self.notes.append(message)
        if video_path is not None:
            fps = float(v.fps)
            sink = VideoFileSink(video_path, width=canvas_size, height=canvas_size, fps=fps).open()
            sinks.append(sink)
            composers.append(_Identity())
            factories.append(lambda first, s=sink: Publisher(s, fps=fps, first_frame_bgr=first.copy()))
            names.append("video")
        return {"sinks": sinks, "composers": composers, "publishers": factories, "names": names,
                "video_path": video_path}


class RateMeter:
    """Events per second over the last couple of seconds (the preview's fps when no output measures it)."""

    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self._times: list[float] = []

    def tick(self, time_s: float) -> None:
        self._times.append(time_s)
        cutoff = time_s - self.window_s
        while self._times and self._times[0] < cutoff:
            self._times.pop(0)

    def rate(self) -> float | None:
        if len(self._times) < 2:
            return None
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-6)


class _Identity:
    """A composer that passes the canvas through (the video file records the square canvas)."""

    @staticmethod
    def compose(canvas_bgr: np.ndarray) -> np.ndarray:
        return canvas_bgr
