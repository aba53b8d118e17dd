"""The whole app under Xvfb: real preview window, real pynput global hotkeys, keys sent with xdotool, and the
virtual camera's frames recorded through pyvirtualcam's register_backend."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from avatarcam.preview import DEFAULT_TITLE
from avatarcam.vcam import FrameComposer
from tests.conftest import D12, ROOT
from tests.xvfb_util import focus_window, xdotool, xvfb_display, xvfb_missing_reason

pytestmark = pytest.mark.skipif(xvfb_missing_reason() is not None, reason=xvfb_missing_reason() or "")


class AppChild:
    """run.py in a child process on an Xvfb display, with its log lines readable as they come."""

    def __init__(self, display: str, thumbs_path, *args: str):
        env = {**os.environ, "DISPLAY": display, "QT_LOGGING_RULES": "*.debug=false"}
        env.pop("WAYLAND_DISPLAY", None)
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "app_child.py"), str(thumbs_path), *args],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout_s: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.log.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen in the app's log:\n" + "".join(self.log[-40:]))


def _thumb(image_bgr):
    return cv2.resize(image_bgr, (32, 18), interpolation=cv2.INTER_AREA).astype(np.float32)


def test_hotkeys_and_preview_keys_drive_the_running_app(tmp_path, image_landmarker):
    from avatarcam.avatars import load_avatar

    composer = FrameComposer(width=1280, height=720, mode="fit", background="blur")
    expected = {name: _thumb(composer.compose(load_avatar(ROOT / "avatars" / f"{name}.png", image_landmarker)
                                              .canvas_bgr).copy())
                for name in ("astronaut", "astronaut_cartoon")}
    thumbs_path = tmp_path / "thumbs.npy"
    with xvfb_display() as display:
        app = AppChild(display, thumbs_path, "--source", str(D12), "--avatar", "astronaut", "--vcam-device",
                       "/dev/video10", "--set", "output.preview=on", "--duration", "60")
        try:
            app.wait_for("virtual camera: v4l2loopback on /dev/video10, 1280x720 @ 30 fps", 30)
            app.wait_for("avatars ready: astronaut, astronaut_cartoon", 60)  # prepared in the background
            focus_window(display, DEFAULT_TITLE, timeout_s=20)
            time.sleep(1.0)
            marks = {}
            xdotool(display, "key", "ctrl+alt+n")  # a global combo, seen by pynput
            app.wait_for("command: next_avatar")
            marks["next"] = time.monotonic()
            time.sleep(1.5)
            focus_window(display, DEFAULT_TITLE)
            xdotool(display, "key", "0")  # a plain key in the preview window
            app.wait_for("command: passthrough")
            marks["passthrough"] = time.monotonic()
            time.sleep(1.5)
            xdotool(display, "key", "ctrl+alt+0")
            app.wait_for("command: passthrough")
            marks["back"] = time.monotonic()
            xdotool(display, "key", "ctrl+alt+c")
            app.wait_for("command: recalibrate")
            time.sleep(1.0)
            xdotool(display, "key", "q")
            app.wait_for("command: quit")
            assert app.process.wait(20) == 0
        finally:
            if app.process.poll() is None:
                app.process.kill()
    thumbs = np.load(thumbs_path).astype(np.float32)
    times = np.load(thumbs_path.with_suffix(".times.npy"))
    assert len(thumbs) > 100
    assert thumbs.reshape(len(thumbs), -1).max(1).min() > 40, "a black frame reached the camera"

    def distance(frames, name):
        return np.abs(frames - expected[name]).mean(axis=(1, 2, 3))

    before = thumbs[times < marks["next"] - 0.3]
    after = thumbs[(times > marks["next"] + 0.5) & (times < marks["passthrough"] - 0.2)]
    passthrough = thumbs[(times > marks["passthrough"] + 0.5) & (times < marks["back"] - 0.2)]
    # The camera showed the astronaut, then (Ctrl+Alt+N) the next avatar, then (key 0) the real camera.
    assert np.median(distance(before, "astronaut")) < np.median(distance(before, "astronaut_cartoon"))
    assert np.median(distance(after, "astronaut_cartoon")) < np.median(distance(after, "astronaut"))
    driver = _thumb(FrameComposer(width=1280, height=720).compose(
        cv2.resize(next(iter(_frames())), (512, 512))).copy())
    assert np.median(np.abs(passthrough - driver).mean(axis=(1, 2, 3))) < \
        np.median(distance(passthrough, "astronaut_cartoon"))


def _frames():
    from avatarcam.capture import iter_frames

    return iter_frames(str(D12))
