"""Frame sources: parsing, real video decoding, pacing, latest-wins hand-off and camera failure."""

from __future__ import annotations

import time

import numpy as np
import pytest

from avatarcam.capture import CaptureThread, SourceSpec, file_info, iter_frames, probe_camera
from avatarcam.errors import DeviceError
from avatarcam.handoff import LatestSlot
from tests.conftest import D12


def test_source_parsing(tmp_path):
    assert SourceSpec.parse("0") == SourceSpec("camera", 0)
    assert SourceSpec.parse(2) == SourceSpec("camera", 2)
    assert SourceSpec.parse("rtsp://cam.local/stream").kind == "url"
    assert SourceSpec.parse(str(D12)) == SourceSpec("file", str(D12))
    with pytest.raises(DeviceError, match="neither a camera index.*--source 0"):
        SourceSpec.parse(str(tmp_path / "missing.mp4"))


def test_decodes_every_frame_of_a_real_clip():
    count, fps, size = file_info(str(D12))
    frames = list(iter_frames(str(D12)))
    assert (count, fps, size) == (183, 25.0, (512, 512))
    assert len(frames) == 183
    assert all(f.shape == (512, 512, 3) and f.dtype == np.uint8 for f in frames[:3])


def test_paced_file_runs_at_its_own_fps_and_ends():
    capture = CaptureThread(SourceSpec.parse(str(D12)), loop=False, max_frames=25).start()
    start = time.perf_counter()
    assert capture.ended.wait(5.0)
    elapsed = time.perf_counter() - start
    capture.stop()
    assert capture.frames_read == 25
    assert 0.8 < elapsed < 2.0  # 25 frames at 25 fps take about one second


def test_unpaced_file_keeps_only_the_newest_frame():
    capture = CaptureThread(SourceSpec.parse(str(D12)), pace=False, loop=False).start()
    assert capture.ended.wait(10.0)
    seq, frame = capture.frames.get(0, timeout_s=1.0)
    capture.stop()
    assert frame.index == 182  # the consumer sees the latest, not a queue of old frames
    assert capture.frames.dropped == 182


def test_latest_slot_drop_policy():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    slot.put(2)
    seq, item = slot.get(0, timeout_s=0.1)
    assert item == 2 and slot.dropped == 1
    assert slot.get(seq, timeout_s=0.05) == (seq, None)  # nothing newer: times out


def test_missing_camera_is_retried_with_a_clear_status():
    # No webcam exists on the test machine: index 9 never opens.
    assert not probe_camera(9)
    capture = CaptureThread(SourceSpec("camera", 9), retry_s=0.05).start()
    deadline = time.time() + 3
    while "retrying" not in capture.status and time.time() < deadline:
        time.sleep(0.02)
    capture.stop()
    assert "camera 9 could not be opened" in capture.status and "retrying" in capture.status
    assert not capture.ended.is_set()  # a camera keeps being retried; only files end
