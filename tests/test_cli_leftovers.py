"""New-user trial leftovers (issue 12): --duration that is not a duration, the program name in --help, and a
headless recording from a named camera that never comes."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from avatarcam import cli
from tests.conftest import ROOT

HEADLESS = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_duration_that_is_not_a_duration_is_refused(value, capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["--duration", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--duration: {value} is not a duration" in err and "leave --duration out" in err


def test_duration_help_says_what_leaving_it_out_means():
    text = " ".join(cli.build_parser().format_help().split())
    assert "--duration SECONDS" in text and "without it the run lasts until you quit or a video source ends" in text
    assert cli.build_parser().parse_args(["--duration", "2.5"]).duration == 2.5


@pytest.mark.parametrize("argv0, prog", [("/usr/local/bin/facemimic", "facemimic"), ("C:/venv/facemimic.exe",
                                         "facemimic"), ("run.py", "run.py"), ("/x/pytest/__main__.py", "run.py")])
def test_help_names_the_program_the_user_ran(monkeypatch, argv0, prog):
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    text = cli.build_parser().format_help()
    assert text.startswith(f"usage: {prog} ")
    if prog != "run.py":
        assert "run.py" not in text  # the examples name the installed command too


def test_headless_recording_from_a_missing_camera_gives_up_and_finishes_the_file(tmp_path):
    out = tmp_path / "waiting.mp4"
    env = {**HEADLESS, "GLOG_minloglevel": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "run.py", "--source", "9", "--no-vcam", "--out", str(out),
                           "--set", "capture.wait_s=3"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "camera 9 gave no frame for 3 s (capture.wait_s)" in proc.stderr and str(out) in proc.stderr
    capture = cv2.VideoCapture(str(out))
    ok, frame = capture.read()
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert ok and frame.max() > 50 and frames >= 30  # a finished, playable file: the avatar at rest


def _run_with_folder(folder, tmp_path):
    env = {**HEADLESS, "GLOG_minloglevel": "2", "PYTHONPATH": str(ROOT),
           "FACEMIMIC_CONFIG_DIR": str(tmp_path / "config")}
    return subprocess.run([sys.executable, "run.py", "--avatars-folder", str(folder), "--source",
                           str(ROOT / "tests" / "fixtures" / "driving" / "d14.mp4"), "--no-vcam", "--no-preview",
                           "--duration", "1", "--out", str(tmp_path / "o.mp4")], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env=env)


def test_a_bad_first_picture_in_the_users_folder_is_skipped_at_start(tmp_path):
    """The README: a file that is not a usable portrait is skipped "and the others still load". The first picture
    of the user's own folder (no 'astronaut' in it) used to be loaded without that care, and a broken one, or one
    without a face, ended the run."""
    folder = tmp_path / "avatars"
    folder.mkdir()
    (folder / "aa_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    cv2.imwrite(str(folder / "ab_no_face.png"), np.full((300, 300, 3), 128, np.uint8))
    (folder / "zz.jpg").write_bytes((ROOT / "tests" / "fixtures" / "source" / "lp_s42.jpg").read_bytes())
    proc = _run_with_folder(folder, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping avatar" in proc.stderr and "aa_broken.png" in proc.stderr and "ab_no_face.png" in proc.stderr

    (folder / "zz.jpg").unlink()
    proc = _run_with_folder(folder, tmp_path)
    assert proc.returncode == 2
    assert "none of the 2 pictures in" in proc.stderr and "--avatar path/to/image.jpg" in proc.stderr
