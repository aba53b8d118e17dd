"""The live pipeline with real threads, real decoding, real MediaPipe and the real generator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from avatarcam.generators import build_reenactor
from avatarcam.capture import CaptureThread, SourceSpec
from avatarcam.commands import Command
from avatarcam.config import load_config
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import Calibrator
from avatarcam.pipeline import AvatarStore, LandmarkWorker, RenderWorker
from tests.conftest import D12, PORTRAIT, ROOT


@pytest.fixture(scope="module")
def live(model_path):
    """A running capture -> landmarks -> render pipeline on the d12 clip with the shipped avatars."""
    config = load_config(None)
    reenactor = build_reenactor(config.generator, config.motion)
    store = AvatarStore(ROOT / "avatars", lambda: FaceLandmarker(model_path=model_path, mode="image"), reenactor,
                        extra=[PORTRAIT])
    store.load_first(PORTRAIT)
    store.reload()
    capture = CaptureThread(SourceSpec.parse(str(D12)), loop=True)
    landmarker = FaceLandmarker(model_path=model_path, mode="video")
    landmarks = LandmarkWorker(capture.frames, landmarker)
    worker = RenderWorker(landmarks.observed, reenactor, store, Calibrator(window_s=0.2, strict=False))
    for part in (capture, landmarks, worker):
        part.start()
    assert store.loaded.wait(60)  # measure the steady state, after the background preparation
    yield {"worker": worker, "store": store, "capture": capture, "landmarks": landmarks}
    for part in (capture, landmarks, worker):
        part.stop()
    landmarker.close()


def _next(worker, seq, timeout_s=3.0):
    seq, rendered = worker.rendered.get(seq, timeout_s=timeout_s)
    assert rendered is not None, "the pipeline stopped producing frames"
    return seq, rendered


def test_frames_flow_calibrate_and_use_two_buffers(live):
    worker = live["worker"]
    seq, first = _next(worker, 0)
    buffers, latencies = set(), []
    # 50 frames in a row (how fast they come is the benchmark's business: tools/bench.py reports fps and latency;
    # a timed bound here would fail on a busy machine rather than on a slow pipeline).
    for _ in range(50):
        seq, rendered = _next(worker, seq)
        buffers.add(id(rendered.canvas_bgr))
        latencies.append(rendered.latency_ms)
        assert rendered.canvas_bgr.shape == (512, 512, 3)
        assert rendered.canvas_bgr.max() > 50  # never a black frame
    assert worker.calibrated and rendered.calibration == "calibrated"
    assert len(buffers) == 2  # double buffering: two canvases alternate, nothing new per frame
    assert all(0 < ms < 60_000 for ms in latencies)  # measured from the capture of the driving frame
    assert set(rendered.stage_ms) >= {"decode", "landmarks", "motion", "generate"}


def test_avatar_switch_is_fast_and_keeps_the_neutral(live):
    worker, store = live["worker"], live["store"]
    assert store.loaded.wait(30)
    names = [a.name for a, _ in store.entries()]
    assert names[0] == "lp_s42" and "astronaut" in names
    seq, _ = _next(worker, 0)
    deadline = time.time() + 5
    while not worker.calibrated and time.time() < deadline:
        seq, _ = _next(worker, seq)
    worker.submit(Command.NEXT_AVATAR)
    for _ in range(5):
        seq, rendered = _next(worker, seq)
        if rendered.avatar_name != "lp_s42":
            break
    assert rendered.avatar_name == names[1]
    assert worker.calibrated  # switching avatars keeps the driver's neutral pose
    # The switch took effect on a frame rendered after the command (its time is measured by tools/bench.py).
    assert worker.switch_ms and worker.switch_ms[-1] > 0
    worker.submit(Command.AVATAR_1)
    for _ in range(5):
        seq, rendered = _next(worker, seq)
    assert rendered.avatar_name == "lp_s42"


def test_recalibrate_passthrough_and_freeze(live):
    worker = live["worker"]
    seq, rendered = _next(worker, 0)
    worker.submit(Command.RECALIBRATE)
    seq, rendered = _next(worker, seq)
    seq, rendered = _next(worker, seq)
    assert rendered.calibration != "calibrated" or worker.calibrated
    worker.submit(Command.PASSTHROUGH)
    for _ in range(3):
        seq, rendered = _next(worker, seq)
    assert worker.passthrough
    # Passthrough shows the real camera picture: compare with the driver frame it came from.
    import cv2

    expected = cv2.resize(rendered.frame.image_bgr, (512, 512), interpolation=cv2.INTER_AREA)
    assert np.abs(rendered.canvas_bgr.astype(int) - expected.astype(int)).mean() < 2
    worker.submit(Command.PASSTHROUGH)
    worker.submit(Command.FREEZE)
    time.sleep(0.3)
    count = worker.frames_rendered
    time.sleep(0.4)
    assert worker.frames_rendered == count  # frozen: the outputs keep the last frame
    worker.submit(Command.FREEZE)
    _next(worker, worker.rendered.peek()[0])


def test_a_failing_frame_does_not_stop_the_feed(live, monkeypatch):
    worker = live["worker"]
    seq, _ = _next(worker, 0)
    original = worker.reenactor.render
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("simulated failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(worker.reenactor, "render", flaky)
    for _ in range(10):
        seq, rendered = _next(worker, seq)
    assert worker.render_failures >= 2
    worker.raise_if_failed()  # per-frame failures are counted, not fatal


def test_a_reconnecting_runtime_never_stops_the_feed(live, monkeypatch):
    """A remote runtime that is away (EngineUnavailable, e.g. a Triton server restarting) fails frames for as long as
    it takes; unlike other errors those do not count towards the limit of failures in a row, and frames flow again
    when it is back. (Before: the 100th such frame, about 4 s at 25 fps, stopped the render thread.)"""
    import avatarcam.pipeline as pipeline
    from avatarcam.errors import EngineUnavailable

    worker = live["worker"]
    seq, _ = _next(worker, 0)
    monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_FAILURES", 3)
    original = worker.reenactor.render
    calls = {"n": 0}
    away_for = 12  # four times the (lowered) limit

    def away_then_back(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= away_for:
            raise EngineUnavailable("cannot reach the Triton server [retry 1 in 0.5 s]")
        return original(*args, **kwargs)

    monkeypatch.setattr(worker.reenactor, "render", away_then_back)
    deadline = time.monotonic() + 10
    while calls["n"] <= away_for and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls["n"] > away_for, "the render thread stopped asking the runtime"
    seq, rendered = _next(worker, seq)  # frames flow again
    worker.raise_if_failed()
    assert worker.render_failures >= away_for
    assert pipeline.counts_towards_failure_limit(RuntimeError("x"))  # any other error still counts
