"""avatarcam.publisher: cadence, repeats, latest-wins, failures and reopening, through pyvirtualcam's real Camera."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest

from avatarcam.errors import DeviceError
from avatarcam.publisher import BLACK_LEVEL, Publisher
from avatarcam.vcam import VirtualCameraSink

try:
    from xvfb_util import CameraRecorder, frame_crc, recording_backend
except ImportError:  # tests/ imported as a package
    from tests.xvfb_util import CameraRecorder, frame_crc, recording_backend

pytest.importorskip("pyvirtualcam")

WIDTH, HEIGHT, FPS = 320, 240, 30.0


def solid(value: int) -> np.ndarray:
    frame = np.full((HEIGHT, WIDTH, 3), value, np.uint8)
    frame[0, 0] = (value // 2, value // 3, value)  # not flat: a wrong channel order would change the checksum
    return frame


@pytest.fixture
def recorder():
    recorder = CameraRecorder()
    with recording_backend("facemimic-test-publisher", recorder):
        yield recorder


@pytest.fixture
def sink(recorder):
    sink = VirtualCameraSink(backend="facemimic-test-publisher", width=WIDTH, height=HEIGHT, fps=FPS)
    sink.open()
    yield sink
    sink.close()


def wait_for(predicate, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def assert_never_black(recorder: CameraRecorder) -> None:
    frames = recorder.snapshot()
    assert frames, "nothing was sent"
    dark = [i for i, f in enumerate(frames) if f.max_value <= BLACK_LEVEL]
    assert not dark, f"black frames sent at positions {dark[:10]}"


def test_cadence_first_frame_and_repeats_through_real_camera(recorder, sink) -> None:
    neutral, generated = solid(90), solid(180)
    publisher = Publisher(sink, fps=FPS, first_frame_bgr=neutral)
    start = time.monotonic()
    publisher.start()
    try:
        # The neutral avatar goes out at once, before any generated frame.
        assert wait_for(lambda: len(recorder.snapshot()) >= 1, 1.0)
        assert recorder.snapshot()[0].time_s - start < 0.1
        time.sleep(0.3)
        assert publisher.submit(generated)
        time.sleep(1.0)  # then the producer stalls: the last good frame must repeat
        stats = publisher.stats()
    finally:
        publisher.stop()
    assert not publisher.is_running
    frames = recorder.snapshot()
    assert_never_black(recorder)
    assert all(f.size == WIDTH * HEIGHT * 3 for f in frames)
    window = [f.time_s for f in frames if start + 0.2 <= f.time_s < start + 1.2]
    assert 26 <= len(window) <= 34, f"{len(window)} frames in 1 s at {FPS} fps"
    intervals = np.diff([f.time_s for f in frames[2:]])
    assert abs(statistics.median(intervals) - 1 / FPS) < 0.006
    assert 25 <= stats.measured_fps <= 35
    crcs = [f.crc for f in frames]
    assert crcs[0] == frame_crc(neutral)
    switch = crcs.index(frame_crc(generated))
    assert set(crcs[:switch]) == {frame_crc(neutral)} and set(crcs[switch:]) == {frame_crc(generated)}
    assert len(crcs) - switch >= 25  # ~1 s of stall filled with repeats of the generated frame
    assert stats.repeats == len(crcs) - 2  # everything except the first frame and the one fresh frame
    assert stats.frames_sent == len(crcs) and stats.send_errors == 0 and stats.seconds_since_new_frame > 0.9
    publisher.raise_if_failed()


def test_latest_wins_and_black_frames_are_refused(recorder, sink) -> None:
    publisher = Publisher(sink, fps=FPS, first_frame_bgr=solid(90))
    with publisher:
        for value in (100, 110, 120):  # faster than the cadence: only the newest survives
            assert publisher.submit(solid(value))
        assert not publisher.submit(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
        assert not publisher.submit(solid(BLACK_LEVEL))
        time.sleep(0.2)
    crcs = [f.crc for f in recorder.snapshot()]
    assert crcs[-1] == frame_crc(solid(120))
    assert frame_crc(solid(110)) not in crcs
    stats = publisher.stats()
    assert stats.dropped >= 1 and stats.rejected == 2
    assert_never_black(recorder)


def test_submit_checks_the_frame_contract(sink) -> None:
    publisher = Publisher(sink, fps=FPS, first_frame_bgr=solid(90))
    with pytest.raises(ValueError, match=r"expected \(240, 320, 3\) uint8 BGR"):
        publisher.submit(np.zeros((720, 1280, 3), np.uint8))
    with pytest.raises(ValueError, match="black"):
        Publisher(sink, fps=FPS, first_frame_bgr=np.zeros((HEIGHT, WIDTH, 3), np.uint8))


def test_a_send_that_raises_once_does_not_kill_the_publisher(recorder, sink, caplog) -> None:
    publisher = Publisher(sink, fps=FPS, first_frame_bgr=solid(90))
    with publisher:
        assert wait_for(lambda: len(recorder.snapshot()) >= 3)
        recorder.fail_sends = 1
        before = len(recorder.snapshot())
        assert wait_for(lambda: len(recorder.snapshot()) >= before + 5)
        assert publisher.is_running
    assert publisher.send_errors == 1 and publisher.reopens == 0
    assert "Virtual camera send failed" in caplog.text and "test: write failed" in caplog.text
    publisher.raise_if_failed()
    assert_never_black(recorder)


def test_a_sink_that_keeps_failing_is_reopened_with_backoff(recorder, sink) -> None:
    publisher = Publisher(sink, fps=FPS, first_frame_bgr=solid(90), reopen_after_failures=3,
                          reopen_backoff_s=(0.02, 0.1))
    with publisher:
        assert wait_for(lambda: len(recorder.snapshot()) >= 2)
        with recorder.lock:
            recorder.fail_sends = 5  # three in a row trigger the reopen; two more fail on the new device
            recorder.fail_opens = 2  # and the device needs three attempts to come back
        before = len(recorder.snapshot())
        assert wait_for(lambda: len(recorder.snapshot()) >= before + 5, 5.0)
    assert publisher.reopens == 1 and publisher.send_errors == 5
    assert len(recorder.opened) == 2 and recorder.closed >= 1
    publisher.raise_if_failed()
    assert_never_black(recorder)


def test_a_thread_failure_reaches_the_owner(recorder, sink) -> None:
    publisher = Publisher(sink, fps=FPS, first_frame_bgr=solid(90), reopen_after_failures=2,
                          reopen_backoff_s=(0.01, 0.02), max_reopen_attempts=2)
    with recorder.lock:
        recorder.fail_sends = 10**6
        recorder.fail_opens = 10**6
    publisher.start()
    assert wait_for(lambda: not publisher.is_running, 3.0)
    with pytest.raises(DeviceError, match=r"(?s)could not be reopened after 2 attempt\(s\).*the device vanished"):
        publisher.raise_if_failed()
    publisher.stop()  # idempotent after the thread ended
    publisher.stop()


class PlainSink:
    """A sink without sleep_until_next_frame: the publisher paces itself."""

    width, height, fps = WIDTH, HEIGHT, FPS

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def open(self) -> PlainSink:
        return self

    def send(self, frame_bgr: np.ndarray) -> None:
        assert frame_bgr.max() > BLACK_LEVEL
        with self.lock:
            self.times.append(time.monotonic())

    def close(self) -> None:
        pass


def test_own_clock_cadence_without_pyvirtualcam_pacing() -> None:
    sink = PlainSink()
    publisher = Publisher(sink, fps=25, first_frame_bgr=solid(90))
    with publisher:
        time.sleep(1.1)
    with sink.lock:
        times = list(sink.times)
    in_window = [t for t in times if times[0] + 0.05 <= t < times[0] + 1.05]
    assert 22 <= len(in_window) <= 28
    assert abs(statistics.median(np.diff(times)) - 0.04) < 0.006
