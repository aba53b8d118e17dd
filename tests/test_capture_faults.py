"""Cameras that misbehave (issue 12): stalls, addresses that never answer, black pictures, a resolution change on
reconnect, /dev/videoN paths, and a fault-injecting source through the whole live pipeline. Network cameras are
real MJPEG streams from tests/mjpeg_server.py read by OpenCV's FFmpeg backend."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from avatarcam.capture import CaptureThread, SourceSpec, open_capture
from avatarcam.config import load_config
from avatarcam.errors import DeviceError
from avatarcam.generators import build_reenactor
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import Calibrator
from avatarcam.pipeline import AvatarStore, LandmarkWorker, RenderWorker
from tests.conftest import D12, PORTRAIT, ROOT
from tests.mjpeg_server import MjpegServer


def _sections(config):
    """The generator and motion sections build_reenactor takes."""
    return config.generator, config.motion


def _d12(count: int = 50) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(D12))
    frames = [capture.read()[1] for _ in range(count)]
    capture.release()
    return frames


def _on_canvas(face: np.ndarray, width: int, height: int, picture: int) -> np.ndarray:
    """`face` scaled to picture x picture, centred on a mid-grey width x height frame (a webcam's view)."""
    canvas = np.full((height, width, 3), 90, np.uint8)
    small = cv2.resize(face, (picture, picture), interpolation=cv2.INTER_AREA)
    y0, x0 = (height - picture) // 2, (width - picture) // 2
    canvas[y0:y0 + picture, x0:x0 + picture] = small
    return canvas


def _wait(predicate, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def test_device_paths_are_cameras():
    assert SourceSpec.parse("/dev/video2") == SourceSpec("camera", "/dev/video2")
    assert SourceSpec.parse("/dev/video2").live


def test_address_that_never_answers_fails_fast():
    with MjpegServer([], answer=False) as server:
        start = time.monotonic()
        with pytest.raises(DeviceError) as info:
            open_capture(SourceSpec.parse(server.url))
        assert time.monotonic() - start < 10.0  # OpenCV's default waits about 30 s
        assert "no answer within 5 s" in str(info.value)


def test_self_test_of_an_address_that_never_answers_is_quick():
    from avatarcam.selftest import check_camera

    with MjpegServer([], answer=False) as server:
        start = time.monotonic()
        result, _ = check_camera(load_config(None, {"capture.source": server.url}))
        assert not result.ok and time.monotonic() - start < 10.0


def test_stalled_stream_is_reported_and_reconnected():
    face = _on_canvas(_d12(1)[0], 320, 240, 200)
    # Streams 2 s, then keeps the connection open and sends nothing; the next connection streams again.
    with MjpegServer([(2.0, lambda n: face), (30.0, "freeze")], after=[(30.0, lambda n: face)]) as server:
        capture = CaptureThread(SourceSpec.parse(server.url), retry_s=0.2).start()
        try:
            assert _wait(lambda: capture.frames_read > 10, 10.0), capture.status
            assert _wait(lambda: "stalled" in capture.health(), 8.0), "the stall was never reported"
            assert "camera" in capture.health() or server.url in capture.health()
            count = capture.frames_read
            assert _wait(lambda: capture.frames_read > count + 10, 15.0), "never reconnected"
            assert server.connections >= 2 and capture.health() == ""
        finally:
            capture.stop()


def test_black_camera_fails_the_self_test_and_is_reported():
    from avatarcam.selftest import check_camera

    black = np.zeros((240, 320, 3), np.uint8)
    with MjpegServer([(30.0, lambda n: black)], after=[(30.0, lambda n: black)]) as server:
        result, _ = check_camera(load_config(None, {"capture.source": server.url}))
        assert not result.ok and "black picture" in result.detail and "--source" in result.detail
        capture = CaptureThread(SourceSpec.parse(server.url)).start()
        try:
            assert _wait(lambda: "uniform" in capture.health(), 8.0), capture.health()
        finally:
            capture.stop()
    face = _on_canvas(_d12(1)[0], 320, 240, 200)
    with MjpegServer([(30.0, lambda n: face)]) as server:
        result, _ = check_camera(load_config(None, {"capture.source": server.url}))
        assert result.ok, result.detail


@pytest.fixture(scope="module")
def reenactor_and_store(model_path):
    reenactor = build_reenactor(*_sections(load_config(None, {"generator.canvas_size": 256})))
    store = AvatarStore(ROOT / "avatars", lambda: FaceLandmarker(model_path=model_path, mode="image"), reenactor)
    store.load_first(PORTRAIT)
    return reenactor, store


class _Live:
    """Capture -> landmarks -> render on real threads, recording every rendered frame."""

    def __init__(self, capture: CaptureThread, model_path, reenactor_and_store):
        reenactor, store = reenactor_and_store
        reenactor.reset()
        self.capture = capture
        self.landmarker = FaceLandmarker(model_path=model_path, mode="video")
        self.landmarks = LandmarkWorker(capture.frames, self.landmarker)
        self.render = RenderWorker(self.landmarks.observed, reenactor, store, Calibrator(window_s=0.2, strict=False))
        self.records: list[tuple[float, float, bool, np.ndarray]] = []  # done, captured, face?, canvas copy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)

    def _collect(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq, rendered = self.render.rendered.get(seq, timeout_s=0.1)
            if rendered is not None:
                self.records.append((rendered.done_time_s, rendered.frame.capture_time_s, rendered.face is not None,
                                     rendered.canvas_bgr.copy()))

    def __enter__(self) -> _Live:
        for part in (self.capture, self.landmarks, self.render):
            part.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for part in (self.capture, self.landmarks, self.render):
            part.stop()
        self._thread.join(2)
        self.landmarker.close()


def test_camera_back_at_another_resolution_keeps_the_calibration(model_path, reenactor_and_store):
    face = _d12(1)[0]
    before = _on_canvas(face, 640, 360, 360)
    after = _on_canvas(face, 640, 480, 360)  # back after a reconnect at 4:3, the same picture in the middle
    with MjpegServer([(4.0, lambda n: before), (0.1, "hang-up")], after=[(60.0, lambda n: after)]) as server:
        capture = CaptureThread(SourceSpec.parse(server.url), retry_s=0.2)
        with _Live(capture, model_path, reenactor_and_store) as live:
            assert _wait(lambda: server.connections >= 2, 15.0)
            reconnected = time.perf_counter()
            assert _wait(lambda: sum(r[1] > reconnected + 1.0 for r in live.records) >= 10, 20.0)
    at_rest = [r[3] for r in live.records if r[1] < reconnected - 0.5 and r[2]][-5:]
    back = [r[3] for r in live.records if r[1] > reconnected + 1.0 and r[2]][-5:]
    assert at_rest and back
    # The same face at rest before and after: the avatar stays where it was (it used to shift and shrink).
    difference = np.abs(np.mean(back, 0) - np.mean(at_rest, 0)).mean()
    assert difference < 3.0, f"avatar changed by {difference:.1f} grey levels after the resolution change"


class FaultyCamera:
    """A fault-injecting camera: a D12 loop at 25 fps with scripted faults, used through CaptureThread's `opener`.

    Faults: 'unplugged' (reads fail and opening is refused), 'freeze' (reads wait, then time out like FFmpeg's),
    'black' (all-black frames), 'resize' (frames at 1280x720, then 480x480), 'garbage' (bytes that are no
    picture, noise pictures and failed reads in turn).
    """

    def __init__(self, script: list[tuple[float, float, str]]):
        self.frames = [_on_canvas(f, 640, 360, 360) for f in _d12(50)]
        self.script = script
        self.start_s = time.perf_counter()
        self.opens = 0
        self._rng = np.random.default_rng(5)

    def fault(self) -> str:
        t = time.perf_counter() - self.start_s
        return next((kind for start, end, kind in self.script if start <= t < end), "")

    def open(self):
        if self.fault() == "unplugged":
            raise DeviceError("camera 0 could not be opened (unplugged)")
        self.opens += 1
        return _FaultySession(self)

    def frame(self, n: int) -> tuple[bool, np.ndarray | None]:
        kind = self.fault()
        image = self.frames[n % len(self.frames)]
        if kind == "unplugged":
            return False, None
        if kind == "freeze":
            time.sleep(0.5)
            return False, None
        if kind == "black":
            return True, np.zeros_like(image)
        if kind == "resize":
            t = time.perf_counter() - self.start_s
            start = next(s for s, e, k in self.script if k == "resize" and s <= t < e)
            if t - start < 1.0:
                return True, cv2.resize(image, (1280, 720))
            return True, _on_canvas(image[:, 140:500], 480, 480, 360)
        if kind == "garbage":
            choice = n % 3
            if choice == 0:
                return True, self._rng.integers(0, 256, 5000, dtype=np.uint8)  # bytes, not a picture
            if choice == 1:
                return True, self._rng.integers(0, 256, image.shape, dtype=np.uint8)
            return False, None
        return True, image


class _FaultySession:
    """One open 'device' (the VideoSource that CaptureThread reads)."""

    def __init__(self, camera: FaultyCamera):
        self.camera, self.n, self.next_s = camera, 0, time.perf_counter()

    def read(self):
        self.next_s += 1 / 25
        delay = self.next_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            self.next_s = time.perf_counter()
        self.n += 1
        return self.camera.frame(self.n)

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop: int, value: float) -> bool:
        return False

    def release(self) -> None:
        pass


class _RecordingSink:
    """A FrameSink that keeps the send time and mean level of every frame (the virtual camera's view)."""

    def __init__(self):
        self.width, self.height = 256, 256
        self.sent: list[tuple[float, float]] = []

    def open(self):
        return self

    def send(self, frame_bgr: np.ndarray) -> None:
        self.sent.append((time.perf_counter(), float(frame_bgr.mean())))

    def close(self) -> None:
        pass


def test_faulty_camera_never_stops_or_blacks_the_output_and_recovers_within_2_s(model_path, reenactor_and_store):
    from avatarcam.publisher import Publisher

    script = [(3.0, 4.5, "unplugged"), (6.5, 8.0, "freeze"), (10.0, 11.0, "black"), (13.0, 15.0, "resize"),
              (17.0, 18.0, "garbage")]
    camera = FaultyCamera(script)
    capture = CaptureThread(SourceSpec("camera", 0), opener=camera.open, retry_s=0.2, stall_s=1.0)
    sink = _RecordingSink()
    reenactor, store = reenactor_and_store
    publisher = Publisher(sink, fps=30, first_frame_bgr=store.entries()[0][0].canvas_bgr.copy())
    with _Live(capture, model_path, reenactor_and_store) as live:
        publisher.start()
        camera.start_s = time.perf_counter()
        seq = 0
        while time.perf_counter() - camera.start_s < 21.0:
            seq, rendered = live.render.rendered.get(seq, timeout_s=0.05)
            if rendered is not None:
                publisher.submit(rendered.canvas_bgr)
            for part in (live.landmarks, live.render, publisher):
                part.raise_if_failed()
        assert capture.is_running and live.landmarks.error is None and live.render.error is None  # no thread died
        publisher.stop()
    times = np.array([t for t, _ in sink.sent])
    levels = np.array([m for _, m in sink.sent])
    assert np.diff(times).max() < 0.5, "the output stopped"
    assert levels.min() > 20, "a black frame reached the output"
    # Recovery: after every fault, a frame captured after the source came back, with a face, is rendered within 2 s.
    for start, end, kind in script:
        back_s = camera.start_s + end
        recovered = [done for done, captured, face, _ in live.records if captured >= back_s and face]
        assert recovered, f"never recovered from {kind}"
        assert recovered[0] - back_s < 2.0, f"{kind}: recovered after {recovered[0] - back_s:.1f} s"
    assert camera.opens >= 3  # the unplug and the freeze were both reopened
    assert capture.resized_frames > 0 and capture.garbage_frames > 0


def test_vcam_device_given_by_label_is_looked_up_on_linux(tmp_path):
    from avatarcam.vcam import VirtualCameraSink
    from tests.test_vcam import make_sysfs

    sysfs = make_sysfs(tmp_path, {"video0": ("Integrated Camera", False), "video7": ("OBS Cam", True),
                                  "video12": ("FaceMimic Camera", True)})
    plan = VirtualCameraSink(backend="v4l2loopback", device="FaceMimic Camera", sysfs_root=sysfs,
                             system="Linux")._plan(["v4l2loopback"])
    assert plan == [("v4l2loopback", "/dev/video12")]  # it used to be passed on as if it were a path
    path = VirtualCameraSink(backend="v4l2loopback", device="/dev/video7", sysfs_root=sysfs,
                             system="Linux")._plan(["v4l2loopback"])
    assert path == [("v4l2loopback", "/dev/video7")]
    with pytest.raises(DeviceError, match="No Such Label"):
        VirtualCameraSink(backend="v4l2loopback", device="No Such Label", sysfs_root=sysfs,
                          system="Linux")._plan(["v4l2loopback"])
