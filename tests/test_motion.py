"""Calibration, relative motion transfer, smoothing and the lost-face behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avatarcam import landmarks as lm
from avatarcam.filters import OneEuroFilter
from avatarcam.motion import (AvatarFace, Calibrator, MotionSettings, MotionTransfer, eye_openness,
                              mouth_openness, neutral_from_faces, rotation_to_euler_deg, similarity_transform)
from avatarcam.types import FaceObservation, Frame, Observed


def _face(points: np.ndarray, blink: float = 0.0) -> FaceObservation:
    blend = np.zeros(52, np.float32)
    blend[lm.BLENDSHAPE_INDEX["eyeBlinkLeft"]] = blend[lm.BLENDSHAPE_INDEX["eyeBlinkRight"]] = blink
    return FaceObservation(points_px=points.astype(np.float32), blendshapes=blend, head_matrix=np.eye(4, dtype=np.float32),
                           image_size=(640, 480))


def _observed(points, t=0.0, blink=0.0):
    return Observed(frame=Frame(np.zeros((4, 4, 3), np.uint8), 0, t), face=_face(points, blink))


@pytest.fixture(scope="module")
def driver_points(image_landmarker):
    """Real landmarks of a real driver at rest: the first frame of the d12 clip."""
    from avatarcam.capture import iter_frames
    from tests.conftest import D12

    face = image_landmarker.detect(next(iter_frames(str(D12))))
    assert mouth_openness(face.points_px) < 0.08
    return face.points_px.copy()


def _rotate_y(points: np.ndarray, degrees: float) -> np.ndarray:
    center = points[list(lm.RIGID_POINTS)].mean(0) + np.array([0, 0, 100.0])
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return ((points - center) @ rot.T + center).astype(np.float32)


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    a = 0.4
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    dst = 1.7 * src @ rot.T + np.array([3.0, -2.0, 1.0])
    scale, rotation, translation = similarity_transform(src, dst)
    assert scale == pytest.approx(1.7)
    np.testing.assert_allclose(rotation, rot, atol=1e-9)
    np.testing.assert_allclose(translation, [3.0, -2.0, 1.0], atol=1e-9)


def test_one_euro_filter_smooths_noise_and_follows_steps():
    rng = np.random.default_rng(1)
    f = OneEuroFilter(min_cutoff_hz=1.0, beta=0.0)
    noisy = [f(np.array([rng.normal()]), i / 30)[0] for i in range(300)]
    assert np.std(noisy[30:]) < 0.35 * 1.0  # raw noise has std 1
    g = OneEuroFilter(min_cutoff_hz=1.0, beta=0.5)
    out = [g(np.array([0.0 if i < 30 else 100.0]), i / 30)[0] for i in range(60)]
    assert out[29] == 0.0 and out[40] > 90.0  # a fast move is followed within a third of a second
    with pytest.raises(ValueError, match="min_cutoff_hz > 0"):
        OneEuroFilter(min_cutoff_hz=0)


def test_neutral_pose_gives_the_avatar_unchanged(driver_points, portrait_avatar):
    avatar = AvatarFace.from_points(portrait_avatar.points)
    neutral = neutral_from_faces([_face(driver_points)])
    motion = MotionTransfer(MotionSettings(smoothing=0.0))
    driven = motion.transfer(_face(driver_points), neutral, avatar, 0.0)
    np.testing.assert_allclose(driven.points, avatar.points[:, :2], atol=1e-3)


def test_head_turn_is_transferred_as_rotation_not_expression(driver_points, portrait_avatar):
    avatar = AvatarFace.from_points(portrait_avatar.points)
    neutral = neutral_from_faces([_face(driver_points)])
    motion = MotionTransfer(MotionSettings(smoothing=0.0))
    driven = motion.transfer(_face(_rotate_y(driver_points, 15.0)), neutral, avatar, 0.0)
    yaw, pitch, roll = rotation_to_euler_deg(driven.rotation)
    assert yaw == pytest.approx(15.0, abs=1.5) and abs(pitch) < 1.5 and abs(roll) < 1.5
    # A pure turn leaves the mouth and eyes as they were.
    assert mouth_openness(driven.points) == pytest.approx(mouth_openness(avatar.points), abs=0.02)
    driven_lo = MotionTransfer(MotionSettings(smoothing=0.0, head_rotation=0.5)).transfer(
        _face(_rotate_y(driver_points, 15.0)), neutral, avatar, 0.0)
    assert rotation_to_euler_deg(driven_lo.rotation)[0] == pytest.approx(7.5, abs=1.0)


def _open_mouth(points: np.ndarray, amount_px: float) -> np.ndarray:
    out = points.copy()
    lower = [i for i in range(468) if out[i, 1] > out[lm.INNER_LIP_LOWER_MID, 1] - 1]
    out[lower, 1] += amount_px
    return out


def test_mouth_opening_scales_with_face_size_and_intensity(driver_points, portrait_avatar):
    avatar = AvatarFace.from_points(portrait_avatar.points)
    neutral = neutral_from_faces([_face(driver_points)])
    opened = _open_mouth(driver_points, 30.0)
    driven = MotionTransfer(MotionSettings(smoothing=0.0)).transfer(_face(opened), neutral, avatar, 0.0)
    gap = driven.points[lm.INNER_LIP_LOWER_MID, 1] - driven.points[lm.INNER_LIP_UPPER_MID, 1]
    rest = avatar.points[lm.INNER_LIP_LOWER_MID, 1] - avatar.points[lm.INNER_LIP_UPPER_MID, 1]
    # Driver opening is scaled by the ratio of the face sizes.
    ratio = avatar.size_px / neutral.size_px
    assert gap - rest == pytest.approx(30.0 * ratio, rel=0.15)
    muted = MotionTransfer(MotionSettings(smoothing=0.0, intensity={"mouth": 0.0, "eyes": 1.0, "brows": 1.0,
                                                                    "face": 1.0}))
    driven = muted.transfer(_face(opened), neutral, avatar, 0.0)
    gap0 = driven.points[lm.INNER_LIP_LOWER_MID, 1] - driven.points[lm.INNER_LIP_UPPER_MID, 1]
    assert gap0 - rest < 0.15 * (gap - rest)


def _upper_lip_thickness(points: np.ndarray) -> float:
    outer, inner = np.array(lm.LIPS_OUTER[1:10]), np.array(lm.LIPS_INNER[1:10])
    return float(np.mean(points[inner, 1] - points[outer, 1]))


def test_a_lip_that_thins_to_nothing_keeps_part_of_the_avatars_lip(driver_points, portrait_avatar):
    """Offsets added point by point would fold the avatar's upper lip when the driver's rolls in (a smile, a tight
    mouth); the avatar's lip thins to LIP_THICKNESS_RANGE's floor instead, and the opening (inner lip) is kept."""
    avatar = AvatarFace.from_points(portrait_avatar.points)
    neutral = neutral_from_faces([_face(driver_points)])
    rolled = driver_points.copy()
    outer, inner = list(lm.LIPS_OUTER[1:10]), list(lm.LIPS_INNER[1:10])
    rolled[outer] = rolled[inner] + 0.5 * (rolled[inner] - rolled[outer])  # outer edge pulled past the inner one
    driven = MotionTransfer(MotionSettings(smoothing=0.0)).transfer(_face(rolled), neutral, avatar, 0.0)
    rest = _upper_lip_thickness(avatar.points)
    assert rest > 3.0
    assert _upper_lip_thickness(driven.points) == pytest.approx(0.6 * rest, rel=0.1)
    np.testing.assert_allclose(driven.points[inner], avatar.points[inner, :2], atol=0.5)


def test_driver_blink_closes_the_avatar_eyes(driver_points, portrait_avatar):
    avatar = AvatarFace.from_points(portrait_avatar.points)
    neutral = neutral_from_faces([_face(driver_points)])
    closed = driver_points.copy()
    for upper, lower in ((lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER), (lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER)):
        closed[list(upper)] = closed[list(lower)]
    driven = MotionTransfer(MotionSettings(smoothing=0.0)).transfer(_face(closed), neutral, avatar, 0.0)
    assert eye_openness(avatar.points).min() > 0.2
    assert eye_openness(driven.points).max() < 0.02


def test_a_blink_closes_the_avatar_eyes_on_its_first_frame_at_default_smoothing(driver_points, portrait_avatar):
    # The lid filter's speed term works in percent of the neutral gap, like the other signals in their hundredths;
    # in plain ratios a blink's speed hardly opened the filter and the eyes were 0.17 open on the first shut frame
    # (a frame late).
    avatar = AvatarFace.from_points(portrait_avatar.points)
    neutral = neutral_from_faces([_face(driver_points)])
    closed = driver_points.copy()
    for upper, lower in ((lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER), (lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER)):
        closed[list(upper)] = closed[list(lower)]
    motion = MotionTransfer(MotionSettings())  # default smoothing
    assert motion.settings.smoothing > 0
    for i in range(10):
        motion.transfer(_face(driver_points), neutral, avatar, i / 25)
    first_shut = motion.transfer(_face(closed), neutral, avatar, 10 / 25)
    shut = eye_openness(first_shut.points) / eye_openness(avatar.points)
    assert shut.max() < 0.05


def test_lost_face_holds_then_eases_back_to_neutral(driver_points, portrait_avatar):
    avatar = AvatarFace.from_points(portrait_avatar.points)
    neutral = neutral_from_faces([_face(driver_points)])
    motion = MotionTransfer(MotionSettings(smoothing=0.0, lost_face_hold_s=0.5, lost_face_ease_s=0.5))
    posed = motion.transfer(_face(_rotate_y(driver_points, 20.0)), neutral, avatar, 0.0)
    held = motion.transfer(None, neutral, avatar, 0.3)
    np.testing.assert_allclose(held.points, posed.points)
    assert not held.face_seen
    halfway = motion.transfer(None, neutral, avatar, 0.3 + 0.5 + 0.25)
    back = motion.transfer(None, neutral, avatar, 2.0)
    d_half = np.abs(halfway.points - avatar.points[:, :2]).max()
    assert 0 < d_half < np.abs(posed.points - avatar.points[:, :2]).max()
    np.testing.assert_allclose(back.points, avatar.points[:, :2], atol=1e-4)


def test_calibrator_refuses_open_mouth_and_averages_a_window(driver_points):
    calibrator = Calibrator(window_s=0.3, strict=True)
    assert calibrator.add(_observed(_open_mouth(driver_points, 40.0)), 0.0) is None
    assert "close your mouth" in calibrator.status
    assert calibrator.add(_observed(driver_points, blink=0.9), 0.05) is None
    assert "open your eyes" in calibrator.status
    window = None
    for i in range(12):
        window = calibrator.add(_observed(driver_points + i * 0.1), 0.1 + i / 30)
        if window:
            break
    assert window is not None and 9 <= len(window) <= 11 and calibrator.status == "calibrated"
    neutral = neutral_from_faces([o.face for o in window])
    np.testing.assert_allclose(neutral.points, driver_points + 0.1 * (len(window) - 1) / 2, atol=1e-3)


def test_intensity_step_is_clamped():
    settings = MotionSettings().with_intensity_step(0.5).with_intensity_step(0.8)
    assert set(settings.intensity.values()) == {2.0}


def test_strict_calibration_takes_the_face_as_it_is_after_its_patience(model_path):
    """A live driver who keeps the mouth open is refused for STRICT_PATIENCE_S, then calibrated as they are (a browser
    visitor on a talking clip stayed uncalibrated for over 100 s); patience_s=None waits for ever."""
    import itertools

    from avatarcam.capture import iter_frames
    from avatarcam.landmarks import FaceLandmarker
    from avatarcam.motion import STRICT_PATIENCE_S, Calibrator, calibration_problem
    from avatarcam.types import Frame, Observed
    from tests.conftest import D12

    with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
        frames = itertools.islice(iter_frames(str(D12)), 100, 200)
        open_face = next(face for face in map(landmarker.detect, frames)
                         if face is not None and calibration_problem(face) == "close your mouth")
    frame = Frame(np.zeros((8, 8, 3), np.uint8), 0, 0.0)
    patient, waiting = Calibrator(window_s=0.3), Calibrator(window_s=0.3, patience_s=None)
    times = np.arange(0.0, STRICT_PATIENCE_S + 1.0, 0.1)
    done = [t for t in times if patient.add(Observed(frame=frame, face=open_face), float(t)) is not None]
    assert done and STRICT_PATIENCE_S <= done[0] <= STRICT_PATIENCE_S + 0.5
    assert all(waiting.add(Observed(frame=frame, face=open_face), float(t)) is None for t in times)
    assert waiting.status.startswith("calibrating: close your mouth")
