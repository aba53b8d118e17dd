"""What the user is told (issue 12): avatar switches pressed while avatars are prepared, key hints, notices,
labelled numbers on the status line, Esc."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from avatarcam.commands import Command
from avatarcam.hotkeys import preview_key_to_command, preview_keycode_map
from avatarcam.preview import PreviewStatus, PreviewWindow
from tests.conftest import D12, PORTRAIT, ROOT


def _sections(config):
    """The generator and motion sections build_reenactor takes."""
    return config.generator, config.motion


class _SlowLandmarker:
    """The real image landmarker, slowed down so the background preparation of the avatars takes a while."""

    def __init__(self, model_path):
        from avatarcam.landmarks import FaceLandmarker

        self._real = FaceLandmarker(model_path=model_path, mode="image")

    def detect(self, image_bgr, timestamp_ms=None):
        time.sleep(0.15)
        return self._real.detect(image_bgr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


def test_avatar_switch_pressed_while_preparing_is_applied_when_ready(model_path, image_landmarker):
    from avatarcam.config import load_config
    from avatarcam.generators import build_reenactor
    from avatarcam.handoff import LatestSlot
    from avatarcam.motion import Calibrator
    from avatarcam.pipeline import AvatarStore, RenderWorker
    from avatarcam.types import Frame, Observed

    reenactor = build_reenactor(*_sections(load_config(None, {"generator.canvas_size": 256})))
    store = AvatarStore(ROOT / "avatars", lambda: _SlowLandmarker(model_path), reenactor, extra=[PORTRAIT])
    store.load_first(PORTRAIT)
    frame_bgr = cv2.VideoCapture(str(D12)).read()[1]
    face = image_landmarker.detect(frame_bgr)
    observed: LatestSlot[Observed] = LatestSlot()
    worker = RenderWorker(observed, reenactor, store, Calibrator(window_s=0.0, strict=False)).start()
    stop = threading.Event()

    def feed():
        n = 0
        while not stop.is_set():
            observed.put(Observed(frame=Frame(frame_bgr, n, time.perf_counter()), face=face))
            n += 1
            time.sleep(0.04)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        store.reload()
        assert store.loading.wait(5)
        time.sleep(0.3)
        assert store.preparing().startswith("preparing avatars ") and "/5" in store.preparing()
        worker.submit(Command.AVATAR_3)  # pressed while only the first avatar is ready
        assert store.loaded.wait(120)
        assert store.preparing() == ""
        names = [a.name for a, _ in store.entries()]
        deadline = time.monotonic() + 5
        while worker.avatar_name != names[2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.avatar_name == names[2], f"the switch was dropped: still on {worker.avatar_name}"
    finally:
        stop.set()
        feeder.join(2)
        worker.stop()


def test_preview_keys_esc_quits_and_h_or_question_mark_shows_help():
    from avatarcam.preview import help_lines

    keymap = preview_keycode_map()
    assert preview_key_to_command(27, keymap) is Command.QUIT
    assert preview_key_to_command(ord("h"), keymap) is Command.HELP
    assert preview_key_to_command(ord("?"), keymap) is Command.HELP
    assert preview_key_to_command(ord("q"), keymap) is Command.QUIT
    lines = help_lines()
    assert any(line.startswith("1..9") for line in lines) and any("quit" in line for line in lines)
    assert any(line.startswith("i ") and "fps" in line for line in lines)


def test_help_box_banner_and_notice_are_drawn_on_the_preview_only():
    from avatarcam.preview import help_lines

    window = PreviewWindow()
    canvas = np.full((512, 512, 3), 160, np.uint8)
    plain = window._render(canvas, PreviewStatus(avatar="a"), None).copy()
    busy = window._render(canvas, PreviewStatus(avatar="a", banner="DEMO: sample clip", notice="snapshot saved"),
                          None, help_lines()).copy()
    view = 512
    assert np.array_equal(canvas, np.full((512, 512, 3), 160, np.uint8))  # the camera's canvas is untouched
    banner = busy[:20].reshape(-1, 3).mean(0)
    assert banner[2] > 150 and banner[0] < 80  # red
    assert busy[100:300].mean() < plain[100:300].mean() - 20  # the key-hint box
    assert not np.array_equal(busy[int(0.8 * view):view], plain[int(0.8 * view):view])  # the notice


def test_app_commands_give_notices_and_toggle_help_and_stats(tmp_path):
    from avatarcam.app import App
    from avatarcam.config import load_config

    app = App(load_config(None, {"output.snapshot_dir": str(tmp_path)}))
    app.handle(Command.SNAPSHOT)
    assert app.notice() == "snapshot: nothing rendered yet"
    app.handle(Command.BEST_MATCH_AVATAR)
    assert app.notice() == "best match needs a face in view"
    assert not app.show_help
    app.handle(Command.HELP)
    assert app.show_help
    assert app.show_stats
    app.handle(Command.STATS)  # `i`: the fps and latency leave the status line, as README says
    assert not app.show_stats
    app._notice = ("old", time.perf_counter() - 10)
    assert app.notice() == ""


def test_status_line_labels_its_numbers():
    text = PreviewStatus(avatar="a", calibration="calibrated", fps=30.0, latency_ms=41.6).text()
    assert "output 30.0 fps" in text and "latency 42 ms" in text
