"""avatarcam.preview: display detection, and a real OpenCV window under Xvfb checked by screenshot."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarcam.preview import STATUS_HEIGHT_PX, PreviewStatus, has_display

try:
    import xvfb_util
except ImportError:  # tests/ imported as a package
    from tests import xvfb_util

SCREENSHOT_DIR = Path("/tmp/facemimic-test-screenshots")


def test_has_display_rules() -> None:
    assert has_display(environ={}, system="Windows") and has_display(environ={}, system="Darwin")
    assert not has_display(environ={}, system="Linux")
    assert has_display(environ={"DISPLAY": ":0"}, system="Linux")
    assert has_display(environ={"WAYLAND_DISPLAY": "wayland-0"}, system="Linux")
    assert not has_display(environ={"DISPLAY": ""}, system="Linux")


def test_status_line_text() -> None:
    status = PreviewStatus(avatar="Mona", calibration="calibrated", fps=29.94, latency_ms=45.4, note="FROZEN")
    # The numbers say what they are (issue 12: an unlabelled "45 ms" was read as a frame time).
    assert status.text() == "Mona | calibrated | output 29.9 fps | latency 45 ms | FROZEN"
    assert PreviewStatus().text() == ""


def test_no_usable_display_gives_a_note_and_no_window() -> None:
    results = xvfb_util.run_no_display_child()
    assert results["unset"]["opened"] is False and "no display" in results["unset"]["note"]
    assert results["dead"]["opened"] is False and "cannot connect to X display ':1999'" in results["dead"]["note"]
    assert results["wayland-only"]["opened"] is False and "needs X11" in results["wayland-only"]["note"]
    assert results["wayland-only"]["has_display"] is True  # a display exists, just not one OpenCV can use
    assert all(case["commands"] == [] for case in results.values())


def find_pattern(screen: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the pattern's pure blue top-left quadrant, or None when it is not on screen."""
    blue = np.all(screen == (255, 0, 0), axis=2)
    ys, xs = np.nonzero(blue)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def is_painted(screen: np.ndarray) -> bool:
    """True once the whole pattern and some status text are on screen."""
    box = find_pattern(screen)
    if box is None or (box[2] - box[0], box[3] - box[1]) != (160, 120):
        return False
    strip = screen[box[1] + 240 : box[1] + 240 + STATUS_HEIGHT_PX, box[0] : box[0] + 320]
    return bool(np.all(strip > 200, axis=2).any())


def screenshot_when_painted(display: str, window_id: str, *, rounds: int = 3) -> np.ndarray:
    """A screenshot taken once the preview is painted (re-mapping the window when it is not: see remap_window)."""
    screen = xvfb_util.screenshot(display)
    for round_index in range(rounds):
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            screen = xvfb_util.screenshot(display)
            if is_painted(screen):
                return screen
            time.sleep(0.05)
        if round_index < rounds - 1:
            xvfb_util.remap_window(display, window_id)
    return screen  # the assertions will say what is missing


def show_and_capture(display: str, *, overlay: bool, name: str) -> tuple[np.ndarray, dict]:
    child = xvfb_util.PreviewChild(display, title=f"FaceMimic {name}", overlay=overlay)
    try:
        ready = child.wait_ready()
        window_id = xvfb_util.focus_window(display, child.title)
        screen = screenshot_when_painted(display, window_id)
        SCREENSHOT_DIR.mkdir(exist_ok=True)
        cv2.imwrite(str(SCREENSHOT_DIR / f"{name}.png"), screen)
        xvfb_util.focus_window(display, child.title)
        xvfb_util.xdotool(display, "key", "q")
        assert child.next_message(3.0) == {"event": "command", "command": "quit"}
        done = child.next_message(5.0)
    finally:
        assert child.finish() == 0
    assert ready["frame_unchanged"] and done and done["frame_unchanged"]  # drawing never touches the frame
    return screen, done


def test_preview_shows_the_frame_and_a_status_line(display) -> None:
    screen, _ = show_and_capture(display, overlay=False, name="preview")
    box = find_pattern(screen)
    assert box is not None, f"the pattern is not on screen (see {SCREENSHOT_DIR}/preview.png)"
    x0, y0, x1, y1 = box
    assert (x1 - x0, y1 - y0) == (160, 120)  # shown 1:1, not scaled
    # The four quadrants, exactly as sent.
    assert np.all(screen[y0 : y0 + 120, x0 + 160 : x0 + 320] == (0, 255, 0))
    assert np.all(screen[y0 + 120 : y0 + 240, x0 : x0 + 160] == (0, 0, 255))
    assert np.all(screen[y0 + 120 : y0 + 240, x0 + 160 : x0 + 320] == (0, 255, 255))
    # The status line below: dark background with light text pixels.
    strip = screen[y0 + 240 : y0 + 240 + STATUS_HEIGHT_PX, x0 : x0 + 320].astype(int)
    text_pixels = np.all(strip > 200, axis=2).sum()
    background = np.all(strip == 32, axis=2).sum()
    assert text_pixels > 40, f"only {text_pixels} text-coloured pixels in the status line"
    assert background > strip.shape[0] * strip.shape[1] // 2


def test_overlay_is_drawn_in_the_preview_only(display) -> None:
    screen, _ = show_and_capture(display, overlay=True, name="overlay")
    box = find_pattern(screen)
    assert box is not None, f"the pattern is not on screen (see {SCREENSHOT_DIR}/overlay.png)"
    x0, y0 = box[:2]
    # A landmark dot at (40, 40) of the frame, in the landmark colour.
    assert tuple(screen[y0 + 40, x0 + 40]) == (80, 255, 80)
    # The driver inset (grey 200) in the top-right corner, inside a white border.
    inset = screen[y0 + 8 : y0 + 8 + 20, x0 + 320 - 8 - 80 : x0 + 320 - 8]
    assert np.all(inset == 200)
    # The child checked that the frame it passed to show() was never modified.
