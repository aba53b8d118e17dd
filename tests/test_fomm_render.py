"""FOMM offline rendering: exact parity of `tools/render.py --no-crop` with the original FOMM code, and crop mode.

The parity fixture (tests/fixtures/fomm/parity.npz) holds the original code's relative-mode animation of its source
image by its four driving frames. Here those frames go through real files (a PNG avatar, an FFV1 video, lossless
both ways), the real CLI and the real offline renderer, and come out as a lossless FFV1 video.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarcam.generators.common.crop import crop_square, face_box
from avatarcam.generators.fomm.reenactor import FommReenactor, FommSettings
from avatarcam.motion import MotionSettings
from avatarcam.offline import render_video
from tests.conftest import D12, ROOT
from tests.tolerances import FOMM_KP_BOUND, FOMM_PREDICTION_BOUND, scaled

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = ROOT / "tests" / "fixtures" / "fomm"
TINY = FIXTURES / "tiny-checkpoint.pth.tar"
# An fp32 port's predictions, in [0, 1] (tests/tolerances.py); uint8 output adds at most half a level of rounding.
PREDICTION_BOUND = FOMM_PREDICTION_BOUND
UINT8_BOUND = 0.5 / 255 + PREDICTION_BOUND


def to_bgr(chw: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB k/255 floats -> (H, W, 3) uint8 BGR, exactly."""
    return np.ascontiguousarray((chw.transpose(1, 2, 0)[..., ::-1] * 255).round().astype(np.uint8))


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_ffv1(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    assert writer.isOpened(), "this OpenCV cannot write FFV1"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def fixture_files(parity, tmp_path_factory) -> tuple[Path, Path]:
    """The fixture's source as a PNG and its driving frames as an FFV1 .mkv, both checked to decode bit-exactly."""
    folder = tmp_path_factory.mktemp("fomm_parity")
    source = folder / "source.png"
    cv2.imwrite(str(source), to_bgr(parity["source"][0]))
    driver = write_ffv1(folder / "driving.mkv", [to_bgr(f) for f in parity["driving"]])
    decoded = read_video(driver)
    assert len(decoded) == 4
    for got, want in zip(decoded, parity["driving"]):
        rgb = got[..., ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        assert np.array_equal(rgb, want), "the lossless driver route is not bit-exact"
    assert np.array_equal(cv2.imread(str(source))[..., ::-1].transpose(2, 0, 1) / np.float32(255), parity["source"][0])
    return source, driver


def resized_reference(prediction: np.ndarray, size: int) -> np.ndarray:
    """The reference prediction as the canvas shows it: BGR, bilinear to size (a convex combination of pixels)."""
    bgr = np.ascontiguousarray(prediction.transpose(1, 2, 0)[..., ::-1])
    return bgr if bgr.shape[0] == size else cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)


def test_cli_no_crop_render_is_the_original_relative_animation(parity, fixture_files, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import render as render_tool
    finally:
        sys.path.remove(str(ROOT / "tools"))
    source, driver = fixture_files
    out = tmp_path / "out.mkv"
    # The fixture was made at 128 (--fomm-size 128); 256 is the smallest canvas the config allows, so the 128
    # prediction is enlarged bilinearly.
    code = render_tool.main([
        "--model", "fomm", "--checkpoint", str(TINY), "--no-crop", "--backend", "torch", "--fomm-size", "128",
        "--driver", str(driver), "--avatar", str(source), "--out", str(out), "--quiet",
        "--set", "generator.canvas_size=256",
    ])
    assert code == 0, capsys.readouterr().err
    assert "4 frames" in capsys.readouterr().out
    frames = read_video(out)
    assert len(frames) == 4
    for i, (frame, want) in enumerate(zip(frames, parity["prediction_relative"])):
        reference = resized_reference(want, 256)
        error = float(np.abs(frame / 255.0 - reference).max())
        assert error <= UINT8_BOUND, f"frame {i}: max |diff| {error:.3g} > {UINT8_BOUND:.3g}"
        # Not vacuous: the absolute-mode animation (what a wrong neutral gives) is far outside the bound
        # (measured 0.67-0.79 against a bound of 0.0059, at least 113x; the error itself is 0.0020, nearly all rounding).
        wrong = float(np.abs(frame / 255.0 - resized_reference(parity["prediction_absolute"][i], 256)).max())
        assert wrong > 100 * UINT8_BOUND


class Recording:
    """A Reenactor that passes everything to a real FommReenactor and keeps each frame's raw prediction."""

    def __init__(self, inner: FommReenactor) -> None:
        self.inner = inner
        self.name, self.canvas_size = inner.name, inner.canvas_size
        self.needs_landmarks = inner.needs_landmarks
        self.predictions: list[np.ndarray] = []
        self.kp_norms: list = []

    def prepare(self, avatar):
        return self.inner.prepare(avatar)

    def neutral_from(self, window):
        return self.inner.neutral_from(window)

    def reset(self) -> None:
        self.inner.reset()

    def render(self, prepared, observed, neutral, time_s, out, timings=None):
        result = self.inner.render(prepared, observed, neutral, time_s, out, timings)
        self.predictions.append(self.inner.last_prediction.copy())
        self.kp_norms.append(self.inner.last_kp_norm)
        return result


@pytest.fixture(scope="module")
def tiny_torch(tmp_path_factory) -> FommReenactor:
    """The tiny checkpoint on torch, cropping, canvas 512, smoothing off (reset before each use)."""
    settings = FommSettings(checkpoint=TINY, backend="torch", engines_dir=tmp_path_factory.mktemp("engines"))
    with FommReenactor(settings=settings, motion=MotionSettings(smoothing=0.0)) as reenactor:
        yield reenactor


def test_raw_predictions_of_the_offline_renderer_match_the_original(parity, fixture_files, tmp_path, model_path):
    from avatarcam.avatars import Avatar

    source, driver = fixture_files
    settings = FommSettings(checkpoint=TINY, backend="torch", crop=False, canvas_size=256, engines_dir=tmp_path,
                            image_size=128)  # the size parity.npz was made at
    with FommReenactor(settings=settings, motion=MotionSettings(smoothing=0.9)) as inner:
        assert inner.image_size == 128 and not inner.needs_landmarks
        # An in-memory avatar whose canvas is not the file: without cropping the file itself is the source.
        avatar = Avatar(name="source", path=source, canvas_bgr=np.zeros((256, 256, 3), np.uint8),
                        points=np.zeros((478, 3), np.float32))
        recording = Recording(inner)
        prepared = recording.prepare(avatar)
        assert np.array_equal(prepared.source, parity["source"])
        report = render_video(str(driver), avatar, prepared, recording, tmp_path / "out.mkv", model_path=model_path,
                              progress=False)
    assert report.frames == 4 and report.faces_found == 0  # MediaPipe never ran: FOMM's demo needs no face
    errors = [float(np.abs(p[0] - want).max()) for p, want in zip(recording.predictions,
                                                                  parity["prediction_relative"])]
    assert max(errors) <= PREDICTION_BOUND, errors


def test_crop_render_follows_the_face_through_mediapipe(tiny_torch, portrait_avatar, model_path, tmp_path):
    frames = []
    capture = cv2.VideoCapture(str(D12))
    while len(frames) < 20:
        ok, frame = capture.read()
        assert ok
        frames.append(frame)
    capture.release()
    driver = write_ffv1(tmp_path / "d12-20.mkv", frames)
    reenactor = Recording(tiny_torch)
    prepared = reenactor.prepare(portrait_avatar)
    out = tmp_path / "out.mkv"
    report = render_video(str(driver), portrait_avatar, prepared, reenactor, out, model_path=model_path,
                          progress=False)
    assert report.frames == 20 and report.faces_found == 20
    rendered = read_video(out)
    assert len(rendered) == 20 and rendered[0].shape == (512, 512, 3)
    outside = prepared.alpha == 0
    inside = prepared.alpha == 1
    assert outside.mean() > 0.2 and inside.mean() > 0.2
    for frame in rendered:
        # Outside the feathered crop the canvas is the avatar, untouched.
        assert np.array_equal(frame[outside], portrait_avatar.canvas_bgr[outside])
    # Inside, the generated face moves with the driver.
    assert np.abs(rendered[19][inside].astype(int) - rendered[0][inside]).mean() > 1.0
    # Frame 0 is the neutral (same crop, same keypoints): FOMM is driven to the avatar's own keypoints.
    first = reenactor.kp_norms[0]
    # Only FOMM's relative arithmetic separates them (J J^-1 of near-singular tiny-model jacobians: measured 1e-6).
    assert float(np.abs(first.value - prepared.kp.value).max()) <= scaled(FOMM_KP_BOUND, prepared.kp.value)
    assert float(np.abs(first.jacobian - prepared.kp.jacobian).max()) <= scaled(FOMM_KP_BOUND, prepared.kp.jacobian)
    expected = tiny_torch.runners.generate(prepared, prepared.kp)
    assert float(np.abs(reenactor.predictions[0] - expected).max()) <= PREDICTION_BOUND


def test_crop_window_maps_back_to_the_canvas_and_frames_the_face_like_vox(portrait_avatar):
    box = face_box(portrait_avatar.points)
    crop = crop_square(portrait_avatar.canvas_bgr, box, size=256)
    # The crop's pixel (j) maps back to the canvas through box.crop_to_image.
    to_canvas = box.crop_to_image(256)
    for j in (0, 100, 255):
        x = to_canvas[0, 0] * j + to_canvas[0, 2]
        y = to_canvas[1, 1] * j + to_canvas[1, 2]
        patch = cv2.getRectSubPix(portrait_avatar.canvas_bgr, (1, 1), (float(x), float(y)))[0, 0]
        assert np.abs(patch.astype(int) - crop[j, j]).max() <= 40  # area-shrunk vs point-sampled, same place
    # The face fills the middle of the crop like FOMM's vox crops: landmarks span 1 / 1.6 of the side.
    xy = (portrait_avatar.points[:, :2] - [box.center_x - box.side / 2, box.center_y - box.side / 2]) / box.side
    assert 0.55 < float(max(xy.max(0) - xy.min(0))) < 0.7
    assert xy.min() > 0.1 and xy.max() < 0.9


def test_crop_square_is_exact_at_scale_one_area_averaged_when_shrinking_and_replicates_outside():
    from avatarcam.generators.common.crop import CropBox

    image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    whole = CropBox(center_x=127.5, center_y=127.5, side=256)  # pixel i covers [i - 0.5, i + 0.5]
    assert np.array_equal(crop_square(image, whole, size=256), image)
    shrunk = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.array_equal(crop_square(image, whole, size=128), shrunk)
    # A window hanging over the frame edge repeats the edge pixels instead of adding black borders FOMM never saw.
    corner = crop_square(image, CropBox(center_x=0.0, center_y=0.0, side=64), size=64)
    assert np.array_equal(corner[:32, :32], np.broadcast_to(image[0, 0], (32, 32, 3)))
