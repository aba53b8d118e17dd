"""run.py and the tools as a user runs them: real processes, real files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2

from tests.conftest import D12, PORTRAIT, ROOT

HEADLESS = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def _run(*args, timeout=180):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**HEADLESS, "GLOG_minloglevel": "2"})


def test_help_lists_every_flag_group():
    proc = _run("run.py", "--help")
    assert proc.returncode == 0
    for flag in ("--source", "--avatar", "--model", "--checkpoint", "--backend", "--no-vcam", "--no-preview",
                 "--set KEY=VALUE", "--check", "--list-config", "Ctrl+Alt"):
        assert flag in proc.stdout


def test_list_config_documents_every_key():
    proc = _run("run.py", "--list-config")
    assert proc.returncode == 0
    assert "motion.intensity.mouth = 1.0" in proc.stdout and "vcam.fit = 'fit'" in proc.stdout


def test_bad_values_exit_with_a_message_naming_them():
    proc = _run("run.py", "--set", "motion.smoothing=5", "--duration", "1")
    assert proc.returncode == 2
    assert "motion.smoothing = 5" in proc.stderr and "0.0 to 1.0" in proc.stderr
    proc = _run("run.py", "--source", "no/such/clip.mp4", "--duration", "1", "--no-vcam")
    assert proc.returncode == 2 and "no/such/clip.mp4" in proc.stderr
    proc = _run("run.py", "--avatar", "nobody", "--duration", "1", "--no-vcam", "--source", str(D12))
    assert proc.returncode == 2 and "no avatar named 'nobody'" in proc.stderr


def test_main_command_without_webcam_display_or_vcam_writes_a_video():
    proc = _run("run.py", "--duration", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "No webcam could be opened" in text and "sample clip" in text
    match = re.search(r"output video: (.+\.mp4)", proc.stdout)
    assert match, proc.stdout
    video = Path(match.group(1))
    try:
        capture = cv2.VideoCapture(str(video))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = capture.read()
        capture.release()
        assert ok and frame.shape == (512, 512, 3) and frame.max() > 50
        assert frames >= 60  # about 30 fps for the seconds it ran
    finally:
        video.unlink(missing_ok=True)


def test_render_tool_is_frame_aligned(tmp_path):
    out = tmp_path / "sbs.mp4"
    proc = _run("tools/render.py", "--driver", str(D12), "--avatar", str(PORTRAIT), "--out", str(out),
                "--side-by-side", "--neutral-frame", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rendering [" in proc.stderr  # the progress bar
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 183
    assert capture.get(cv2.CAP_PROP_FPS) == 25.0
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 1024
    capture.release()


def test_render_tool_errors(tmp_path):
    proc = _run("tools/render.py", "--driver", str(D12), "--avatar", str(PORTRAIT), "--out",
                str(tmp_path / "x.mp4"), "--neutral-frame", "500")
    assert proc.returncode == 2 and "--neutral-frame 500 is past the end" in proc.stderr
    proc = _run("tools/render.py", "--driver", str(D12), "--avatar", str(tmp_path / "none.png"), "--out",
                str(tmp_path / "x.mp4"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_a_named_camera_is_waited_for_not_replaced_by_the_sample(tmp_path):
    out = tmp_path / "waiting.mp4"
    proc = _run("run.py", "--source", "9", "--no-vcam", "--out", str(out), "--duration", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "sample clip" not in text
    assert "camera 9 could not be opened" in text and "retrying" in text
    capture = cv2.VideoCapture(str(out))
    ok, frame = capture.read()
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    # The output kept running with the avatar at rest while the camera was missing.
    assert ok and frame.max() > 50 and frames >= 60


def test_benchmark_writes_the_documented_json(tmp_path):
    import json

    out = tmp_path / "bench.json"
    proc = _run("tools/bench.py", "--sizes", "256", "--seconds", "2", "--no-throughput", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert isinstance(report["fps"], float) and report["fps"] > 5
    assert set(report["latency_ms"]) == {"p50", "p95"} and report["latency_ms"]["p50"] > 0
    assert isinstance(report["dropped_frames"], int) and report["peak_rss_mb"] > 50
    assert set(report["stages"]) == {"decode", "landmarks", "motion", "generate", "compose", "output"}
