"""The outputs stage: every subscriber gets the rendered stream by its buffering policy, reports its own fps, and a
subscriber that fails does not stop the others."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from avatarcam.outputs import Buffering, OutputStage, PublishedOutput, StatusLine
from avatarcam.pipeline import Rendered

SIZE = 64


class ListSink:
    """A FrameSink (publisher.FrameSink's public members) that keeps what it is sent."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.closed = False

    width = height = SIZE

    def open(self) -> ListSink:
        return self

    def send(self, frame_bgr: np.ndarray) -> None:
        with self.lock:
            self.frames.append(frame_bgr.copy())

    def close(self) -> None:
        self.closed = True


class Exploding:
    """A PUMP output whose window breaks on the third frame, and whose stop() fails too."""

    name = "exploding"
    buffering = Buffering.PUMP

    def __init__(self) -> None:
        self.pushed = 0

    def start(self, first_canvas_bgr: np.ndarray) -> None:
        pass

    def push(self, rendered: Rendered) -> None:
        self.pushed += 1
        if self.pushed == 3:
            raise OSError("the window server went away")

    fps = None
    failure = None

    def stop(self) -> None:
        raise OSError("already gone")


class DiesInItsThread(PublishedOutput):
    """A publisher-fed output whose thread dies (its failure is reported by the next check)."""

    def __init__(self) -> None:
        super().__init__("recorder", ListSink(), fps=30)
        self.dead = False

    @property
    def failure(self) -> str | None:
        return "recorder-publisher stopped: DeviceError: disk full" if self.dead else None


def rendered(value: int, seq: int) -> Rendered:
    return Rendered(canvas_bgr=np.full((SIZE, SIZE, 3), value, np.uint8), frame=None, face=None, stage_ms={},
                    latency_ms=5.0, avatar_name="a", calibration="calibrated", seq=seq)


def test_a_failing_subscriber_does_not_stop_the_others_and_each_reports_fps(caplog):
    stage = OutputStage()
    camera = stage.subscribe(PublishedOutput("vcam", ListSink(), fps=30))
    exploding = stage.subscribe(Exploding())
    recorder = stage.subscribe(DiesInItsThread())
    with pytest.raises(ValueError, match="'vcam' is already subscribed"):
        stage.subscribe(PublishedOutput("vcam", ListSink(), fps=30))
    stage.start(np.full((SIZE, SIZE, 3), 100, np.uint8))
    try:
        with caplog.at_level(logging.ERROR, logger="avatarcam.outputs"):
            for seq in range(1, 31):
                frame = rendered(100 + seq, seq)
                stage.publish(frame)
                stage.pump(frame)
                if seq == 10:
                    recorder.dead = True
                assert not stage.all_failed
                failures = stage.check()
                time.sleep(1 / 30)
    finally:
        stage.stop()  # the exploding output's stop() raises; the others are still stopped
    assert exploding.pushed == 3, "a failed output is detached, not driven again"
    assert failures == ["exploding failed: OSError: the window server went away",
                        "recorder-publisher stopped: DeviceError: disk full"]
    assert "output exploding: exploding failed: OSError" in caplog.text
    reports = {r.name: r for r in stage.reports()}
    assert reports["vcam"].failure is None and reports["vcam"].buffering is Buffering.LATEST
    assert reports["vcam"].fps is not None and 10 < reports["vcam"].fps < 60
    assert reports["exploding"].failure is not None and reports["recorder"].failure is not None
    sent = camera.sink.frames
    assert sent[0].max() == 100 and max(int(f.max()) for f in sent) >= 125  # kept getting frames after the failures
    assert camera.sink.closed and recorder.sink.closed
    assert not camera.publisher.is_running


def test_every_output_failing_is_reported_as_such():
    stage = OutputStage()
    stage.subscribe(Exploding())
    stage.start(np.zeros((SIZE, SIZE, 3), np.uint8))
    for seq in range(1, 4):
        stage.pump(rendered(50, seq))
    stage.check()
    assert stage.all_failed


def test_the_status_line_shows_fps_of_the_camera_flags_and_failures():
    stage = OutputStage()
    stage.subscribe(PublishedOutput("vcam", ListSink(), fps=30))
    stats = [True]
    status = StatusLine(outputs=stage, flags=lambda: (False, True), show_stats=lambda: stats[0])
    status.failures.append("capture stopped: DeviceError: camera 0 unplugged")
    line = status(rendered(80, 1)).text()
    assert line == ("a | calibrated | output 0.0 fps | latency 5 ms | FROZEN no face | capture stopped: DeviceError: "
                    "camera 0 unplugged")
    stats[0] = False
    assert status(rendered(80, 1)).text() == ("a | calibrated | FROZEN no face | capture stopped: DeviceError: "
                                              "camera 0 unplugged")
