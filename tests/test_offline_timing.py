"""Driver videos as users have them (issue 12): variable or mislabelled frame rates, headers without a true frame
count, and files that open but decode nothing. The videos are written here with PyAV (real H.264/VP8 encoders)."""

from __future__ import annotations

import fractions
import random
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from avatarcam.errors import DeviceError, FaceMimicError
from tests.conftest import D12, PORTRAIT, ROOT

av = pytest.importorskip("av", reason="PyAV writes the test videos: pip install -r requirements-dev.txt")


def _sections(config):
    """The generator and motion sections build_reenactor takes."""
    return config.generator, config.motion


def _d12_frames(count: int, size: int = 192) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(D12))
    frames = []
    for _ in range(count):
        ok, frame = capture.read()
        assert ok
        frames.append(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA))
    capture.release()
    return frames


def write_video(path, frames, times_s, *, codec: str, header_fps: int, options: dict | None = None) -> None:
    """Encode frames with the given presentation times (seconds) and a header frame rate that may disagree."""
    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream(codec, rate=header_fps)
    stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
    stream.pix_fmt = "yuv420p"
    stream.time_base = fractions.Fraction(1, 1000)
    stream.codec_context.time_base = fractions.Fraction(1, 1000)  # exact timestamps, not rounded to 1/header_fps
    for image, t in zip(frames, times_s):
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = int(round(t * 1000))
        frame.time_base = stream.time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def test_driver_timing_rules():
    from avatarcam.offline import driver_timing

    constant = driver_timing([i / 25 for i in range(50)], nominal_fps=30.0)  # header says 30, frames say 25
    assert constant.fps == 25.0 and list(constant.source_index) == list(range(50))
    variable = driver_timing([i / 30 for i in range(30)] + [1.0 + i / 10 for i in range(10)], nominal_fps=30.0)
    assert variable.fps == 30.0 and len(variable.source_index) == 60 and variable.duration_s == pytest.approx(2.0)
    assert list(variable.source_index[:30]) == list(range(30))
    assert list(variable.source_index[30:36]) == [30, 30, 30, 31, 31, 31]  # each 0.1 s frame shown for 0.1 s
    no_stamps = driver_timing([0.0] * 5, nominal_fps=24.0)  # a backend without timestamps: the header rate
    assert no_stamps.fps == 24.0 and len(no_stamps.source_index) == 5
    with pytest.raises(FaceMimicError):
        driver_timing([], nominal_fps=25.0)


@pytest.fixture(scope="module")
def mesh_setup(model_path):
    from avatarcam.avatars import load_avatar
    from avatarcam.config import load_config
    from avatarcam.generators import build_reenactor
    from avatarcam.landmarks import FaceLandmarker

    reenactor = build_reenactor(*_sections(load_config(None, {"generator.canvas_size": 256})))
    with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
        avatar = load_avatar(PORTRAIT, landmarker, reenactor.canvas_size)
    return reenactor, avatar, reenactor.prepare(avatar)


def _render(mesh_setup, model_path, driver, out):
    from avatarcam.offline import render_video

    reenactor, avatar, prepared = mesh_setup
    return render_video(str(driver), avatar, prepared, reenactor, out, model_path=model_path, sbs=True,
                        progress=False)


def _read_all(path) -> tuple[list[np.ndarray], float]:
    from avatarcam.capture import file_info, iter_frames

    return list(iter_frames(str(path))), file_info(str(path))[1]


def test_variable_frame_rate_driver_keeps_its_duration(tmp_path, mesh_setup, model_path):
    # A phone/browser recording: 1 s at 30 fps, then 1 s at 10 fps; the WebM header says 30 fps and a wrong count.
    frames = _d12_frames(40)
    times = [i / 30 for i in range(30)] + [1.0 + i / 10 for i in range(10)]
    driver = tmp_path / "vfr.webm"
    write_video(driver, frames, times, codec="libvpx", header_fps=30)
    header_count = int(cv2.VideoCapture(str(driver)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert header_count != 40  # the container really does not know its frame count
    report = _render(mesh_setup, model_path, driver, tmp_path / "out.mkv")
    out, fps = _read_all(tmp_path / "out.mkv")
    assert fps == pytest.approx(30.0) and len(out) == report.frames == 60  # 2.0 s, as long as the driver
    assert report.driver_frames == 40
    # Lossless output: in the 10 fps second each driver frame is held for three output frames.
    driver_half = [f[:, :192] for f in out]
    assert np.array_equal(driver_half[30], driver_half[32]) and not np.array_equal(driver_half[32], driver_half[33])


def test_mislabelled_constant_rate_driver_plays_at_its_true_rate(tmp_path, mesh_setup, model_path):
    frames = _d12_frames(50)
    driver = tmp_path / "mislabelled.webm"
    write_video(driver, frames, [i / 25 for i in range(50)], codec="libvpx", header_fps=30)
    assert cv2.VideoCapture(str(driver)).get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)  # the header's claim
    report = _render(mesh_setup, model_path, driver, tmp_path / "out.mkv")
    out, fps = _read_all(tmp_path / "out.mkv")
    assert fps == pytest.approx(25.0) and len(out) == report.frames == 50  # frame t from driver frame t, 2.0 s


def _broken_videos(tmp_path) -> dict[str, object]:
    """An interrupted download (index at the front, data cut off) and a file whose frame data is garbage."""
    good = tmp_path / "good.mp4"
    write_video(good, _d12_frames(25, 128), [i / 25 for i in range(25)], codec="libx264", header_fps=25,
                options={"movflags": "faststart"})
    data = good.read_bytes()
    payload = data.find(b"mdat") + 8
    truncated = tmp_path / "interrupted_download.mp4"
    truncated.write_bytes(data[:payload + 200])
    rng = random.Random(3)
    garbage = tmp_path / "undecodable_frames.mp4"
    garbage.write_bytes(data[:payload] + bytes(rng.randrange(256) for _ in range(len(data) - payload)))
    for path in (truncated, garbage):
        assert cv2.VideoCapture(str(path)).isOpened()  # they open: the failure is in decoding
    return {"truncated": truncated, "garbage": garbage}


def test_video_that_decodes_nothing_is_a_clear_error_offline(tmp_path, mesh_setup, model_path):
    for path in _broken_videos(tmp_path).values():
        with pytest.raises(DeviceError, match="opens but no frame could be decoded.*re-encode"):
            _render(mesh_setup, model_path, path, tmp_path / "out.mp4")
        result = subprocess.run([sys.executable, str(ROOT / "tools" / "render.py"), "--driver", str(path), "--avatar",
                                 str(PORTRAIT), "--out", str(tmp_path / "cli.mp4"), "--quiet"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "no frame could be decoded" in result.stderr
        assert "Traceback" not in result.stderr


def test_video_that_decodes_nothing_fails_run_py(tmp_path):
    path = _broken_videos(tmp_path)["truncated"]
    out = tmp_path / "live.mp4"
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--source", str(path), "--no-preview", "--no-vcam",
                             "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0, result.stdout
    assert "no frame could be decoded" in result.stderr and "rendered 0 frames" not in result.stdout
    assert not out.exists()  # nothing opened before the check


def test_live_file_source_plays_a_variable_rate_clip_at_its_true_speed(tmp_path):
    from avatarcam.capture import CaptureThread, SourceSpec

    driver = tmp_path / "vfr.webm"
    # 0.5 s at 30 fps, then 1.5 s at 10 fps: 2.0 s in all; read at the header's 30 fps it would take 1.0 s.
    times = [i / 30 for i in range(15)] + [0.5 + i / 10 for i in range(15)]
    write_video(driver, _d12_frames(30, 128), times, codec="libvpx", header_fps=30)
    capture = CaptureThread(SourceSpec.parse(str(driver)), loop=False).start()
    start = time.perf_counter()
    assert capture.ended.wait(10)
    elapsed = time.perf_counter() - start
    capture.stop()
    assert capture.frames_read == 30
    assert 1.7 < elapsed < 2.6, f"played in {elapsed:.2f} s"
