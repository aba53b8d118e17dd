"""Neutral-pose calibration and relative motion transfer from a driver's face to an avatar's face.

Motion is always relative to the driver's calibrated neutral (as in Avatarify's relative mode): at the neutral
pose the avatar is shown exactly as it is. Head pose (rotation, translation, scale) and expression (per-landmark
offsets in the head's own frame) are separated, adapted to the avatar's face size and roll, scaled per region,
and recombined around the avatar's head pivot.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarcam import landmarks as lm
from avatarcam.filters import OneEuroFilter
from avatarcam.types import FaceObservation

log = logging.getLogger(__name__)

REGIONS = ("mouth", "eyes", "brows", "face")
_RIGID = np.array(lm.RIGID_POINTS)
_EYE_PAIRS = (
    (np.array(lm.RIGHT_EYE_UPPER), np.array(lm.RIGHT_EYE_LOWER), np.array(lm.RIGHT_EYE_CORNERS)),
    (np.array(lm.LEFT_EYE_UPPER), np.array(lm.LEFT_EYE_LOWER), np.array(lm.LEFT_EYE_CORNERS)),
)
_LID_INDEX = np.concatenate([np.concatenate([upper, lower]) for upper, lower, _ in _EYE_PAIRS])
"""The 28 lid points of DrivenFace.open_lids, flattened: right upper, right lower, left upper, left lower."""
# Share of the lid gap that the upper lid travels when an eye closes (the lower lid rises only a little).
UPPER_LID_SHARE = 0.8
# Lid gap over the neutral one at which the driver's eye counts as shut (the landmarks never quite meet).
CLOSED_EYE_RATIO = 0.12
MOUTH_OPEN_REFUSE = 0.12
EYE_CLOSED_REFUSE = 0.55
# Soft limits of head motion (see _soft_limit): rotation angle, movement in face sizes, zoom as log-scale.
MAX_ROTATION_DEG = 40.0
SILHOUETTE_DEPTH_PERCENTILE = 80
SILHOUETTE_DEPTH_KEEP = 0.5
# Depth of the head's centre of rotation behind the face surface, in face sizes.
PIVOT_DEPTH_FACES = 0.55
# Smoothing (One Euro filter, Casiez et al. 2012), one filter per kind of signal, each in units of a hundredth of
# the driver's face size (head rotation in degrees, which moves the face by about as much). `motion.smoothing` s maps
# the slow-motion cutoff onto BASE_HZ * 0.05**s; the speed coefficient BETA (per unit per second) opens the filter
# during a move, so turns, mouth openings and blinks pass with well under a frame of lag while a still face stays
# steady. Lids get a higher cutoff: a blink lasts 3-5 frames and must close fully.
POSE_CUTOFF_HZ, POSE_BETA = 8.0, 0.35
EXPRESSION_CUTOFF_HZ, EXPRESSION_BETA = 8.0, 0.5
LIDS_CUTOFF_HZ, LIDS_BETA = 24.0, 0.5
SPEED_CUTOFF_HZ = 3.0
MAX_SHIFT_FACES = 0.22
# Limits of the mouth-size adaptation (avatar's mouth width over the driver's, each in face sizes).
MOUTH_FIT_RANGE = (0.7, 1.4)
# Outer and inner lip points paired across each lip: the upper lip's nine, then the lower lip's (no corners).
_LIP_OUTER = np.array([lm.LIPS_OUTER[i] for i in (*range(1, 10), *range(11, 20))])
_LIP_INNER = np.array([lm.LIPS_INNER[i] for i in (*range(1, 10), *range(11, 20))])
# How far a lip may thin or thicken, as a share of the avatar's own lip: a stretched lip thins, it never vanishes.
LIP_THICKNESS_RANGE = (0.6, 1.4)
MAX_LOG_SCALE = 0.18


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama): scale, rotation (D, D) and translation (D,) with dst ≈ s·R·src + t."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_s, dst - mu_d
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(len(sigma))
    d[-1] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    rotation = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = float((sigma * d).sum() / var_src)
    translation = mu_d - scale * rotation @ mu_s
    return scale, rotation, translation


def rotation_to_euler_deg(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a 3x3 rotation in image axes (x right, y down, z away from camera)."""
    r = np.asarray(rotation, np.float64)
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, r[0, 2]))))
    pitch = math.degrees(math.atan2(-r[1, 2], r[2, 2]))
    roll = math.degrees(math.atan2(-r[0, 1], r[0, 0]))
    return yaw, pitch, roll


def eye_openness(points: np.ndarray) -> np.ndarray:
    """(2,) lid gap divided by eye width for the subject's right and left eye."""
    out = np.empty(2, np.float32)
    for k, (upper, lower, corners) in enumerate(_EYE_PAIRS):
        gap = np.linalg.norm(points[upper, :2] - points[lower, :2], axis=1).mean()
        width = np.linalg.norm(points[corners[0], :2] - points[corners[1], :2]) + 1e-6
        out[k] = gap / width
    return out


def mouth_openness(points: np.ndarray) -> float:
    """Inner-lip gap divided by mouth width (0 closed, about 0.5 wide open)."""
    gap = np.linalg.norm(points[lm.INNER_LIP_UPPER_MID, :2] - points[lm.INNER_LIP_LOWER_MID, :2])
    width = np.linalg.norm(points[lm.MOUTH_CORNERS[0], :2] - points[lm.MOUTH_CORNERS[1], :2]) + 1e-6
    return float(gap / width)


def _mouth_width(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[lm.MOUTH_CORNERS[0], :2] - points[lm.MOUTH_CORNERS[1], :2]))


def face_size(points: np.ndarray) -> float:
    """A robust face size in pixels: distance from forehead to chin plus the width between the temples."""
    height = np.linalg.norm(points[lm.FOREHEAD, :2] - points[lm.CHIN, :2])
    width = np.linalg.norm(points[234, :2] - points[454, :2])
    return float(0.5 * (height + width))


@dataclass(frozen=True)
class MotionSettings:
    """The user's controls over motion transfer."""

    intensity: dict[str, float] = field(default_factory=lambda: {r: 1.0 for r in REGIONS})
    """Per-region expression gain 0..2: mouth, eyes, brows, face (cheeks, nose and the rest)."""
    head_rotation: float = 1.0
    """Gain on head rotation, 0..2."""
    head_translation: float = 1.0
    """Gain on head movement across the frame, 0..2."""
    scale_lock: bool = False
    """Ignore the driver's distance to the camera (stops the avatar's head from pumping)."""
    smoothing: float = 0.5
    """0 = raw landmarks, 1 = heavy smoothing (One Euro filter)."""
    lost_face_hold_s: float = 0.5
    """How long the last pose is held when the face is lost."""
    lost_face_ease_s: float = 0.8
    """How long the avatar then takes to ease back to neutral."""

    @staticmethod
    def from_section(motion: Any) -> MotionSettings:
        """The settings of config.yaml's `motion:` section (a config.MotionConfig)."""
        return MotionSettings(
            intensity=dict(vars(motion.intensity)), head_rotation=motion.head_rotation,
            head_translation=motion.head_translation, scale_lock=motion.scale_lock, smoothing=motion.smoothing,
            lost_face_hold_s=motion.lost_face_hold_s, lost_face_ease_s=motion.lost_face_ease_s,
        )

    def with_intensity_step(self, step: float) -> MotionSettings:
        """All region gains moved by `step`, kept in 0..2."""
        gains = {k: float(min(2.0, max(0.0, v + step))) for k, v in self.intensity.items()}
        return MotionSettings(**{**self.__dict__, "intensity": gains})


@dataclass(frozen=True)
class AvatarFace:
    """What motion transfer needs to know about one avatar's face, computed once per avatar."""

    points: np.ndarray
    """(478, 3) float32 avatar landmarks in canvas pixels (silhouette depth flattened, see from_points)."""
    pivot: np.ndarray
    """(3,) float32 centre of rotation of the head (behind the face), canvas pixels."""
    size_px: float
    region_gain_weights: np.ndarray
    """(478, len(REGIONS)) float32 soft region membership per landmark; rows sum to 1."""
    turn_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Gain on the head rotation about the image x (nod), y (turn) and z (tilt) axes that the generator asks for,
    because its picture of a turn reads smaller than the rotation it is given (see MeshSettings.turn_gain)."""

    @staticmethod
    def from_points(points: np.ndarray, turn_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> AvatarFace:
        """Derive the pivot and region weights from landmarks in canvas pixels."""
        points = np.asarray(points, np.float32).copy()
        size = face_size(points)
        # Flatten the depth of the face's silhouette: its true depth makes a turning head fold over itself in a
        # 2D warp (an occlusion a warp cannot show); a shallower edge foreshortens instead.
        z = points[:, 2]
        z_cap = float(np.percentile(z, SILHOUETTE_DEPTH_PERCENTILE))
        points[:, 2] = np.where(z > z_cap, z_cap + SILHOUETTE_DEPTH_KEEP * (z - z_cap), z)
        pivot = points[_RIGID].mean(0).copy()
        pivot[2] += PIVOT_DEPTH_FACES * size  # the head turns about a point well behind the face surface
        members = {
            "mouth": lm.LIPS_OUTER + lm.LIPS_INNER,
            "eyes": lm.RIGHT_EYE_RING + lm.LEFT_EYE_RING + lm.RIGHT_IRIS + lm.LEFT_IRIS,
            "brows": lm.RIGHT_BROW + lm.LEFT_BROW,
        }
        sigma = 0.08 * size
        weights = np.zeros((len(points), len(REGIONS)), np.float32)
        for k, region in enumerate(REGIONS[:-1]):
            d = np.linalg.norm(points[:, None, :2] - points[np.array(members[region])][None, :, :2], axis=2).min(1)
            weights[:, k] = np.exp(-((d / sigma) ** 2))
        weights[:, -1] = 0.05
        weights /= weights.sum(1, keepdims=True)
        return AvatarFace(points=points, pivot=pivot.astype(np.float32), size_px=size, region_gain_weights=weights,
                          turn_gain=(float(turn_gain[0]), float(turn_gain[1]), float(turn_gain[2])))


@dataclass(frozen=True)
class Neutral:
    """The driver's calibrated neutral face."""

    points: np.ndarray
    """(478, 3) float32 driver landmarks in driver-frame pixels, averaged over the calibration window."""
    eye_openness: np.ndarray
    """(2,) float32."""
    size_px: float


@dataclass(frozen=True)
class DrivenFace:
    """The avatar's face as it should be drawn this frame, in avatar canvas pixels."""

    points: np.ndarray
    """(478, 2) float32 target landmark positions."""
    rotation: np.ndarray
    """(3, 3) float32 head rotation relative to neutral, in the avatar's image axes."""
    scale: float
    shift_px: np.ndarray
    """(2,) float32 movement of the head pivot across the canvas."""
    pivot: np.ndarray
    """(3,) float32 the avatar's head pivot."""
    face_seen: bool = True
    open_lids: np.ndarray | None = None
    """(2, 14, 2) float32 or None: per eye (subject's right, left) the lid points (lm.*_EYE_UPPER then *_LOWER) of
    the same pose with the lids no more closed than the avatar's own. A generator warps the eye to these and draws
    the lids down to `points` over it (a closing lid covers the eye, it does not squash it). None: same as points."""

    def transform_rigid(self, points: np.ndarray, amount: float | np.ndarray = 1.0) -> np.ndarray:
        """(N, 2) positions of avatar points (N, 3) moved with the head only (no expression), scaled by amount."""
        moved = (points - self.pivot) @ (self.scale * self.rotation).T + self.pivot
        moved[:, :2] += self.shift_px
        amount = np.asarray(amount, np.float32).reshape(-1, 1)
        return (points[:, :2] + amount * (moved[:, :2] - points[:, :2])).astype(np.float32)


def neutral_driven(avatar: AvatarFace, face_seen: bool = True) -> DrivenFace:
    """The avatar at rest: every landmark where the avatar image has it."""
    return DrivenFace(
        points=avatar.points[:, :2].copy(), rotation=np.eye(3, dtype=np.float32), scale=1.0,
        shift_px=np.zeros(2, np.float32), pivot=avatar.pivot, face_seen=face_seen,
    )


STRICT_PATIENCE_S = 10.0
"""A live driver who keeps talking or smiling for this long (seconds of refused faces) is calibrated as they are,
with a warning to recalibrate at rest, rather than left uncalibrated for ever (a browser visitor on a talking clip
waited over 100 s in the new-user trial)."""


class Calibrator:
    """Collects a short window of driver frames for the neutral pose, refusing blinks and open mouths.

    `add` returns the window's faces once it is complete; generators turn them into their own neutral
    (the mesh generator averages landmarks, FOMM takes keypoints of the last frame).
    """

    def __init__(self, *, window_s: float = 0.3, strict: bool = True, patience_s: float | None = STRICT_PATIENCE_S):
        self.window_s = window_s
        self.strict = strict
        self.patience_s = patience_s
        """Seconds of faces refused in strict mode after which a window is taken as it is, with a warning (None:
        wait for a rest pose for ever)."""
        self._samples: list = []
        self._start_s: float | None = None
        self._refused_since_s: float | None = None
        self.status = "waiting for a face"

    def reset(self) -> None:
        """Start a new calibration window."""
        self._samples = []
        self._start_s = None
        self._refused_since_s = None
        self.status = "waiting for a face"

    def add(self, observed, time_s: float) -> list | None:
        """Feed one Observed frame; returns the list of Observed in the window once complete, else None."""
        face = observed.face if observed is not None else None
        if face is None:
            self.reset()
            return None
        problem = calibration_problem(face)
        if problem and self.strict:
            if self._refused_since_s is None:
                self._refused_since_s = time_s
            if self.patience_s is None or time_s - self._refused_since_s < self.patience_s:
                self._samples = []
                self._start_s = None
                self.status = f"calibrating: {problem} and look at the camera"
                return None
            if not self._samples:  # out of patience: this window takes the face as it is
                log.warning("no rest pose for %.0f s (%s): taking the neutral pose as the face is; recalibrate "
                            "(Ctrl+Alt+C, preview key c, the page's Recalibrate) once at rest", self.patience_s,
                            problem)
        elif problem:
            log.warning("neutral pose taken while the driver's face is not at rest (%s)", problem)
        if self._start_s is None:
            self._start_s = time_s
        self._samples.append(observed)
        self.status = "calibrating: hold still"
        if time_s - self._start_s + 1e-9 < self.window_s:
            return None
        window = self._samples
        self._samples = []
        self._start_s = None
        self._refused_since_s = None
        self.status = "calibrated"
        return window


def calibration_problem(face: FaceObservation) -> str | None:
    """Why a face is not at rest ('close your mouth', 'open your eyes'), or None when it is."""
    if mouth_openness(face.points_px) > MOUTH_OPEN_REFUSE:
        return "close your mouth"
    if max(face.blendshape("eyeBlinkLeft"), face.blendshape("eyeBlinkRight")) > EYE_CLOSED_REFUSE:
        return "open your eyes"
    return None


def neutral_from_faces(faces: list[FaceObservation]) -> Neutral:
    """Average the landmarks of a calibration window into the driver's Neutral."""
    mean = np.mean([f.points_px for f in faces], axis=0).astype(np.float32)
    return Neutral(points=mean, eye_openness=eye_openness(mean), size_px=face_size(mean))


class MotionTransfer:
    """Turns driver landmarks into the avatar's driven landmarks, relative to the driver's neutral."""

    def __init__(self, settings: MotionSettings | None = None):
        self.settings = settings or MotionSettings()
        self._filters = self._make_filters()
        self._last: DrivenFace | None = None
        self._lost_since_s: float | None = None

    def _make_filters(self) -> dict[str, OneEuroFilter]:
        """One filter per signal: head pose, expression offsets, lid openness (empty at smoothing 0)."""
        s = self.settings.smoothing
        if s <= 0:
            return {}
        factor = 0.05**s  # 0..1 onto 1 .. 1/20 of each base cutoff
        return {
            name: OneEuroFilter(min_cutoff_hz=hz * factor, beta=beta, derivative_cutoff_hz=SPEED_CUTOFF_HZ)
            for name, hz, beta in (("pose", POSE_CUTOFF_HZ, POSE_BETA),
                                   ("expression", EXPRESSION_CUTOFF_HZ, EXPRESSION_BETA),
                                   ("lids", LIDS_CUTOFF_HZ, LIDS_BETA))
        }

    def _smooth(self, name: str, value: np.ndarray, time_s: float) -> np.ndarray:
        f = self._filters.get(name)
        return value if f is None else f(value, time_s)

    def update_settings(self, settings: MotionSettings) -> None:
        """Apply new user settings (smoothing changes restart the filters)."""
        if settings.smoothing != self.settings.smoothing:
            self.settings = settings
            self._filters = self._make_filters()
        self.settings = settings

    def reset(self) -> None:
        """Forget smoothing history and the last pose (after recalibration)."""
        for f in self._filters.values():
            f.reset()
        self._last = None
        self._lost_since_s = None

    def transfer(
        self, face: FaceObservation | None, neutral: Neutral | None, avatar: AvatarFace, time_s: float
    ) -> DrivenFace:
        """The avatar's driven face for this frame; holds, then eases to neutral when the face is lost."""
        if face is None or neutral is None:
            return self._lost(avatar, time_s, neutral is not None)
        self._lost_since_s = None
        driven = self._relative(face.points_px, neutral, avatar, time_s)
        self._last = driven
        return driven

    def _lost(self, avatar: AvatarFace, time_s: float, calibrated: bool) -> DrivenFace:
        rest = neutral_driven(avatar, face_seen=False)
        if self._last is None or not calibrated:
            return rest
        if self._lost_since_s is None:
            self._lost_since_s = time_s
        elapsed = time_s - self._lost_since_s
        s = self.settings
        if elapsed <= s.lost_face_hold_s:
            return DrivenFace(**{**self._last.__dict__, "face_seen": False})
        t = min(1.0, (elapsed - s.lost_face_hold_s) / max(s.lost_face_ease_s, 1e-3))
        ease = 0.5 - 0.5 * math.cos(math.pi * t)  # smooth start and stop
        last = self._last
        for f in self._filters.values():
            f.reset()
        open_lids = None
        if last.open_lids is not None:
            rest_lids = rest.points[_LID_INDEX].reshape(2, -1, 2)
            open_lids = ((1 - ease) * last.open_lids + ease * rest_lids).astype(np.float32)
        return DrivenFace(
            open_lids=open_lids,
            points=((1 - ease) * last.points + ease * rest.points).astype(np.float32),
            rotation=_slerp_to_identity(last.rotation, ease),
            scale=(1 - ease) * last.scale + ease,
            shift_px=((1 - ease) * last.shift_px).astype(np.float32),
            pivot=avatar.pivot,
            face_seen=False,
        )

    def _relative(self, points: np.ndarray, neutral: Neutral, avatar: AvatarFace, time_s: float) -> DrivenFace:
        s = self.settings
        ref = neutral.points
        unit = 0.01 * neutral.size_px  # the filters' unit: a hundredth of the driver's face size
        # 1. Driver head pose relative to neutral, from points that move with the skull, smoothed as 7 numbers.
        scale, rotation, _ = similarity_transform(ref[_RIGID], points[_RIGID])
        axis, angle = _axis_angle(rotation)
        # The rigid points' centre is smoothed rather than the translation, which turns with the rotation.
        ref_centre = ref[_RIGID].mean(0)
        centre = points[_RIGID].mean(0).astype(np.float64)
        pose = np.concatenate([axis * math.degrees(angle), centre / unit, [100.0 * math.log(scale)]])
        pose = self._smooth("pose", pose, time_s).astype(np.float64)
        angle_deg = float(np.linalg.norm(pose[:3]))
        rotation = _rotation_from_axis_angle(pose[:3] / max(angle_deg, 1e-9), math.radians(angle_deg))
        scale = math.exp(pose[6] / 100.0)
        translation = pose[3:6] * unit - scale * rotation @ ref_centre
        # 2. Expression: where each landmark is in the neutral head frame, minus where it was at neutral.
        in_head = ((points - translation) @ rotation) / scale
        expression = self._smooth("expression", (in_head - ref) / unit, time_s) * unit
        # 3. Adapt to the avatar: roll and size difference between driver neutral and avatar, in the image plane.
        a_scale, a_rot2, _ = similarity_transform(ref[_RIGID, :2], avatar.points[_RIGID, :2])
        expression2 = (expression[:, :2] @ a_rot2.T) * a_scale
        # The mouth moves in units of its own width: a driver with a wide mouth opening it by a third of its width
        # opens a narrow-mouthed avatar's by a third of the avatar's (the judge of an opening is gap over width).
        mouth_fit = float(np.clip(_mouth_width(avatar.points) / avatar.size_px
                                  / (_mouth_width(ref) / neutral.size_px), *MOUTH_FIT_RANGE))
        region_gain = np.array([s.intensity[r] * (mouth_fit if r == "mouth" else 1.0) for r in REGIONS], np.float32)
        gains = avatar.region_gain_weights @ region_gain
        offsets = np.zeros_like(avatar.points)
        offsets[:, :2] = expression2 * gains[:, None]
        offsets[:, 2] = expression[:, 2] * a_scale * gains
        posed = avatar.points + offsets
        _keep_lip_thickness(posed, avatar.points, ref, expression, s.intensity["mouth"])
        # In percent of the neutral lid gap, so that the filter's speed term opens it during a blink as it does for
        # the other signals in their hundredths (in plain ratios a blink's speed hardly moved the cutoff: a frame late).
        ratio = self._smooth("lids", 100.0 * eye_openness(points) / np.maximum(neutral.eye_openness, 1e-3),
                             time_s) / 100.0
        open_lids = self._apply_lids(ratio, avatar, posed)
        # 4. Head pose in the avatar's image axes, around the avatar's pivot.
        a_rot3 = np.eye(3)
        a_rot3[:2, :2] = a_rot2
        rel = a_rot3 @ rotation @ a_rot3.T
        rel = _limit_rotation(_axis_gain(_scale_rotation(rel, s.head_rotation), avatar.turn_gain))
        # A 2D warp can only turn, move and zoom a head so far before the background folds: saturate softly.
        head_scale = 1.0 if s.scale_lock else float(np.exp(_soft_limit(math.log(scale), MAX_LOG_SCALE)))
        # The driver's head turns about a point behind the face as the avatar's does (same relative depth), so
        # the turn itself is not counted again as movement across the frame.
        driver_pivot = ref[_RIGID].mean(0) + np.array([0.0, 0.0, PIVOT_DEPTH_FACES * neutral.size_px])
        pivot_moved = scale * rotation @ driver_pivot + translation
        shift = (a_rot2 @ (pivot_moved - driver_pivot)[:2]) * a_scale * s.head_translation
        limit = MAX_SHIFT_FACES * avatar.size_px
        shift = shift * (_soft_limit(float(np.linalg.norm(shift)), limit) / max(float(np.linalg.norm(shift)), 1e-6))
        moved = (np.concatenate([posed, open_lids]) - avatar.pivot) @ (head_scale * rel).T + avatar.pivot
        moved[:, :2] += shift
        return DrivenFace(
            points=moved[: len(points), :2].astype(np.float32), rotation=rel.astype(np.float32), scale=head_scale,
            shift_px=shift.astype(np.float32), pivot=avatar.pivot,
            open_lids=moved[len(points):, :2].reshape(2, -1, 2).astype(np.float32),
        )

    def _apply_lids(self, ratio: np.ndarray, avatar: AvatarFace, posed: np.ndarray) -> np.ndarray:
        """Set the lids of `posed` (478, 3) to the (2,) openness ratios (driver gap / neutral gap) in place.

        The lids close by a ratio of the avatar's own gap, so any avatar's eyes close fully when the driver's do.
        Returns the (28, 3) lid points of the same pose opened no less than the avatar's own eye (see
        DrivenFace.open_lids).
        """
        gain = self.settings.intensity["eyes"]
        ratio = np.asarray(ratio, np.float64)
        # A closed eye still reads a small lid gap (about 5-10 % of the open one): that is closed.
        ratio = np.where(ratio < 1.0, np.maximum(ratio - CLOSED_EYE_RATIO, 0.0) / (1.0 - CLOSED_EYE_RATIO), ratio)
        ratio = np.clip(1.0 - gain * (1.0 - ratio), 0.0, 1.35)
        open_lids = []
        for k, (upper, lower, corners) in enumerate(_EYE_PAIRS):
            base = posed[corners, :].mean(0) - avatar.points[corners, :].mean(0)
            up = avatar.points[upper]
            low = avatar.points[lower]
            closed_at = low + (1.0 - UPPER_LID_SHARE) * (up - low)
            r = float(ratio[k])
            wide = max(r, 1.0)
            open_lids += [closed_at + wide * (up - closed_at) + base, closed_at + wide * (low - closed_at) + base]
            posed[upper] = closed_at + r * (up - closed_at) + base
            posed[lower] = closed_at + r * (low - closed_at) + base
        return np.concatenate(open_lids)


def _keep_lip_thickness(posed: np.ndarray, avatar_points: np.ndarray, driver_neutral: np.ndarray,
                        expression: np.ndarray, gain: float) -> None:
    """Give each lip of `posed` (478, 3) the avatar's own thickness scaled as the driver's lip thinned, in place.

    Expression offsets are added point by point, so a driver whose lip rolls in or thins by more than the avatar's
    whole lip is thick would fold the avatar's lip to nothing (the warp then cannot reach the inner lip and the
    mouth opens less than the driver's). The inner lip points (the opening) stay; each outer point is set at the
    avatar's outer-minus-inner lip vector from its inner point, scaled by the driver's thickness ratio (whole lip,
    now over neutral; the driver is `driver_neutral` + `expression`, both (478, 3) in the neutral head frame), within
    LIP_THICKNESS_RANGE. `gain` is the mouth intensity (0 keeps the avatar's lips as they are).
    """
    rest = driver_neutral[_LIP_OUTER, :2] - driver_neutral[_LIP_INNER, :2]
    now = rest + expression[_LIP_OUTER, :2] - expression[_LIP_INNER, :2]
    per_lip = np.sqrt((now * now).sum(1)).reshape(2, -1).sum(1) / np.maximum(
        np.sqrt((rest * rest).sum(1)).reshape(2, -1).sum(1), 1e-6)
    ratio = 1.0 + gain * (np.clip(per_lip, *LIP_THICKNESS_RANGE) - 1.0)
    posed[_LIP_OUTER] = posed[_LIP_INNER] + np.repeat(ratio, len(_LIP_OUTER) // 2)[:, None] * (
        avatar_points[_LIP_OUTER] - avatar_points[_LIP_INNER])


def _soft_limit(value: float, limit: float) -> float:
    """Identity for small values, approaching ±limit smoothly for large ones."""
    return float(limit * math.tanh(value / limit))


def _limit_rotation(rotation: np.ndarray) -> np.ndarray:
    axis, angle = _axis_angle(rotation)
    limited = _soft_limit(angle, math.radians(MAX_ROTATION_DEG))
    return _rotation_from_axis_angle(axis, limited)


def _axis_angle(rotation: np.ndarray) -> tuple[np.ndarray, float]:
    r = np.asarray(rotation, np.float64)
    angle = math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2)))
    if angle < 1e-8:
        return np.array([0.0, 0.0, 1.0]), 0.0
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(angle))
    return axis / (np.linalg.norm(axis) + 1e-12), angle


def _rotation_from_axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _axis_gain(rotation: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """The rotation with its rotation vector's x, y, z components scaled by gains."""
    if gains == (1.0, 1.0, 1.0):
        return rotation
    axis, angle = _axis_angle(rotation)
    vector = axis * angle * np.asarray(gains, np.float64)
    norm = float(np.linalg.norm(vector))
    return _rotation_from_axis_angle(vector / max(norm, 1e-12), norm)


def _scale_rotation(rotation: np.ndarray, gain: float) -> np.ndarray:
    if gain == 1.0:
        return rotation
    axis, angle = _axis_angle(rotation)
    return _rotation_from_axis_angle(axis, angle * gain)


def _slerp_to_identity(rotation: np.ndarray, t: float) -> np.ndarray:
    return _scale_rotation(rotation, 1.0 - t).astype(np.float32)
