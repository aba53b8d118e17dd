"""Shared test helpers: a private Xvfb server, xdotool, screenshots, a preview child process, and a recording
pyvirtualcam backend (registered through pyvirtualcam.register_backend, removed afterwards).

OpenCV windows (Qt) run in a child process (`python tests/xvfb_util.py preview ...`): Qt binds to one X server
for the life of a process and ends the process ("The X11 connection broke") when that server goes away, so the
pytest process never opens one.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TESTS_DIR.parent
SCREEN_SIZE = (1280, 720)


def xvfb_missing_reason() -> str | None:
    """Why the X11 tests cannot run here (None: they can)."""
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed (needed for real-display tests): "
                "sudo apt install xvfb xdotool, or python tools/install.py --dev")
    return None


@contextlib.contextmanager
def xvfb_display(*, width: int = SCREEN_SIZE[0], height: int = SCREEN_SIZE[1]) -> Iterator[str]:
    """Start Xvfb on a free display number (Xvfb picks it: -displayfd) and yield ':N'; stop it afterwards."""
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        number = b""
        deadline = time.monotonic() + 10.0
        while not number.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                raise RuntimeError("Xvfb did not report its display number within 10 s")
            chunk = os.read(read_fd, 16)
            if not chunk:
                raise RuntimeError(f"Xvfb exited early (status {process.poll()})")
            number += chunk
        yield f":{int(number.strip())}"
    finally:
        os.close(read_fd)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def xdotool(display: str, *args: str, timeout_s: float = 5.0) -> subprocess.CompletedProcess:
    """Run xdotool against `display`."""
    env = {**os.environ, "DISPLAY": display}
    return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=timeout_s)


def focus_window(display: str, title: str, *, timeout_s: float = 5.0) -> str:
    """Give the keyboard focus to the window named `title` (no window manager: windowfocus); return its id."""
    found = xdotool(display, "search", "--sync", "--name", f"^{title}$", timeout_s=timeout_s)
    window_ids = found.stdout.split()
    if not window_ids:
        raise RuntimeError(f"no window named {title!r} on {display}: {found.stderr.strip()}")
    xdotool(display, "windowfocus", "--sync", window_ids[0], timeout_s=timeout_s)
    return window_ids[0]


def remap_window(display: str, window_id: str) -> None:
    """Unmap and map `window_id` again, as a window manager would.

    Under CPU load, Qt on a bare Xvfb (no window manager) sometimes never paints a freshly mapped window until it
    is mapped again (seen ~40% of the time with both cores busy, never when idle; a clean-clone CI run once saw a
    preview stay black for 30 s).
    """
    xdotool(display, "windowunmap", "--sync", window_id)
    xdotool(display, "windowmap", "--sync", window_id)


def screenshot(display: str) -> np.ndarray:
    """The whole screen of `display` as (H, W, 3) uint8 BGR."""
    from Xlib import X
    from Xlib import display as xdisplay

    connection = xdisplay.Display(display)
    try:
        screen = connection.screen()
        width, height = screen.width_in_pixels, screen.height_in_pixels
        image = screen.root.get_image(0, 0, width, height, X.ZPixmap, 0xFFFFFFFF)
        pixels = np.frombuffer(image.data, np.uint8).reshape(height, width, 4)  # depth 24: B, G, R, pad
        return pixels[:, :, :3].copy()
    finally:
        connection.close()


# --------------------------------------------------------------------------------------------- pyvirtualcam


@dataclass(frozen=True)
class RecordedFrame:
    """What a backend received for one frame."""

    time_s: float
    max_value: int
    crc: int
    size: int


@dataclass
class CameraRecorder:
    """Everything a RecordingBackend saw; set fail_* / open_error to make it misbehave."""

    frames: list[RecordedFrame] = field(default_factory=list)
    opened: list[dict] = field(default_factory=list)
    closed: int = 0
    fail_sends: int = 0
    fail_opens: int = 0
    open_error: str | None = None
    default_device: str = "Recording Camera"
    lock: threading.Lock = field(default_factory=threading.Lock)
    keep_images: bool = False
    """Also keep a copy of every frame's pixels in `images` (tests that read what the camera showed)."""
    images: list[np.ndarray] = field(default_factory=list)

    def snapshot(self) -> list[RecordedFrame]:
        with self.lock:
            return list(self.frames)


def frame_crc(frame: np.ndarray) -> int:
    """The checksum RecordingBackend records for a frame."""
    return zlib.crc32(np.ascontiguousarray(frame).reshape(-1))


@contextlib.contextmanager
def recording_backend(name: str, recorder: CameraRecorder) -> Iterator[str]:
    """Register a pyvirtualcam backend `name` that records into `recorder`; restore the registry afterwards."""
    import pyvirtualcam
    from pyvirtualcam import camera as pyvirtualcam_camera

    class RecordingBackend:
        """Follows pyvirtualcam's Backend protocol (keyword-only constructor, close, send, device, native_fourcc)."""

        def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: object):
            with recorder.lock:
                if recorder.open_error is not None:
                    raise RuntimeError(recorder.open_error)
                if recorder.fail_opens > 0:
                    recorder.fail_opens -= 1
                    raise RuntimeError("test: the device vanished")
                recorder.opened.append(dict(width=width, height=height, fps=fps, fourcc=fourcc, device=device))
            self._device = device or recorder.default_device
            self._fourcc = fourcc
            self._size = width * height * 3

        def close(self) -> None:
            with recorder.lock:
                recorder.closed += 1

        def send(self, frame: np.ndarray) -> None:
            with recorder.lock:
                if recorder.fail_sends > 0:
                    recorder.fail_sends -= 1
                    raise RuntimeError("test: write failed")
                recorder.frames.append(RecordedFrame(time.monotonic(), int(frame.max()), zlib.crc32(frame),
                                                     int(frame.size)))
                if recorder.keep_images:
                    recorder.images.append(np.array(frame, copy=True))

        def device(self) -> str:
            return self._device

        def native_fourcc(self) -> int:
            return self._fourcc

    previous = pyvirtualcam_camera.BACKENDS.get(name)
    pyvirtualcam.register_backend(name, RecordingBackend)
    try:
        yield name
    finally:
        if previous is None:
            pyvirtualcam_camera.BACKENDS.pop(name, None)
        else:
            pyvirtualcam_camera.BACKENDS[name] = previous


# --------------------------------------------------------------------------------------------- preview child


def pattern_frame(width: int = 320, height: int = 240) -> np.ndarray:
    """A frame with four saturated quadrants (BGR): blue, green / red, yellow."""
    frame = np.empty((height, width, 3), np.uint8)
    half_w, half_h = width // 2, height // 2
    frame[:half_h, :half_w] = (255, 0, 0)
    frame[:half_h, half_w:] = (0, 255, 0)
    frame[half_h:, :half_w] = (0, 0, 255)
    frame[half_h:, half_w:] = (0, 255, 255)
    return frame


class PreviewChild:
    """A child process that shows a PreviewWindow on `display` and reports the commands it returns."""

    def __init__(self, display: str, *, title: str, overlay: bool = False, seconds: float = 20.0) -> None:
        env = {**os.environ, "DISPLAY": display, "QT_LOGGING_RULES": "*.debug=false"}
        env.pop("WAYLAND_DISPLAY", None)
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "overlay" if overlay else "preview", title, str(seconds)],
            cwd=str(PROJECT_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._lines: queue.Queue[dict] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.title = title

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            line = line.strip()
            if line.startswith("{"):
                self._lines.put(json.loads(line))

    def next_message(self, timeout_s: float) -> dict | None:
        """The child's next JSON message, or None after timeout_s."""
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def wait_ready(self, timeout_s: float = 15.0) -> dict:
        message = self.next_message(timeout_s)
        if message is None or message.get("event") != "ready":
            raise RuntimeError(f"preview child not ready: {message!r}; stderr: {self.stderr_tail()}")
        return message

    def stderr_tail(self) -> str:
        if self._process.poll() is None:
            return "(still running)"
        assert self._process.stderr is not None
        return self._process.stderr.read()[-2000:]

    def finish(self, timeout_s: float = 10.0) -> int:
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait(5)


def run_no_display_child(timeout_s: float = 30.0) -> dict:
    """Run the no-display scenarios in a child process (a wrong check would abort the process, not pytest)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "no-display"], cwd=str(PROJECT_ROOT),
                            env=env, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"no-display child failed with status {result.returncode}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child_preview(title: str, seconds: float, with_overlay: bool) -> int:
    """Child side: show the pattern (and the overlay) with a status line until QUIT or `seconds`; print JSON."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from avatarcam.commands import Command
    from avatarcam.preview import PreviewOverlay, PreviewStatus, PreviewWindow

    def say(**message: object) -> None:
        print(json.dumps(message), flush=True)

    frame = pattern_frame()
    before = frame.copy()
    status = PreviewStatus(avatar="Mona", calibration="calibrated", fps=29.9, latency_ms=42, note="TEST")
    overlay = None
    if with_overlay:
        points = np.array([[40.0, 40.0], [280.0, 200.0]], np.float32)
        overlay = PreviewOverlay(landmarks_px=points, driver_bgr=np.full((60, 80, 3), 200, np.uint8))
    window = PreviewWindow(title=title)
    if not window.open():
        say(event="no-window", note=window.note)
        return 1
    deadline = time.monotonic() + seconds
    shows = 0
    with window:
        while time.monotonic() < deadline:
            commands = window.show(frame, status=status, overlay=overlay)
            shows += 1
            if shows == 10:
                say(event="ready", frame_unchanged=bool(np.array_equal(frame, before)))
            for command in commands:
                say(event="command", command=command.value)
            if Command.QUIT in commands:
                break
            time.sleep(0.01)
    say(event="done", frame_unchanged=bool(np.array_equal(frame, before)))
    return 0


def _child_no_display() -> int:
    """Child side: PreviewWindow.open() under three broken displays; print what it reported (never abort)."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from avatarcam.preview import PreviewWindow, has_display

    results = {}
    cases = (("unset", {}), ("dead", {"DISPLAY": ":1999"}), ("wayland-only", {"WAYLAND_DISPLAY": "wayland-9"}))
    for case, env in cases:
        for name in ("DISPLAY", "WAYLAND_DISPLAY"):
            os.environ.pop(name, None)
        os.environ.update(env)
        window = PreviewWindow(title=f"no display {case}")
        opened = window.open()
        commands = window.show(pattern_frame())
        results[case] = {"has_display": has_display(), "opened": opened, "note": window.note,
                         "commands": [c.value for c in commands]}
        window.close()
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] in ("preview", "overlay"):
        sys.exit(_child_preview(sys.argv[2], float(sys.argv[3]), with_overlay=sys.argv[1] == "overlay"))
    if sys.argv[1] == "no-display":
        sys.exit(_child_no_display())
    raise SystemExit(f"unknown child scenario {sys.argv[1]!r}: expected preview, overlay or no-display")
