"""The LivePortrait reenactor: --no-crop reproduces the original's relative animation; the live crop path behaves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarcam.avatars import Avatar
from avatarcam.generators.liveportrait.reenactor import eye_lip_ratios
from avatarcam.motion import MotionSettings
from avatarcam.types import Frame, Observed

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LP = FIXTURES / "liveportrait"
D12 = FIXTURES / "driving" / "d12.mp4"
PORTRAIT = FIXTURES / "source" / "lp_s42.jpg"


def _frames(indices: list[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(D12))
    out, i = {}, 0
    try:
        while len(out) < len(indices):
            ok, frame = cap.read()
            assert ok, f"d12.mp4 ended before frame {max(indices)}"
            if i in indices:
                out[i] = frame
            i += 1
    finally:
        cap.release()
    return out


@pytest.fixture(scope="module")
def ref():
    with np.load(LP / "parity.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def tiny_models(one_torch_thread):
    from avatarcam.generators.liveportrait.checkpoint import load_liveportrait

    return load_liveportrait(LP / "tiny-weights")


def _reenactor(models, tmp_path, **settings):
    from avatarcam.generators.liveportrait.reenactor import LivePortraitReenactor, LivePortraitSettings

    motion = settings.pop("motion", None)
    options = {"backend": "torch", "engines_dir": tmp_path, **settings}
    return LivePortraitReenactor(settings=LivePortraitSettings(checkpoint=LP / "tiny-weights", **options),
                                 models=models, motion=motion)


def test_no_crop_reproduces_the_original_relative_animation(tiny_models, ref, tmp_path):
    """Source image and frames 0 (neutral) and 40 of d12, as LivePortrait's no-crop / square-video branches."""
    frames = _frames([0, 40])
    image = cv2.imread(str(PORTRAIT))
    avatar = Avatar(name="lp_s42", path=PORTRAIT, canvas_bgr=cv2.resize(image, (512, 512)),
                    points=np.zeros((478, 3), np.float32))
    with _reenactor(tiny_models, tmp_path, crop=False) as lp:
        assert not lp.needs_landmarks and lp.runtime == "torch-cpu"
        prepared = lp.prepare(avatar)
        assert np.array_equal(prepared.source, ref["source"])  # the exact model input of the original run
        assert np.abs(prepared.x_s - ref["me_source_kp_transformed"]).max() < 2e-5
        neutral = lp.neutral_from([Observed(frame=Frame(frames[0], 0, 0.0), face=None)])
        out = np.empty((512, 512, 3), np.uint8)
        lp.render(prepared, Observed(frame=Frame(frames[40], 40, 1.6), face=None), neutral, 1.6, out)
        assert np.array_equal(lp._input, ref["driving"][1:2])  # same decoder, same resize
        assert np.abs(lp.last_kp_driving - ref["anim_kp_final"][1:2]).max() < 2e-5
        prediction = lp.last_prediction
        err = np.abs(prediction[:, :, :256, :256].astype(np.float64) - ref["gen_out_crop"])
        assert err.max() < 5e-3 and err.mean() < 1e-4
        pooled = prediction.astype(np.float64).reshape(1, 3, 128, 4, 128, 4).mean((3, 5))
        assert np.abs(pooled - ref["gen_out_pool4"][1:2]).max() < 5e-3
        # The canvas is LivePortrait's parse_output (truncation), BGR.
        expected = np.clip(prediction[0].transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8)[..., ::-1]
        assert np.array_equal(out, expected)


@pytest.fixture(scope="module")
def driver_observed(image_landmarker):
    frames = _frames([0, 125])
    observed = {}
    for i, frame in frames.items():
        face = image_landmarker.detect(frame)
        assert face is not None, f"no face in d12 frame {i}"
        observed[i] = Observed(frame=Frame(frame, i, i / 25), face=face)
    return observed


def test_live_crop_path(tiny_models, portrait_avatar, driver_observed, tmp_path):
    still = MotionSettings(intensity={"mouth": 0.0, "eyes": 0.0, "brows": 0.0, "face": 0.0}, head_rotation=0.0,
                           head_translation=0.0, scale_lock=True, smoothing=0.0, lost_face_hold_s=0.5,
                           lost_face_ease_s=0.8)
    with _reenactor(tiny_models, tmp_path, motion=still) as lp:
        prepared = lp.prepare(portrait_avatar)
        assert prepared.ratios is not None and prepared.ratios.shape == (3,)
        out = np.empty((512, 512, 3), np.uint8)
        # Not calibrated yet: the avatar at rest.
        lp.render(prepared, driver_observed[125], None, 0.0, out)
        assert np.array_equal(out, prepared.rest_canvas_bgr)
        neutral = lp.neutral_from([driver_observed[0]])
        # Every gain 0: the open-mouth frame moves nothing, retargeting included (deltas relative to the rest).
        driving = lp.runners.motion(_crop_input(lp, driver_observed[125]))
        ratios = eye_lip_ratios(driver_observed[125].face.points_px)
        assert ratios[2] > 2 * neutral.ratios[2]  # the mouth is open in frame 125
        still_x = lp.driven_keypoints(prepared, driving, neutral, ratios)
        assert np.abs(still_x - prepared.x_s).max() < 1e-5
        lp.motion.update_settings(MotionSettings(smoothing=0.0))
        moving_x = lp.driven_keypoints(prepared, driving, neutral, ratios)
        assert np.abs(moving_x - prepared.x_s).max() > 1e-3
        # One live frame: the generated crop is pasted inside the feathered window only.
        timings: dict[str, float] = {}
        lp.render(prepared, driver_observed[125], neutral, 5.0, out, timings)
        assert {"crop", "motion_extractor", "motion", "generate", "compose"} <= set(timings)
        outside = prepared.alpha == 0
        assert outside.any() and np.array_equal(out[outside], prepared.rest_canvas_bgr[outside])
        assert np.abs(out.astype(int) - prepared.rest_canvas_bgr).max() > 0
        shown = out.copy()
        # Lost face: hold, then back to the avatar at rest.
        lost = Observed(frame=Frame(driver_observed[0].frame.image_bgr, 200, 8.0), face=None)
        lp.render(prepared, lost, neutral, 5.2, out)
        assert np.array_equal(out, shown)
        lp.render(prepared, lost, neutral, 5.2 + 0.5 + 0.8 + 0.1, out)
        assert np.array_equal(out, prepared.rest_canvas_bgr)
        assert lp.best_match([prepared, prepared], driver_observed[125]) in (0, 1)
        lp.reset()


def _crop_input(lp, observed):
    image = np.empty((1, 3, 256, 256), np.float32)
    lp._driver_crop(observed, None, image, np.empty((256, 256, 3), np.uint8))
    return image


@pytest.mark.heavy
def test_onnxruntime_reenactor_matches_torch(tiny_models, ref, tmp_path):
    frames = _frames([0, 40])
    image = cv2.imread(str(PORTRAIT))
    avatar = Avatar(name="lp_s42", path=PORTRAIT, canvas_bgr=cv2.resize(image, (512, 512)),
                    points=np.zeros((478, 3), np.float32))
    with _reenactor(tiny_models, tmp_path, crop=False, backend="onnxruntime") as lp:
        assert lp.runtime == "onnxruntime-cpu"
        prepared = lp.prepare(avatar)
        neutral = lp.neutral_from([Observed(frame=Frame(frames[0], 0, 0.0), face=None)])
        out = np.empty((512, 512, 3), np.uint8)
        lp.render(prepared, Observed(frame=Frame(frames[40], 40, 1.6), face=None), neutral, 1.6, out)
        err = np.abs(lp.last_prediction[:, :, :256, :256].astype(np.float64) - ref["gen_out_crop"])
        assert err.max() < 5e-3 and err.mean() < 1e-4
