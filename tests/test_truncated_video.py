"""Truncated videos (issue 12, new-user trial): a download or copy cut off part way. The frames that decode are
used and the message names the file and the frame where it stops; a file cut off before its index says so."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import cv2
import pytest

from avatarcam.capture import CaptureThread, SourceSpec, first_frame, mp4_truncation
from avatarcam.errors import DeviceError
from tests.conftest import PORTRAIT, ROOT
from tests.test_offline_timing import _d12_frames, _render, av, mesh_setup  # noqa: F401 (fixture)

FRAMES = 50


def _write(path, frames, options: dict) -> None:
    """Constant 25 fps H.264 in an mp4 (PyAV), with muxer options such as faststart (index first)."""
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
    stream.pix_fmt = "yuv420p"
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def _decodable(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


@pytest.fixture(scope="module")
def cut_videos(tmp_path_factory):
    """'front': index first (faststart), media cut at 60 %; 'back': index last (the default), cut in half."""
    folder = tmp_path_factory.mktemp("cut")
    frames = _d12_frames(FRAMES, 128)
    out = {}
    for name, options in (("front", {"movflags": "faststart"}), ("back", {})):
        whole = folder / f"{name}_whole.mp4"
        _write(whole, frames, options)
        data = whole.read_bytes()
        cut = folder / f"{name}_cut.mp4"
        cut.write_bytes(data[:int(len(data) * 0.6)] if name == "front" else data[:len(data) // 2])
        assert mp4_truncation(whole) == ""  # a whole file is never called truncated
        out[name] = cut
    return out


def test_index_first_file_cut_short_renders_the_frames_that_decode(
        cut_videos, mesh_setup, model_path, tmp_path, caplog):  # noqa: F811 (mesh_setup is the imported fixture)
    path = cut_videos["front"]
    decoded = _decodable(path)
    assert 0 < decoded < FRAMES
    with caplog.at_level(logging.WARNING, logger="avatarcam.offline"):
        report = _render(mesh_setup, model_path, path, tmp_path / "out.mkv")
    assert report.frames == decoded == _decodable(tmp_path / "out.mkv")
    assert f"video {path} ends early: it is truncated at frame {decoded} of the {FRAMES}" in caplog.text


def test_live_file_source_cut_short_says_where_it_stops(cut_videos, caplog):
    path = cut_videos["front"]
    decoded = _decodable(path)
    with caplog.at_level(logging.WARNING, logger="avatarcam.capture"):
        capture = CaptureThread(SourceSpec.parse(str(path)), loop=False, pace=False).start()
        assert capture.ended.wait(20)
        capture.stop()
    assert capture.frames_read == decoded
    assert any(f"truncated at frame {decoded}" in note and str(path) in note for note in capture.notes)
    assert "ends early" in caplog.text


def test_file_cut_before_its_index_is_named_as_truncated(cut_videos):
    path = cut_videos["back"]
    with pytest.raises(DeviceError) as info:
        first_frame(str(path))
    message = str(info.value)
    assert str(path) in message and "ends early" in message and "index ('moov' box) is missing" in message
    assert "download" in message  # the fix


def test_run_py_plays_a_cut_file_and_says_where_it_ends(cut_videos, tmp_path):
    path = cut_videos["front"]
    decoded = _decodable(path)
    out = tmp_path / "live.mp4"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--source", str(path), "--avatar", str(PORTRAIT),
                             "--no-preview", "--no-vcam", "--fast", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"truncated at frame {decoded}" in result.stderr and str(path) in result.stderr
    assert _decodable(out) > 0
