"""One browser's session: its own landmarker, reenactor, avatar, neutral pose and settings, on its own thread.

Frames arrive from the browser's camera (an aiortc track) into a latest-wins slot; the session's worker takes the
newest, finds the face, calibrates, renders the avatar with the same generator code as the desktop app and puts
the result into a second latest-wins slot, which the outgoing track sends. A slow session drops its own frames
and never holds up another: nothing is queued, and the event loop only hands frames over.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcam.avatars import Avatar
from avatarcam.disclosure import DisclosureBadge
from avatarcam.generators import family, output_shape
from avatarcam.generators.base import Reenactor
from avatarcam.handoff import LatestSlot
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import REGIONS, Calibrator
from avatarcam.pipeline import MAX_CONSECUTIVE_FAILURES, counts_towards_failure_limit, passthrough_canvas
from avatarcam.types import FaceObservation, Frame, Observed
from avatarcam.workers import RateLimitedLog, Worker

log = logging.getLogger(__name__)

# name -> (low, high) of the numeric settings a page may change; every other key is refused by name.
NUMERIC_SETTINGS: dict[str, tuple[float, float]] = {
    **{f"intensity.{region}": (0.0, 2.0) for region in REGIONS},
    "smoothing": (0.0, 1.0),
    "num_faces": (1, 4),
    "min_detection_confidence": (0.05, 0.99),
    "min_tracking_confidence": (0.05, 0.99),
}
SWITCHES = ("mirror", "overlay", "passthrough")


@dataclass(frozen=True)
class ClientSettings:
    """One session's settings, as the page's sliders and toggles set them."""

    intensity: dict[str, float] = field(default_factory=lambda: {r: 1.0 for r in REGIONS})
    """Per-region expression gain 0..2 (motion.MotionSettings.intensity)."""
    smoothing: float = 0.5
    """0 = raw landmarks, 1 = heavy smoothing."""
    num_faces: int = 1
    """Faces the landmarker looks for (the first drives the avatar; all are drawn in the overlay)."""
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    mirror: bool = True
    """Flip the camera left-right before use, so the avatar moves like a mirror image."""
    overlay: bool = False
    """Send the landmarks to the page, which draws them over the camera picture."""
    passthrough: bool = False
    """Send the camera picture (centre square; the whole picture in face swap) instead of the avatar."""

    def merged(self, changes: Mapping[str, Any]) -> ClientSettings:
        """These settings with `changes` applied; ValueError naming the key, the value and the allowed range."""
        intensity = dict(self.intensity)
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key in NUMERIC_SETTINGS:
                low, high = NUMERIC_SETTINGS[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                    raise ValueError(f"setting {key} = {value!r} is not a number from {low} to {high}")
                if key.startswith("intensity."):
                    intensity[key.split(".", 1)[1]] = float(value)
                else:
                    values[key] = int(value) if key == "num_faces" else float(value)
            elif key in SWITCHES:
                if not isinstance(value, bool):
                    raise ValueError(f"setting {key} = {value!r} is not true or false")
                values[key] = value
            else:
                raise ValueError(f"unknown setting {key!r}: expected one of "
                                 f"{', '.join([*NUMERIC_SETTINGS, *SWITCHES])}")
        return replace(self, intensity=intensity, **values)

    def as_dict(self) -> dict[str, Any]:
        """Flat key -> value, the same keys merged() accepts."""
        flat: dict[str, Any] = {f"intensity.{k}": v for k, v in self.intensity.items()}
        for key in (*NUMERIC_SETTINGS, *SWITCHES):
            if not key.startswith("intensity."):
                flat[key] = getattr(self, key)
        return flat


@dataclass(frozen=True)
class Incoming:
    """One decoded frame from the browser and when it arrived."""

    frame: Any
    """av.VideoFrame as aiortc decoded it."""
    arrival_s: float
    """time.perf_counter() when the decoded frame reached the session."""


@dataclass(frozen=True)
class Outgoing:
    """One rendered canvas, ready to send, and what the page shows beside it."""

    yuv_i420: np.ndarray
    """(H * 3 // 2, W) uint8 I420 planes of the (H, W) picture (what the video encoder takes): the (S, S) avatar
    canvas, or in face swap (a draws_on_frame generator) the camera picture, cut to even sides."""
    canvas_size: int
    """S, the generator's avatar canvas side."""
    size: tuple[int, int]
    """(W, H) of the picture sent, in pixels."""
    seq: int
    latency_ms: float
    """Arrival of the driving frame at the server to the end of rendering."""
    faces: tuple[FaceObservation, ...]
    image_size: tuple[int, int]
    """(width, height) of the driving frame the faces were found in."""
    calibration: str


@dataclass(frozen=True)
class SessionParts:
    """What a session is built from; the server provides the factories."""

    make_reenactor: Callable[[str], Reenactor[Any, Any]]
    """Generator name -> a new reenactor (config's generator and motion sections with that model)."""
    load_avatar: Callable[[str, int], Avatar]
    """(avatar name, canvas size) -> Avatar, shared between sessions (web.library.AvatarLibrary.load)."""
    landmark_model: Path
    calibration_window_s: float = 0.3
    calibration_strict: bool = True
    badge: str = "auto"
    """output.badge: the "virtual avatar" label on what the page gets (auto: with a generator that draws on the
    camera picture, i.e. face swap)."""


class ClientSession(Worker):
    """One browser: its reenactor, landmarker, avatar, neutral pose and settings, rendering on its own thread.

    Changes from the page (avatar, generator, settings, recalibrate) are queued as commands and applied by the
    worker between frames, so the render state is only ever touched by one thread.
    """

    def __init__(self, session_id: str, parts: SessionParts, *, generator: str, avatar: str,
                 settings: ClientSettings | None = None, on_rendered: Callable[[], None] | None = None):
        super().__init__(name=f"web-session-{session_id[:6]}")
        self.session_id = session_id
        self.parts = parts
        self.settings = settings or ClientSettings()
        self.generator = generator
        self.incoming: LatestSlot[Incoming] = LatestSlot()
        self.outgoing: LatestSlot[Outgoing] = LatestSlot()
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.on_rendered: Callable[[], None] = on_rendered or (lambda: None)
        """Called on the session's thread after each new canvas (the server wakes the outgoing track with it)."""
        self._warn = RateLimitedLog(logger=log)
        self.reenactor: Reenactor[Any, Any] = parts.make_reenactor(generator)
        self._apply_motion_settings()
        self.avatar: Avatar = parts.load_avatar(avatar, self.reenactor.canvas_size)
        self._prepared = self.reenactor.prepare(self.avatar)
        self._landmarker = self._make_landmarker()
        self.calibrator = Calibrator(window_s=parts.calibration_window_s, strict=parts.calibration_strict)
        self._neutral: Any = None
        self._canvas = np.zeros((self.reenactor.canvas_size,) * 2 + (3,), np.uint8)
        self.badge = DisclosureBadge.for_output(parts.badge, family(generator).draws_on_frame)
        self._start_s = time.perf_counter()
        self._failures_in_a_row = 0
        self.frames_rendered = 0
        self.render_failures = 0

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop the thread and release the landmarker and the reenactor; idempotent."""
        started = self._thread is not None
        self.stop(timeout_s)
        if not started:  # the thread's own cleanup never ran
            self._landmarker.close()
            self.reenactor.close()

    # -- called from the event loop (any thread)

    def offer(self, frame: Any) -> None:
        """Hand over the newest decoded camera frame (an av.VideoFrame); an older one not yet taken is dropped."""
        self.incoming.put(Incoming(frame=frame, arrival_s=time.perf_counter()))

    def submit(self, command: Callable[[], None]) -> None:
        """Run `command` on the session's thread before the next frame."""
        self._commands.put(command)

    def select_avatar(self, name: str) -> None:
        """Switch to the avatar `name` from the library (loaded and prepared on the session's thread)."""
        self.submit(lambda: self._use_avatar(self.parts.load_avatar(name, self.reenactor.canvas_size)))

    def use_avatar(self, avatar: Avatar) -> None:
        """Switch to an avatar made for this session (an upload)."""
        self.submit(lambda: self._use_avatar(avatar))

    def select_generator(self, name: str) -> None:
        """Switch generator; the neutral pose is taken again (each generator has its own)."""
        self.submit(lambda: self._use_generator(name))

    def update(self, changes: Mapping[str, Any]) -> ClientSettings:
        """Validate and apply setting changes (ValueError names a bad one); returns the new settings."""
        settings = self.settings.merged(changes)
        self.submit(lambda: self._use_settings(settings))
        return settings

    def recalibrate(self) -> None:
        """Take the neutral pose again from the next frames."""
        self.submit(self._recalibrate)

    # -- the session's thread

    def _make_landmarker(self) -> FaceLandmarker:
        s = self.settings
        return FaceLandmarker(model_path=self.parts.landmark_model, mode="video", num_faces=s.num_faces,
                              min_detection_confidence=s.min_detection_confidence,
                              min_tracking_confidence=s.min_tracking_confidence)

    def _apply_motion_settings(self) -> None:
        motion = self.reenactor.motion
        current = motion.settings
        motion.update_settings(replace(current, intensity=dict(self.settings.intensity),
                                       smoothing=self.settings.smoothing))

    def _use_avatar(self, avatar: Avatar) -> None:
        if avatar.canvas_bgr.shape[0] != self.reenactor.canvas_size:
            raise ValueError(f"avatar {avatar.name} is {avatar.canvas_bgr.shape[0]} px, the generator draws "
                             f"{self.reenactor.canvas_size} px")
        self._prepared = self.reenactor.prepare(avatar)
        self.avatar = avatar
        self.reenactor.reset()  # the driver's neutral is kept across avatars, as in the desktop app

    def _use_generator(self, name: str) -> None:
        reenactor = self.parts.make_reenactor(name)
        try:
            avatar = self.avatar
            if avatar.path is not None and avatar.canvas_bgr.shape[0] != reenactor.canvas_size:
                avatar = self.parts.load_avatar(avatar.name, reenactor.canvas_size)
            prepared = reenactor.prepare(avatar)
        except Exception:
            reenactor.close()
            raise
        old, self.reenactor = self.reenactor, reenactor
        old.close()
        self.generator, self.avatar, self._prepared = name, avatar, prepared
        self._apply_motion_settings()
        self._canvas = np.zeros((reenactor.canvas_size,) * 2 + (3,), np.uint8)
        self.badge.enabled = DisclosureBadge.for_output(self.parts.badge, family(name).draws_on_frame).enabled
        self._recalibrate()

    def _use_settings(self, settings: ClientSettings) -> None:
        before, self.settings = self.settings, settings
        self._apply_motion_settings()
        landmarker_keys = ("num_faces", "min_detection_confidence", "min_tracking_confidence")
        if any(getattr(before, k) != getattr(settings, k) for k in landmarker_keys):
            old, self._landmarker = self._landmarker, self._make_landmarker()
            old.close()
        if before.mirror != settings.mirror:
            self._recalibrate()  # the neutral pose was taken on the other side

    def _recalibrate(self) -> None:
        self._neutral = None
        self.calibrator.reset()
        self.reenactor.reset()

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception as exc:  # a bad change (broken avatar file) must not end the session
                log.warning("session %s: change failed: %s", self.session_id[:6], exc)

    def _wake(self) -> None:
        self.incoming.close()

    def _run(self) -> None:
        seq = 0
        try:
            while not self._stop.is_set():
                seq, item = self.incoming.get(seq, timeout_s=0.1)
                self._drain_commands()
                if item is not None:
                    self._process(item)
        finally:
            self._landmarker.close()
            self.reenactor.close()

    def _process(self, item: Incoming) -> None:
        image = item.frame.to_ndarray(format="bgr24")
        if self.settings.mirror:
            image = cv2.flip(image, 1)
        time_s = item.arrival_s - self._start_s
        try:
            faces = self._landmarker.detect_all(image, int(time_s * 1000))
        except Exception as exc:  # one bad frame is "no face", never the end of the feed
            self._warn("session %s: face landmarks failed: %s", self.session_id[:6], exc)
            faces = []
        observed = Observed(frame=Frame(image, self.frames_rendered, item.arrival_s), face=faces[0] if faces else None,
                            more_faces=tuple(faces[1:]))
        shape = output_shape(self.reenactor, image.shape)  # face swap draws on the camera picture, of its size
        if self._canvas.shape != shape:
            self._canvas = np.zeros(shape, np.uint8)
        if not self._draw(observed, time_s):
            return
        self.frames_rendered += 1
        shown = self.badge.stamp(self._canvas)
        height, width = shown.shape[:2]
        if height % 2 or width % 2:  # I420 has half-size colour planes: even sides only
            height, width = height - height % 2, width - width % 2
            shown = np.ascontiguousarray(shown[:height, :width])
        self.outgoing.put(Outgoing(
            yuv_i420=cv2.cvtColor(shown, cv2.COLOR_BGR2YUV_I420), canvas_size=self.reenactor.canvas_size,
            size=(width, height), seq=self.frames_rendered,
            latency_ms=(time.perf_counter() - item.arrival_s) * 1000, faces=tuple(faces),
            image_size=(image.shape[1], image.shape[0]),
            calibration="calibrated" if self._neutral is not None else self.calibrator.status,
        ))
        self.on_rendered()

    def _draw(self, observed: Observed, time_s: float) -> bool:
        """Calibrate and render into the canvas; False (the last good canvas stays) when rendering failed."""
        try:
            if self._neutral is None:
                window = self.calibrator.add(observed, time_s)
                if window:
                    self._neutral = self.reenactor.neutral_from(window)
                    self.reenactor.reset()
            if self.settings.passthrough:
                passthrough_canvas(observed.frame.image_bgr, self._canvas)
            else:
                self.reenactor.render(self._prepared, observed, self._neutral, time_s, self._canvas)
        except Exception as exc:
            self.render_failures += 1
            self._failures_in_a_row += counts_towards_failure_limit(exc)
            self._warn("session %s: rendering failed: %s", self.session_id[:6], exc)
            if self._failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise
            return False
        self._failures_in_a_row = 0
        return True


def notify_from_thread(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
    """A callable for any thread that sets `event` on `loop` (ignored once the loop is closed)."""
    def notify() -> None:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop has stopped: the session is being torn down
            pass

    return notify
