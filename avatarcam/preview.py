"""The OpenCV preview window: the output frame, a status line, an optional overlay, and key -> command."""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from avatarcam.commands import Command
from avatarcam.hotkeys import preview_key_to_command, preview_keycode_map

log = logging.getLogger(__name__)

DEFAULT_TITLE = "FaceMimic preview"
STATUS_HEIGHT_PX = 26
STATUS_BACKGROUND_BGR = (32, 32, 32)
STATUS_TEXT_BGR = (235, 235, 235)
LANDMARK_BGR = (80, 255, 80)
DRIVER_BORDER_BGR = (255, 255, 255)


@dataclass(frozen=True)
class PreviewStatus:
    """What the status line shows; every field optional."""

    avatar: str = ""
    """Name of the avatar on air."""
    calibration: str = ""
    """e.g. 'calibrated', 'calibrating 40%', 'not calibrated'."""
    fps: float | None = None
    """Frames per second reaching the camera."""
    latency_ms: float | None = None
    """Capture-to-send latency in milliseconds."""
    server_ms: float | None = None
    """Round trip of this frame's graphs to the inference server (--backend triton), in milliseconds."""
    note: str = ""
    """Anything else worth a glance: 'FROZEN', 'PASSTHROUGH', 'no face', 'camera 0 stalled...'."""
    banner: str = ""
    """A warning across the top of the preview (never on the camera), e.g. 'DEMO: sample clip'."""
    notice: str = ""
    """A short-lived message in the middle of the preview: 'snapshot saved', 'intensity 1.1'."""

    def text(self) -> str:
        """The status line: 'Mona | calibrated | output 29.8 fps | latency 45 ms | FROZEN'."""
        parts = [self.avatar, self.calibration]
        if self.fps is not None:
            parts.append(f"output {self.fps:.1f} fps")
        if self.latency_ms is not None:
            parts.append(f"latency {self.latency_ms:.0f} ms")
        if self.server_ms is not None:
            parts.append(f"server {self.server_ms:.0f} ms")
        parts.append(self.note)
        return " | ".join(part for part in parts if part)


BANNER_BGR = (0, 0, 200)
NOTICE_BGR = (40, 40, 40)


def help_lines(bindings: Mapping[Any, str] | None = None) -> list[str]:
    """The key-hint overlay: one 'key  what it does' line per preview binding (the defaults when None)."""
    from avatarcam.hotkeys import DEFAULT_PREVIEW_BINDINGS

    bindings = DEFAULT_PREVIEW_BINDINGS if bindings is None else bindings
    words = {
        "previous_avatar": "previous avatar", "next_avatar": "next avatar", "best_match_avatar": "best match",
        "recalibrate": "recalibrate (sit at rest)", "passthrough": "real camera on/off", "freeze": "freeze",
        "overlay": "landmark overlay", "stats": "fps/latency on status line", "reload_avatars": "reload avatars",
        "intensity_up": "expression stronger", "intensity_down": "expression weaker", "snapshot": "snapshot",
        "badge": "'virtual avatar' badge on/off", "help": "this help", "quit": "quit (also Esc)",
    }
    slots = [key for command, key in bindings.items() if getattr(command, "avatar_slot", None) is not None]
    lines = [f"{slots[0]}..{slots[-1]}  avatar 1..{len(slots)}"] if slots else []
    for command, key in bindings.items():
        name = getattr(command, "value", str(command))
        if name in words:
            lines.append(f"{key}  {words[name]}")
    return lines


@dataclass(frozen=True)
class PreviewOverlay:
    """Drawn in the preview only, never in the camera frame."""

    landmarks_px: np.ndarray | None = None
    """(N, 2) float32 x, y in pixels of the shown output frame (extra columns such as z are ignored)."""
    driver_bgr: np.ndarray | None = None
    """(H, W, 3) uint8 BGR picture of the driver (the webcam face), shown small in the top-right corner."""


def has_display(*, environ: Mapping[str, str] | None = None, system: str | None = None) -> bool:
    """True when a window can be shown: always on Windows/macOS; elsewhere DISPLAY or WAYLAND_DISPLAY is set."""
    system = system or platform.system()
    if system in ("Windows", "Darwin"):
        return True
    environ = os.environ if environ is None else environ
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def _preview_display_problem(system: str) -> str | None:
    """Why OpenCV cannot open a window here (None: it can). Checked first because a failed cv2 window aborts."""
    if not has_display(system=system):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    if system in ("Windows", "Darwin"):
        return None
    display = os.environ.get("DISPLAY")
    if not display:
        return ("Wayland without XWayland: OpenCV's window needs X11 (DISPLAY is unset, WAYLAND_DISPLAY="
                f"{os.environ.get('WAYLAND_DISPLAY')!r})")
    try:
        from Xlib import display as xdisplay  # python-xlib comes with pynput on Linux
    except ImportError:
        return None  # cannot check; OpenCV will try
    try:
        connection = xdisplay.Display(display)
        connection.close()
    except Exception as exc:
        return f"cannot connect to X display {display!r} ({type(exc).__name__}: {str(exc).strip()})"
    return None


class PreviewWindow:
    """An OpenCV window showing the output frame; show() returns the commands of the keys pressed.

    All calls must come from one thread (OpenCV's GUI is not thread-safe; on macOS it must be the main thread).
    Without a display, open() logs one note and the window stays off: show() then returns [].
    """

    def __init__(self, *, title: str = DEFAULT_TITLE, bindings: Mapping[Any, Any] | None = None,
                 max_width: int = 960, wait_ms: int = 1, quit_on_close: bool = True,
                 system: str | None = None) -> None:
        if max_width < 64:
            raise ValueError(f"preview max_width {max_width!r} is not valid: expected >= 64 pixels")
        self._title = title
        self._keymap = preview_keycode_map(bindings)
        self._max_width = int(max_width)
        self._wait_ms = max(1, int(wait_ms))
        self._quit_on_close = quit_on_close
        self._system = system or platform.system()
        self._open = False
        self._note: str | None = None
        self._owner: threading.Thread | None = None
        self._buffer: np.ndarray | None = None
        self._frame_shape: tuple[int, ...] | None = None
        self._view_size = (0, 0)

    @property
    def title(self) -> str:
        """The window title (also what `xdotool search --name` finds)."""
        return self._title

    @property
    def is_open(self) -> bool:
        """True while the window exists."""
        return self._open

    @property
    def note(self) -> str | None:
        """Why the window is off, when it is."""
        return self._note

    def open(self) -> bool:
        """Create the window; False (one logged note, no window) when there is no usable display."""
        if self._open:
            return True
        if self._note is not None:
            return False
        problem = _preview_display_problem(self._system)
        if problem is not None:
            self._note = problem
            log.info("Preview window off: %s. The virtual camera keeps running.", problem)
            return False
        cv2.namedWindow(self._title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        self._owner = threading.current_thread()
        self._open = True
        return True

    def show(self, frame_bgr: np.ndarray, *, status: PreviewStatus | None = None,
             overlay: PreviewOverlay | None = None, help_text: list[str] | None = None) -> list[Command]:
        """Show (H, W, 3) uint8 BGR `frame_bgr` (not modified) and return the commands of keys pressed since."""
        if not self._open and not self.open():
            return []
        if threading.current_thread() is not self._owner:
            raise RuntimeError(f"PreviewWindow.show() called from thread {threading.current_thread().name!r}, but "
                               f"the window belongs to {self._owner.name if self._owner else None!r}; drive "
                               "the preview from one thread")
        if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 \
                or frame_bgr.shape[2] != 3:
            raise ValueError(f"unexpected preview frame: shape {getattr(frame_bgr, 'shape', None)}, dtype "
                             f"{getattr(frame_bgr, 'dtype', None)}; expected (H, W, 3) uint8 BGR")
        image = self._render(frame_bgr, status, overlay, help_text)
        cv2.imshow(self._title, image)
        key = cv2.waitKeyEx(self._wait_ms)
        commands: list[Command] = []
        command = preview_key_to_command(key, self._keymap)
        if command is not None:
            commands.append(command)
        if self._window_closed():
            self._open = False
            self._note = "the preview window was closed"
            log.info("Preview window closed by the user.")
            if self._quit_on_close and Command.QUIT not in commands:
                commands.append(Command.QUIT)
        return commands

    def close(self) -> None:
        """Destroy the window. Idempotent."""
        if not self._open:
            return
        self._open = False
        try:
            cv2.destroyWindow(self._title)
            cv2.waitKey(1)  # lets the GUI backend process the destroy
        except cv2.error as exc:  # already gone (closed by the user)
            log.debug("destroying the preview window: %s", exc)

    def __enter__(self) -> PreviewWindow:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- drawing

    def _render(self, frame: np.ndarray, status: PreviewStatus | None, overlay: PreviewOverlay | None,
                help_text: list[str] | None = None) -> np.ndarray:
        if self._frame_shape != frame.shape:
            height, width = frame.shape[:2]
            view_w = min(width, self._max_width)
            view_h = max(1, round(height * view_w / width))
            self._buffer = np.empty((view_h + STATUS_HEIGHT_PX, view_w, 3), np.uint8)
            self._frame_shape = frame.shape
            self._view_size = (view_w, view_h)
        buffer = self._buffer
        assert buffer is not None
        view_w, view_h = self._view_size
        view = buffer[:view_h]
        if (view_w, view_h) == (frame.shape[1], frame.shape[0]):
            np.copyto(view, frame)
        else:
            cv2.resize(frame, (view_w, view_h), dst=view, interpolation=cv2.INTER_AREA)
        if overlay is not None:
            scale = view_w / frame.shape[1]
            if overlay.landmarks_px is not None:
                self._draw_landmarks(view, overlay.landmarks_px, scale)
            if overlay.driver_bgr is not None:
                self._draw_driver(view, overlay.driver_bgr)
        if help_text:
            self._draw_box(view, help_text, top=0.12)
        if status is not None and status.notice:
            self._draw_box(view, [status.notice], top=0.78)
        if status is not None and status.banner:
            self._draw_banner(view, status.banner)
        strip = buffer[view_h:]
        strip[...] = STATUS_BACKGROUND_BGR
        text = status.text() if status is not None else ""
        if text:
            text = self._fit_text(text, view_w - 12)
            cv2.putText(strip, text, (6, STATUS_HEIGHT_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, STATUS_TEXT_BGR, 1,
                        cv2.LINE_AA)
        return buffer

    @classmethod
    def _draw_banner(cls, view: np.ndarray, text: str) -> None:
        height = min(28, view.shape[0])
        view[:height] = BANNER_BGR
        text = cls._fit_text(text, view.shape[1] - 12)
        cv2.putText(view, text, (6, height - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)

    @classmethod
    def _draw_box(cls, view: np.ndarray, lines: list[str], *, top: float) -> None:
        """Light text on a dark box, centred horizontally, starting at `top` (share of the view height)."""
        height, width = view.shape[:2]
        line_h = 18
        lines = [cls._fit_text(line, width - 40) for line in lines][: max(1, (height - 20) // line_h)]
        box_w = min(width - 8, max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] for t in lines) + 20)
        box_h = line_h * len(lines) + 10
        x0 = (width - box_w) // 2
        y0 = int(min(max(0, top * height), height - box_h))
        region = view[y0:y0 + box_h, x0:x0 + box_w]
        region[...] = (region.astype(np.uint16) * 3 // 10 + np.array(NOTICE_BGR, np.uint16) * 7 // 10).astype(np.uint8)
        for i, line in enumerate(lines):
            cv2.putText(view, line, (x0 + 10, y0 + 5 + line_h * (i + 1) - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        STATUS_TEXT_BGR, 1, cv2.LINE_AA)

    @staticmethod
    def _fit_text(text: str, max_px: int) -> str:
        while text and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] > max_px:
            text = text[:-2] + "~" if len(text) > 2 else ""
        return text

    @staticmethod
    def _draw_landmarks(view: np.ndarray, points: np.ndarray, scale: float) -> None:
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] < 2 or len(points) == 0:
            return
        height, width = view.shape[:2]
        xs = np.clip(np.rint(points[:, 0] * scale).astype(np.int32), 1, width - 2)
        ys = np.clip(np.rint(points[:, 1] * scale).astype(np.int32), 1, height - 2)
        for dy in (-1, 0, 1):  # 3x3 dots: visible at preview size, no per-point Python loop
            for dx in (-1, 0, 1):
                view[ys + dy, xs + dx] = LANDMARK_BGR

    @staticmethod
    def _draw_driver(view: np.ndarray, driver: np.ndarray) -> None:
        if driver.ndim != 3 or driver.shape[2] != 3 or driver.dtype != np.uint8 or driver.size == 0:
            return
        height, width = view.shape[:2]
        inset_w = max(16, width // 4)
        inset_h = max(1, round(driver.shape[0] * inset_w / driver.shape[1]))
        inset_h = min(inset_h, height // 2)
        margin = 8
        x0, y0 = width - inset_w - margin, margin
        if x0 < 1 or y0 + inset_h + 1 > height:
            return
        cv2.rectangle(view, (x0 - 1, y0 - 1), (x0 + inset_w, y0 + inset_h), DRIVER_BORDER_BGR, 1)
        cv2.resize(driver, (inset_w, inset_h), dst=view[y0 : y0 + inset_h, x0 : x0 + inset_w],
                   interpolation=cv2.INTER_AREA)

    def _window_closed(self) -> bool:
        try:
            return cv2.getWindowProperty(self._title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True
