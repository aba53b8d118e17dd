"""The FOMM reenactor live: the real RenderWorker, AvatarStore and Calibrator, MediaPipe on a real clip; the FaceMimic
controls (intensity, smoothing, lost face), avatar switches that keep the neutral, best match, checkpoint errors."""

from __future__ import annotations

import shutil
import time

import cv2
import numpy as np
import pytest

from avatarcam.commands import Command
from avatarcam.config import load_config
from avatarcam.errors import FaceMimicError, ModelFileError
from avatarcam.generators.fomm.reenactor import (
    FommKeypointArrays,
    FommReenactor,
    FommSettings,
    build_fomm_reenactor,
    relative_motion,
)
from avatarcam.generators.fomm.model import movement_scale
from avatarcam.handoff import LatestSlot
from avatarcam.motion import Calibrator, MotionSettings
from avatarcam.types import FaceObservation, Frame, Observed
from tests.conftest import ASTRONAUT, D12, PORTRAIT, ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = ROOT / "tests" / "fixtures" / "fomm"
TINY = FIXTURES / "tiny-checkpoint.pth.tar"


@pytest.fixture(scope="module")
def observations(model_path) -> list[Observed]:
    """The first 12 frames of d12 with MediaPipe landmarks (video mode), 25 fps timestamps."""
    from avatarcam.landmarks import FaceLandmarker

    capture = cv2.VideoCapture(str(D12))
    found = []
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        for index in range(12):
            ok, frame = capture.read()
            assert ok
            found.append(Observed(frame=Frame(frame, index, index / 25), face=landmarker.detect(frame, index * 40)))
    capture.release()
    assert all(o.face is not None for o in found)
    return found


@pytest.fixture(scope="module")
def reenactor(tmp_path_factory):
    settings = FommSettings(checkpoint=TINY, backend="torch", engines_dir=tmp_path_factory.mktemp("engines"))
    with FommReenactor(settings=settings, motion=MotionSettings(smoothing=0.0)) as instance:
        yield instance


def keypoints(parity, prefix: str, rows: slice = slice(0, 1)) -> FommKeypointArrays:
    return FommKeypointArrays(value=parity[f"{prefix}_value"][rows], jacobian=parity[f"{prefix}_jacobian"][rows])


# ---------------------------------------------------------------- the live pipeline


def wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_live_render_worker_calibrates_switches_avatars_and_keeps_the_neutral(
    reenactor, observations, model_path, tmp_path, monkeypatch
):
    from avatarcam.landmarks import FaceLandmarker
    from avatarcam.pipeline import AvatarStore, RenderWorker

    folder = tmp_path / "avatars"
    folder.mkdir()
    for path in (PORTRAIT, ASTRONAUT):
        shutil.copy(path, folder / path.name)
    calls = []
    real_neutral_from = reenactor.neutral_from
    monkeypatch.setattr(reenactor, "neutral_from", lambda window: calls.append(window) or real_neutral_from(window))
    store = AvatarStore(folder, lambda: FaceLandmarker(model_path=model_path, mode="image"), reenactor)
    store.load_first(folder / ASTRONAUT.name)
    store.reload()  # prepares both avatars on the loader thread while the render thread runs the same models
    slot: LatestSlot[Observed] = LatestSlot()
    worker = RenderWorker(slot, reenactor, store, Calibrator(window_s=0.0, strict=False))
    rendered = []
    worker.start()
    try:
        for index, observed in enumerate(observations):
            if index == 6:
                wait_for(store.loaded.is_set)
                worker.submit(Command.NEXT_AVATAR)
            before = worker.frames_rendered
            slot.put(observed)
            wait_for(lambda: worker.frames_rendered > before or worker.render_failures)
            rendered.append(worker.rendered.peek()[1])
            worker.raise_if_failed()
    finally:
        worker.stop()
    assert worker.render_failures == 0
    assert len(calls) == 1  # calibrated once, on the first frame; the switch kept that neutral
    names = [r.avatar_name for r in rendered]
    assert names[:6] == ["astronaut"] * 6 and names[6:] == ["lp_s42"] * 6
    assert all(r.calibration == "calibrated" for r in rendered)
    assert {"crop", "kp_detector", "motion", "generate", "compose"} <= set(rendered[-1].stage_ms)
    # The new avatar's movement scale comes from its own keypoints and the kept neutral.
    entries = dict((a.name, p) for a, p in store.entries())
    neutral = real_neutral_from(calls[0])
    import torch

    expected = movement_scale(torch.from_numpy(entries["lp_s42"].kp.value), torch.from_numpy(neutral.kp.value))
    assert reenactor.movement_scale(entries["lp_s42"], neutral) == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(
        movement_scale(torch.from_numpy(entries["astronaut"].kp.value), torch.from_numpy(neutral.kp.value)))


def test_best_match_ranks_avatars_by_normalized_keypoints(reenactor, portrait_avatar, astronaut_avatar):
    prepared = [reenactor.prepare(astronaut_avatar), reenactor.prepare(portrait_avatar)]
    for index, avatar in enumerate((astronaut_avatar, portrait_avatar)):
        face = FaceObservation(points_px=avatar.points, blendshapes=np.zeros(52, np.float32),
                               head_matrix=np.eye(4, dtype=np.float32), image_size=(512, 512))
        observed = Observed(frame=Frame(avatar.canvas_bgr, 100 + index, 0.0), face=face)
        assert reenactor.best_match(prepared, observed) == index
    assert reenactor.best_match([], observed) is None
    assert reenactor.best_match(prepared, Observed(frame=observed.frame, face=None)) is None


# ---------------------------------------------------------------- FaceMimic controls


def test_relative_motion_is_fomms_normalize_kp_at_intensity_one(parity):
    source, initial = keypoints(parity, "kp_source"), keypoints(parity, "kp_driving_initial")
    scale = float(parity["adapt_movement_scale"][0])
    for i in range(4):
        got = relative_motion(source, keypoints(parity, "kp_driving", slice(i, i + 1)), initial, scale=scale)
        # Elementwise float32 arithmetic on the same inputs as the original: measured 0 (values), 2.4e-7 (jacobians).
        assert float(np.abs(got.value - parity["kp_norm_value"][i]).max()) <= 1e-5
        assert float(np.abs(got.jacobian - parity["kp_norm_jacobian"][i]).max()) <= 1e-5
    driving = keypoints(parity, "kp_driving", slice(2, 3))
    full = relative_motion(source, driving, initial, scale=scale)
    half = relative_motion(source, driving, initial, scale=scale, intensity=0.5)
    none = relative_motion(source, driving, initial, scale=scale, intensity=0.0)
    assert np.allclose(half.value, (full.value + source.value) / 2, atol=1e-6)
    assert np.array_equal(none.value, source.value)
    assert np.allclose(none.jacobian, source.jacobian, atol=1e-6)


def test_smoothing_zero_is_exact_and_positive_smoothing_lags(reenactor, portrait_avatar, observations):
    prepared = reenactor.prepare(portrait_avatar)
    neutral = reenactor.neutral_from(observations[:1])
    canvas = np.zeros((512, 512, 3), np.uint8)

    def drive(smoothing: float) -> list[tuple[FommKeypointArrays, FommKeypointArrays]]:
        reenactor.motion.update_settings(MotionSettings(smoothing=smoothing))
        reenactor.reset()
        kps = []
        for observed in observations:
            reenactor.render(prepared, observed, neutral, observed.frame.capture_time_s, canvas)
            kps.append((reenactor.last_kp_norm, reenactor.last_driver_kp))
        return kps

    try:
        raw, smooth = drive(0.0), drive(0.8)
    finally:
        reenactor.motion.update_settings(MotionSettings(smoothing=0.0))
    scale = reenactor.movement_scale(prepared, neutral)
    for (kp_norm, driver), (_, driver_again) in zip(raw, smooth):
        # Smoothing 0 drives the generator with FOMM's relative keypoints of the detected ones, bit for bit.
        expected = relative_motion(prepared.kp, driver, neutral.kp, scale=scale)
        assert np.array_equal(kp_norm.value, expected.value) and np.array_equal(kp_norm.jacobian, expected.jacobian)
        assert np.array_equal(driver.value, driver_again.value)  # same crops: only the keypoint filter differs
    assert np.array_equal(smooth[0][0].value, raw[0][0].value)  # the first sample passes the filter unchanged
    assert np.abs(smooth[-1][0].value - raw[-1][0].value).max() > 1e-4


def test_lost_face_holds_then_eases_back_to_the_avatar(reenactor, portrait_avatar, observations):
    prepared = reenactor.prepare(portrait_avatar)
    neutral = reenactor.neutral_from(observations[:1])
    reenactor.reset()
    canvas = np.zeros((512, 512, 3), np.uint8)
    assert np.array_equal(reenactor.render(prepared, observations[5], None, 0.0, canvas), prepared.rest_canvas_bgr)
    last = reenactor.render(prepared, observations[8], neutral, 1.0, canvas).copy()
    settings = reenactor.motion.settings  # hold 0.5 s, then ease over 0.8 s
    lost = Observed(frame=observations[9].frame, face=None)
    lost_at = 1.1  # the first frame without a face starts the hold
    held = reenactor.render(prepared, lost, neutral, lost_at, canvas).copy()
    assert np.array_equal(held, last)
    assert np.array_equal(reenactor.render(prepared, lost, neutral, lost_at + settings.lost_face_hold_s, canvas), last)
    halfway = reenactor.render(prepared, lost, neutral, lost_at + settings.lost_face_hold_s + 0.4, canvas).copy()
    to_last = np.abs(halfway.astype(int) - last).mean()
    to_rest = np.abs(halfway.astype(int) - prepared.rest_canvas_bgr).mean()
    assert to_last > 0.5 and to_rest > 0.5
    end = lost_at + settings.lost_face_hold_s + settings.lost_face_ease_s + 0.01
    assert np.array_equal(reenactor.render(prepared, lost, neutral, end, canvas), prepared.rest_canvas_bgr)
    # The face comes back: rendering resumes at once.
    back = reenactor.render(prepared, observations[10], neutral, end + 0.04, canvas)
    assert not np.array_equal(back, prepared.rest_canvas_bgr)


def test_intensity_hotkeys_drive_the_fomm_gain(reenactor, portrait_avatar, observations):
    prepared = reenactor.prepare(portrait_avatar)
    neutral = reenactor.neutral_from(observations[:1])
    canvas = np.zeros((512, 512, 3), np.uint8)
    motion = reenactor.motion
    try:
        # app.py's INTENSITY_DOWN handler, ten times: every region's gain, FOMM's included, reaches 0.
        for _ in range(10):
            motion.update_settings(motion.settings.with_intensity_step(-0.1))
        assert motion.intensity == pytest.approx(0.0, abs=1e-9)
        reenactor.reset()
        reenactor.render(prepared, observations[11], neutral, 0.0, canvas)
        assert np.abs(reenactor.last_kp_norm.value - prepared.kp.value).max() <= 1e-6
    finally:
        motion.update_settings(MotionSettings(smoothing=0.0))


# ---------------------------------------------------------------- checkpoints and config


@pytest.mark.parametrize("checkpoint", [None, "no/such/vox-adv-cpk.pth.tar"])
def test_missing_checkpoint_says_where_avatarify_keeps_it(checkpoint):
    overrides = {"generator.model": "fomm", "generator.backend": "torch"}
    if checkpoint is not None:
        overrides["generator.checkpoint"] = checkpoint
    with pytest.raises(ModelFileError) as caught:
        build_fomm_reenactor(load_config(None, overrides))
    message = str(caught.value)
    assert "vox-adv-cpk.pth.tar" in message and "vox-cpk.pth.tar" in message and "avatarify folder" in message
    assert "never ships" in message and "CC BY-NC" in message


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    junk = tmp_path / "vox-cpk.pth.tar"
    junk.write_bytes(b"<html>404</html>")
    with pytest.raises(ModelFileError, match="is not a PyTorch checkpoint"):
        build_fomm_reenactor(load_config(None, {"generator.model": "fomm", "generator.checkpoint": str(junk)}))


def test_config_builds_the_reenactor_with_the_inferred_model(tmp_path):
    config = load_config(None, {"generator.model": "fomm", "generator.checkpoint": str(TINY),
                                "generator.backend": "torch", "generator.canvas_size": 256,
                                "motion.intensity.face": 1.5, "generator.crop": False})
    with build_fomm_reenactor(config) as built:
        assert (built.name, built.canvas_size, built.image_size) == ("fomm", 256, 256)
        assert built.models.config.kp_detector.block_expansion == 4 and built.motion.intensity == 1.5
        assert not built.needs_landmarks
        with pytest.raises(FaceMimicError, match="expected \\(256, 256, 3\\) uint8"):
            built.render(None, None, None, 0.0, np.zeros((512, 512, 3), np.uint8))


def test_released_checkpoints_run_at_256():
    from avatarcam.generators.fomm.export import choose_image_size
    from avatarcam.generators.fomm.model import FommConfig

    assert choose_image_size(FommConfig.vox256()) == 256


@pytest.mark.heavy
def test_vox256_random_checkpoint_renders_a_cropped_frame(tmp_path, portrait_avatar, observations):
    import torch

    from avatarcam.generators.fomm.model import FommConfig, FommGenerator, FommKeypointDetector

    config = FommConfig.vox256()
    checkpoint = tmp_path / "vox-random.pth.tar"
    torch.save({"kp_detector": FommKeypointDetector(config).state_dict(),
                "generator": FommGenerator(config).state_dict()}, checkpoint)
    settings = FommSettings(checkpoint=checkpoint, backend="auto", engines_dir=tmp_path / "engines")
    with FommReenactor(settings=settings) as vox:
        assert vox.image_size == 256
        prepared = vox.prepare(portrait_avatar)
        neutral = vox.neutral_from(observations[:1])
        canvas = np.zeros((512, 512, 3), np.uint8)
        vox.render(prepared, observations[3], neutral, 0.1, canvas)
        assert vox.last_prediction.shape == (1, 3, 256, 256)
