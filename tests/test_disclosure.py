"""Responsible use: the first-start notice, the "virtual avatar" badge on the camera output, and the licences."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from avatarcam.commands import Command
from avatarcam.config import load_config
from avatarcam.disclosure import NOTICE_TEXT, DisclosureBadge, config_dir, show_first_start_notice
from avatarcam.licences import MODEL_LICENCES, licence_lines
from avatarcam.selftest import run_self_test
from tests.conftest import D12, ROOT

try:
    from xvfb_util import CameraRecorder, recording_backend
except ImportError:  # tests/ imported as a package
    from tests.xvfb_util import CameraRecorder, recording_backend

GREY = 128


def test_the_notice_is_shown_once_and_remembered(tmp_path):
    first, second = io.StringIO(), io.StringIO()
    assert show_first_start_notice(folder=tmp_path / "cfg", stream=first)
    assert "faces you have the right to use" in first.getvalue()
    assert not show_first_start_notice(folder=tmp_path / "cfg", stream=second)
    assert second.getvalue() == ""


def test_an_unwritable_config_folder_shows_the_notice_and_never_fails(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    stream = io.StringIO()
    assert show_first_start_notice(folder=blocker / "cfg", stream=stream)
    assert NOTICE_TEXT in stream.getvalue()
    assert "FACEMIMIC_CONFIG_DIR" in caplog.text
    assert show_first_start_notice(folder=blocker / "cfg", stream=io.StringIO())  # shown again: not remembered


def test_config_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEMIMIC_CONFIG_DIR", str(tmp_path / "x"))
    assert config_dir() == tmp_path / "x"
    monkeypatch.delenv("FACEMIMIC_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    if sys.platform != "win32":
        assert config_dir() == tmp_path / "xdg" / "facemimic"


def test_run_py_shows_the_notice_on_the_first_start_only(tmp_path):
    env = {**os.environ, "FACEMIMIC_CONFIG_DIR": str(tmp_path / "config"), "DISPLAY": "", "WAYLAND_DISPLAY": ""}
    args = [sys.executable, str(ROOT / "run.py"), "--source", str(D12), "--duration", "1", "--no-preview",
            "--no-vcam", "--out", str(tmp_path / "o.mp4")]
    runs = [subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert NOTICE_TEXT.splitlines()[0] in runs[0].stderr
    assert NOTICE_TEXT.splitlines()[0] not in runs[1].stderr + runs[1].stdout
    assert (tmp_path / "config" / "notice.json").is_file()


def test_badge_stamps_a_label_and_leaves_the_input_alone():
    frame = np.full((360, 640, 3), GREY, np.uint8)
    badge = DisclosureBadge(enabled=True)
    out = badge.stamp(frame)
    x0, y0, x1, y1 = badge.region(640, 360)
    assert (frame == GREY).all(), "the render buffer is never written"
    inside = out[y0:y1, x0:x1].astype(int)
    assert (inside.max(2) < 100).mean() > 0.5 and (inside.min(2) > 180).mean() > 0.02  # dark box, light text
    outside = out.copy()
    outside[y0:y1, x0:x1] = GREY
    assert (outside == GREY).all()
    assert not badge.toggle() and badge.stamp(frame) is frame


def test_badge_sits_on_the_picture_not_on_a_letterbox_bar():
    """A square avatar letterboxed into 1280x720 has black bars left and right: the badge goes in the picture's own
    bottom-left corner (on the bar it would label nothing, and a crop of the picture would lose it)."""
    from avatarcam.vcam import FrameComposer

    canvas = np.full((512, 512, 3), GREY, np.uint8)
    composer = FrameComposer(width=1280, height=720, mode="fit", background="#000000")
    composed = composer.compose(canvas)
    assert composer.picture_box == (280, 0, 1000, 720)
    badge = DisclosureBadge(enabled=True)
    out = badge.stamp(composed, composer.picture_box)
    x0, y0, x1, y1 = badge.region(1280, 720, composer.picture_box)
    assert 280 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 720 and x0 - 280 < 20 and 720 - y1 < 20
    assert (out[:, :280] == 0).all() and (out[:, 1000:] == 0).all(), "the bars are untouched"
    inside = out[y0:y1, x0:x1].astype(int)
    assert (inside.max(2) < 100).mean() > 0.5 and (inside.min(2) > 180).mean() > 0.02
    assert badge.region(1280, 720) == DisclosureBadge(enabled=True).region(1280, 720)  # whole frame: as before
    fill = FrameComposer(width=1280, height=720, mode="fill")
    fill.compose(canvas)
    assert fill.picture_box == (0, 0, 1280, 720)


def test_mesh_mode_with_the_badge_on_keeps_it_off_the_letterbox_bars(tmp_path):
    """The app end to end: the square mesh avatar letterboxed into the virtual camera's 640x360 frame, badge on."""
    pytest.importorskip("pyvirtualcam")
    from avatarcam.app import App

    config = load_config(None, {
        "generator.model": "mesh", "output.badge": "on", "capture.source": str(D12), "capture.loop": False,
        "output.preview": "off", "output.vcam": "on", "vcam.backend": "v4l2loopback",
        "vcam.device": "/dev/video-test", "vcam.width": 640, "vcam.height": 360, "vcam.fit": "fit",
        "vcam.background": "#000000", "hotkeys.enabled": False,
    })
    recorder = CameraRecorder(keep_images=True)

    def on_rendered(rendered) -> None:
        if len(recorder.images) >= 10:
            app.stop_event.set()

    app = App(config, duration_s=20, source_explicit=True, on_rendered=on_rendered)
    with recording_backend("v4l2loopback", recorder):
        app.run()
    images = [image.reshape(360, 640, 3) for image in recorder.images]
    assert len(images) >= 10
    for image in images:
        assert (image[:, :140] == 0).all() and (image[:, 500:] == 0).all(), "nothing on the letterbox bars"
    x0, y0, x1, y1 = DisclosureBadge(enabled=True).region(640, 360, (140, 0, 500, 360))
    for image in images:
        inside = image[y0:y1, x0:x1].astype(int)
        # the label's box is 75 % dark grey (at most 94 over any picture) with light text
        assert (inside.max(2) < 100).mean() > 0.5 and (inside.min(2) > 180).mean() > 0.01, "the badge, on the picture"


def test_badge_defaults_follow_the_mode():
    from avatarcam.app import App

    assert App(load_config(None, {"generator.model": "swap"})).badge.enabled
    assert not App(load_config(None, {"generator.model": "mesh"})).badge.enabled
    assert App(load_config(None, {"generator.model": "mesh", "output.badge": "on"})).badge.enabled
    assert not App(load_config(None, {"generator.model": "swap", "output.badge": "off"})).badge.enabled


def _grey_clip_with_a_face(path) -> None:
    """A 640x360 grey picture with the d12 face in its top-right corner: the badge corner stays plain grey."""
    from avatarcam.capture import iter_frames

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), 25.0, (640, 360))
    for i, frame in enumerate(iter_frames(str(D12))):
        if i >= 100:
            break
        picture = np.full((360, 640, 3), GREY, np.uint8)
        picture[:300, 340:640] = cv2.resize(frame, (300, 300), interpolation=cv2.INTER_AREA)
        writer.write(picture)
    writer.release()


def test_swap_mode_live_sends_the_badge_to_the_virtual_camera_and_the_hotkey_removes_it(tmp_path):
    pytest.importorskip("pyvirtualcam")
    from avatarcam.app import App

    clip = tmp_path / "grey.mkv"
    _grey_clip_with_a_face(clip)
    config = load_config(None, {
        "generator.model": "swap", "capture.source": str(clip), "capture.loop": False, "output.preview": "off",
        "output.vcam": "on", "vcam.backend": "v4l2loopback", "vcam.device": "/dev/video-test", "vcam.width": 640,
        "vcam.height": 360, "hotkeys.enabled": False,
    })
    recorder = CameraRecorder(keep_images=True)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def on_rendered(rendered) -> None:
        if rendered.frame is not None and len(seen) < 200:
            seen.append((rendered.frame.image_bgr.copy(), rendered.canvas_bgr.copy()))
        if len(seen) == 8 and app.badge.enabled:
            toggled_at.append(len(recorder.images))
            app.handle(Command.BADGE)

    toggled_at: list[int] = []
    app = App(config, duration_s=20, source_explicit=True, on_rendered=on_rendered)
    with recording_backend("v4l2loopback", recorder):
        app.run()
    assert toggled_at, f"only {len(seen)} frames rendered"
    frame, canvas = seen[5]
    assert canvas.shape == frame.shape == (360, 640, 3), "swap mode's output is the camera picture"
    diff = np.abs(canvas.astype(int) - frame.astype(int)).max(2)
    assert (diff[:300, 340:] > 25).sum() > 1500, "the avatar's face is on the user's"
    assert (diff[:, :300] == 0).all(), "the rest of the picture is the camera's own"
    x0, y0, x1, y1 = DisclosureBadge(enabled=True).region(640, 360)
    images = [image.reshape(360, 640, 3) for image in recorder.images]  # the backend gets the bytes of a BGR frame
    corner = [np.abs(image[y0:y1, x0:x1].astype(int) - GREY).max() for image in images]
    # Before the first render the camera shows the square avatar at rest, letterboxed: its badge is in that
    # picture's corner (test_mesh_mode_with_the_badge_on_keeps_it_off_the_letterbox_bars), not this one.
    camera = [i for i in range(1, toggled_at[0]) if np.abs(images[i][300:330, 100:300].astype(int) - GREY).max() <= 3]
    assert len(camera) > 5 and all(corner[i] > 60 for i in camera), "the badge is on by default"
    # After the toggle the corner is the grey picture again, from the first frame composed after it on (the
    # publisher repeats the last composed frame until the next render arrives) to the end.
    after = corner[toggled_at[0]:]
    clear = [c <= 3 for c in after]
    assert True in clear, after
    assert all(clear[clear.index(True):]) and len(clear) - clear.index(True) > 5, after


def test_check_lists_every_model_licence(capsys):
    config = load_config(None, {"capture.source": str(D12), "output.vcam": "off"})
    run_self_test(config)
    text = capsys.readouterr().out
    for line in licence_lines():
        assert line in text
    names = " ".join(m.name for m in MODEL_LICENCES)
    assert "MediaPipe" in names and "First Order Motion Model" in names and "LivePortrait" in names
    assert "Apache-2.0" in text and "CC BY-NC 4.0" in text and "InsightFace" in text


def _first_frame(path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    assert ok, path
    return frame


def test_render_tool_stamps_the_badge_on_swap_output_and_shows_the_notice(tmp_path):
    """tools/render.py in swap mode writes a recording: it carries the badge (output.badge auto) and the first
    start prints the notice, as the live app does. (Before: no badge and no notice from render.py.)"""
    env = {**os.environ, "FACEMIMIC_CONFIG_DIR": str(tmp_path / "cfg")}  # a first start
    outputs = {}
    for badge in ("auto", "off"):
        out = tmp_path / f"swap-{badge}.mkv"  # lossless: the comparison sees the badge, not the codec
        done = subprocess.run([sys.executable, "tools/render.py", "--model", "swap", "--driver", str(D12), "--avatar",
                               "astronaut", "--out", str(out), "--quiet", "--set", f"output.badge={badge}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs[badge] = (_first_frame(out), done.stderr)
    assert "faces you have the right to use" in outputs["auto"][1]  # first start
    assert "faces you have the right to use" not in outputs["off"][1]  # remembered
    with_badge, without = outputs["auto"][0].astype(int), outputs["off"][0].astype(int)
    height, width = with_badge.shape[:2]
    x0, y0, x1, y1 = DisclosureBadge(enabled=True).region(width, height)
    assert np.abs(with_badge[y0:y1, x0:x1] - without[y0:y1, x0:x1]).mean() > 20, "no badge on the swap recording"
    outside = np.ones((height, width), bool)
    outside[y0:y1, x0:x1] = False
    assert np.abs(with_badge - without)[outside].max() == 0  # the badge is the only difference


def test_the_browser_mode_offers_face_swap():
    """The browser's face swap stamps the badge itself (tests/test_web_session.py checks the picture)."""
    from avatarcam.web.server import offered_generators

    assert offered_generators(load_config(None, {"generator.model": "swap"})) == ["swap", "mesh"]
    assert offered_generators(load_config(None, {"web.generators": ["swap"]})) == ["swap"]
