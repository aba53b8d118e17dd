"""A newcomer's first runs (issue 12): run.py ends by itself on a finite source, SIGTERM leaves a playable file,
no display and no camera play the sample once, a quiet console, and the preview says what is going on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from avatarcam.capture import probe_camera
from tests.conftest import D12, ROOT
from tests.xvfb_util import focus_window, remap_window, screenshot, xdotool, xvfb_display, xvfb_missing_reason


def _env_without_display() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return env


def _frames_in(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.isOpened() and capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_sigterm_finalises_the_recording(tmp_path):
    out = tmp_path / "stopped.mp4"
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--source", str(D12), "--no-preview",
                                "--no-vcam", "--out", str(out)], cwd=ROOT, env=_env_without_display(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 20_000):
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.2)
        time.sleep(1.0)
        assert process.poll() is None, "the clip ended before the signal: nothing tested"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert _frames_in(out) > 10, "the recording is not playable after SIGTERM"


def test_finite_source_with_dropped_frames_ends_by_itself(tmp_path):
    # --fast reads the file as fast as it decodes, so the landmark thread is sure to drop frames (latest wins).
    out = tmp_path / "fast.mp4"
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--source", str(D12), "--fast", "--no-preview",
                             "--no-vcam", "--out", str(out)], cwd=ROOT, env=_env_without_display(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    rendered = int(result.stdout.split("rendered ")[1].split()[0])
    assert 0 < rendered < 183  # frames were dropped, and the run still ended
    assert _frames_in(out) > 0


@pytest.mark.skipif(probe_camera(0), reason="this machine has a webcam: `python run.py` would use it, not the sample")
def test_python_run_py_without_display_or_camera_plays_the_sample_once(tmp_path):
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--no-vcam"], cwd=ROOT,
                            env=_env_without_display(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("output video: ")]
    assert lines, result.stdout
    video = lines[0].removeprefix("output video: ").strip()
    try:
        assert _frames_in(video) > 100  # the 7.3 s sample at 30 fps, playable
    finally:
        os.remove(video)
    assert "sample clip" in result.stderr
    assert "VIDEOIO" not in result.stderr and "obsensor" not in result.stderr  # probing camera 0 is quiet
    assert "W0000" not in result.stderr
    assert time.monotonic() - start < 240


def test_console_says_one_short_line_per_fact(tmp_path):
    if sys.platform != "linux":
        pytest.skip("the v4l2loopback label lookup is Linux's")
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--source", str(D12), "--duration", "3",
                             "--no-preview", "--vcam-device", "No Such Camera Label", "--out",
                             str(tmp_path / "o.mp4")], cwd=ROOT, env=_env_without_display(), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    assert "W0000" not in text and "I0000" not in text and "InitGoogle" not in text  # MediaPipe's start-up lines
    assert "VIDEOIO" not in text and "obsensor" not in text  # OpenCV's camera probing
    assert "sudo modprobe" not in text  # the full virtual-camera guide is for --check and vcam_setup.py
    vcam_lines = [line for line in text.splitlines() if "virtual camera off" in line]
    assert len(vcam_lines) == 1 and len(vcam_lines[0]) < 300 and "vcam_setup.py" in vcam_lines[0]
    assert len(text.splitlines()) < 15, text


def test_camera_device_exists_tells_busy_from_absent(tmp_path):
    from avatarcam.capture import camera_device_exists

    (tmp_path / "video0").write_text("")
    assert camera_device_exists(0, system="Linux", dev_root=str(tmp_path)) is True
    assert camera_device_exists(1, system="Linux", dev_root=str(tmp_path)) is False
    assert camera_device_exists(0, system="Windows") is None


def test_busy_default_webcam_is_waited_for_not_replaced(monkeypatch):
    from avatarcam import app as app_module
    from avatarcam.config import load_config

    monkeypatch.setattr(app_module, "probe_camera", lambda target: False)  # cannot be opened now ...
    monkeypatch.setattr(app_module, "camera_device_exists", lambda target: True)  # ... but it is there: busy
    app = app_module.App(load_config(None), source_explicit=False)
    spec, is_sample = app._source(vcam_live=False)
    assert (spec.kind, spec.target, is_sample) == ("camera", 0, False)
    assert "busy" in app.notes[-1] and "waiting" in app.notes[-1]
    monkeypatch.setattr(app_module, "camera_device_exists", lambda target: False)  # no webcam at all
    spec, is_sample = app._source(vcam_live=True)  # ... but a call may be watching the virtual camera
    assert spec.kind == "camera" and not is_sample and "virtual camera is on" in app.notes[-1]
    spec, is_sample = app._source(vcam_live=False)
    assert spec.kind == "file" and is_sample


# ------------------------------------------------------------------ the preview, under Xvfb

xvfb = pytest.mark.skipif(xvfb_missing_reason() is not None, reason=xvfb_missing_reason() or "")


def _preview_window(display: str) -> tuple[str, np.ndarray]:
    window = focus_window(display, "FaceMimic preview", timeout_s=30)
    geometry = xdotool(display, "getwindowgeometry", "--shell", window).stdout
    values = dict(line.split("=") for line in geometry.split() if "=" in line)
    x, y, w, h = (int(values[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
    return window, screenshot(display)[y:y + h, x:x + w]


def _preview_box(display: str) -> np.ndarray:
    return _preview_window(display)[1]


def _drawn_preview(display: str, timeout_s: float = 30.0, remap_after_s: float = 3.0) -> np.ndarray:
    """The preview once the window shows a picture.

    A loaded machine may map it before its first frame is drawn, and Qt without a window manager may not paint it
    at all until it is mapped again: after `remap_after_s` of a black window, re-map it (as a window manager would).
    """
    deadline = time.monotonic() + timeout_s
    remap_at = time.monotonic() + remap_after_s
    while True:
        window, view = _preview_window(display)
        if view.mean() > 30 or time.monotonic() > deadline:
            return view
        if time.monotonic() > remap_at:
            remap_window(display, window)
            remap_at = time.monotonic() + remap_after_s
        time.sleep(0.2)


def _settled_preview(display: str, timeout_s: float = 20.0) -> np.ndarray:
    """The preview once two looks 0.5 s apart agree (a frozen picture that has reached the window)."""
    deadline = time.monotonic() + timeout_s
    previous = _preview_box(display)
    while True:
        time.sleep(0.5)
        view = _preview_box(display)
        if view.shape == previous.shape and np.abs(view.astype(np.int16) - previous).mean() < 1.0:
            return view
        if time.monotonic() > deadline:
            return view
        previous = view


@xvfb
def test_named_missing_camera_opens_the_preview_at_once_and_esc_quits(tmp_path):
    from tests.test_app_x11 import AppChild

    thumbs = tmp_path / "thumbs.npy"
    with xvfb_display() as display:
        app = AppChild(display, thumbs, "--source", "9", "--vcam-device", "/dev/video10", "--set",
                       "output.preview=on", "--duration", "60", "--log-level", "DEBUG")
        try:
            app.wait_for("status: waiting for camera 9...", 60)
            view = _drawn_preview(display)  # the window is there, with the avatar at rest, before any frame
            assert view.shape[0] > 200 and view.mean() > 30
            xdotool(display, "key", "Escape")
            app.wait_for("command: quit", 15)
            assert app.process.wait(30) == 0
        finally:
            if app.process.poll() is None:
                app.process.kill()
    sent = np.load(thumbs)
    assert len(sent) > 10 and sent.reshape(len(sent), -1).max(1).min() > 40  # the camera got the avatar, not black


@xvfb
def test_sample_fallback_shows_a_demo_banner_help_and_notices(tmp_path):
    if probe_camera(0):
        pytest.skip("this machine has a webcam: no sample fallback")
    from tests.test_app_x11 import AppChild

    with xvfb_display() as display:
        app = AppChild(display, tmp_path / "thumbs.npy", "--no-vcam", "--set", "output.preview=on", "--set",
                       f"output.snapshot_dir={tmp_path}", "--duration", "60", "--log-level", "DEBUG")
        try:
            app.wait_for("sample clip", 60)
            app.wait_for("calibrated", 60)
            # The first frames after calibration may still be on their way to the window on a loaded machine:
            # look again for up to 30 s before deciding the banner is missing.
            deadline = time.monotonic() + 30
            while True:
                top = _drawn_preview(display)[:20].reshape(-1, 3).mean(0)
                if (top[2] > 150 and top[0] < 60 and top[1] < 60) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert top[2] > 150 and top[0] < 60 and top[1] < 60, f"no red DEMO banner at the top: {top}"
            # Freeze the picture first, so that only the help box can change the middle of the window.
            xdotool(display, "key", "f")
            app.wait_for("command: freeze")
            plain = _settled_preview(display)
            h = plain.shape[0]
            middle = (slice(int(0.15 * h), int(0.5 * h)), slice(None))
            xdotool(display, "key", "h")
            app.wait_for("command: help")
            # A loaded machine may take a while to draw the next frame: look for the box for up to 20 s.
            deadline = time.monotonic() + 20
            while True:
                with_help = _preview_box(display)
                if with_help[middle].mean() < plain[middle].mean() - 15 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert with_help[middle].mean() < plain[middle].mean() - 15, "no key-hint box drawn"
            xdotool(display, "key", "s")
            app.wait_for("snapshot saved")
            xdotool(display, "key", "q")
            assert app.process.wait(30) == 0
        finally:
            if app.process.poll() is None:
                app.process.kill()


def test_torch_is_an_extra_the_cpu_path_does_not_need(monkeypatch):
    import importlib.util
    import subprocess as sp

    # The built-in generator on a CPU builds and renders without importing torch.
    code = ("import sys; from avatarcam.generators import build_reenactor; from avatarcam.config import load_config; "
            "c = load_config(None); build_reenactor(c.generator, c.motion); print('torch' in sys.modules)")
    assert sp.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                  timeout=120).stdout.strip() == "False"
    requirements = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not any(line.startswith("torch") for line in requirements)
    from avatarcam.config import load_config
    from avatarcam.errors import ConfigError
    from avatarcam.generators import build_reenactor

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    config = load_config(None, {"generator.model": "fomm"})
    with pytest.raises(ConfigError, match=r"--model fomm needs torch.*install.py --torch"):
        build_reenactor(config.generator, config.motion)
