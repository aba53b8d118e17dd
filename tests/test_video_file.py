"""Recordings (issue 12, new-user trial): an .mp4 is H.264 (avc1), which browsers play, not OpenCV's mp4v; when
PyAV cannot write H.264 the fallback says which codec it wrote."""

from __future__ import annotations

import logging
import sys

import av
import numpy as np
import pytest

from avatarcam.sinks.video_file import VideoFileSink, open_writer


def _frames(count: int, width: int, height: int):
    for i in range(count):
        frame = np.full((height, width, 3), 40, np.uint8)
        frame[:, : (i * 7) % width] = (20, 180, 240)  # a moving edge, so frames differ
        yield frame


def _probe(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
        return stream.codec_context.name, stream.codec_context.codec_tag, frames, float(stream.average_rate)


def test_mp4_recording_is_h264_with_every_frame(tmp_path):
    path = tmp_path / "rec.mp4"
    sink = VideoFileSink(path, width=320, height=240, fps=30.0, clock=lambda: 0.0).open()  # frames on time
    for frame in _frames(45, 320, 240):
        sink.send(frame)
    sink.close()
    sink.close()  # idempotent
    codec, tag, frames, rate = _probe(path)
    assert codec == "h264" and tag == "avc1", (codec, tag)
    assert sink.codec.startswith("H.264")
    assert len(frames) == 45 and frames[0].shape == (240, 320, 3)
    assert rate == 30.0
    # Lossy, but the picture is there: the last frame's edge sits where it was drawn.
    expected = next(f for i, f in enumerate(_frames(45, 320, 240)) if i == 44)
    assert np.abs(frames[-1].astype(int) - expected.astype(int)).mean() < 6


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_live_recording_keeps_the_wall_clock_when_frames_come_late(tmp_path, suffix):
    """On a busy machine the publisher falls behind and restarts its schedule: the recording fills each missed tick
    with the frame, so it lasts as long as the run. (Before: 174 frames for a 7.5 s run at 30 fps, a 5.8 s file.)"""
    now = [0.0]
    path = tmp_path / f"rec{suffix}"
    sink = VideoFileSink(path, width=64, height=64, fps=30.0, clock=lambda: now[0]).open()
    frames = list(_frames(4, 64, 64))
    for frame, at_s in zip(frames, (0.0, 1 / 30, 0.2, 0.2 + 1 / 30)):  # the third frame comes 5 ticks late
        now[0] = at_s
        sink.send(frame)
    sink.close()
    _, _, written, _ = _probe(path)
    assert sink.frames_written == len(written) == 8  # ticks 0..7: 1 + 1 + (6 - 2 + 1) + 1
    means = [round(float(f.mean()), 1) for f in written]
    assert means[2:7] == [means[2]] * 5 and means[1] != means[2] and means[7] != means[2]  # the late frame fills the gap


def test_odd_sized_frames_are_cropped_to_even_sides(tmp_path):
    writer = open_writer(tmp_path / "sbs.mp4", 25.0, (513, 255))
    for frame in _frames(5, 513, 255):
        writer.write(frame)
    writer.release()
    codec, _, frames, _ = _probe(tmp_path / "sbs.mp4")
    assert codec == "h264" and len(frames) == 5 and frames[0].shape == (254, 512, 3)


def test_without_pyav_the_fallback_says_which_codec(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError, as on a machine without it
    path = tmp_path / "rec.mp4"
    with caplog.at_level(logging.WARNING, logger="avatarcam.sinks.video_file"):
        sink = VideoFileSink(path, width=64, height=64, fps=10.0, clock=lambda: 0.0).open()
    for frame in _frames(3, 64, 64):
        sink.send(frame)
    sink.close()
    assert sink.codec == "MPEG-4 part 2 (mp4v)"
    assert "rec.mp4" in caplog.text and "mp4v" in caplog.text and "H.264 is not available" in caplog.text
    monkeypatch.delitem(sys.modules, "av")
    codec, _, frames, _ = _probe(path)
    assert codec == "mpeg4" and len(frames) == 3


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_an_output_path_that_cannot_be_a_video_file_is_named_with_the_fix(tmp_path, where):
    """The new-user trial got PyAV's IsADirectoryError and a FileExistsError traceback from render.py and run.py."""
    from avatarcam.errors import DeviceError
    from avatarcam.sinks.video_file import open_writer

    (tmp_path / "a_folder.mp4").mkdir()
    (tmp_path / "notes.png").write_text("x")
    path = tmp_path / "a_folder.mp4" if where == "folder" else tmp_path / "notes.png" / "x.mp4"
    with pytest.raises(DeviceError) as info:
        open_writer(path, 25.0, (64, 64))
    message = str(info.value)
    assert str(path) in message
    assert ("it is a folder" in message) if where == "folder" else ("is a file, not a folder" in message)
