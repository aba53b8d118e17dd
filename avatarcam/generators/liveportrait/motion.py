"""LivePortrait's per-frame keypoint arithmetic in numpy (float32), as its wrapper and pipeline do it.

Sources (facts, not code): KwaiVGI/LivePortrait src/utils/camera.py, src/live_portrait_wrapper.py (transform_keypoint,
stitching, retarget_eye/lip) and src/live_portrait_pipeline.py (the relative-motion branch of `execute`).

Keypoints are (x, y, z) in the feature volume's normalised cube, x along W, y along H, z along depth, each -1..1.
A frame's motion (`KeypointInfo`) is what the motion extractor reads from a 256x256 face crop:
    kp (1, K, 3) canonical keypoints, exp (1, K, 3) expression offsets, R (1, 3, 3) head rotation,
    scale (1, 1), t (1, 3) translation; plus the pose in degrees.
Its posed keypoints are x = scale * (kp @ R + exp) + [tx, ty, 0] (tz is never used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EYE_KEYPOINTS",
    "LIP_KEYPOINTS",
    "KeypointInfo",
    "MotionGains",
    "apply_stitching",
    "headpose_degrees",
    "motion_multiplier",
    "relative_keypoints",
    "rotation_matrix",
    "transform_keypoint",
]

EYE_KEYPOINTS = (11, 13, 15, 16, 18)
"""Keypoints whose expression offsets the original pipeline treats as the eyes (animation_region 'eyes')."""
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
"""Keypoints whose expression offsets the original pipeline treats as the lips (animation_region 'lip')."""


def headpose_degrees(logits: np.ndarray) -> np.ndarray:
    """(N, B) bin logits -> (N, 1) degrees: 3 * E_softmax[bin] - 97.5 (the expectation, not the argmax)."""
    x = np.asarray(logits, np.float64)  # float64 inside: one float32 rounding at the end
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    idx = np.arange(x.shape[1], dtype=np.float64)
    return ((p * idx).sum(axis=1) * 3.0 - 97.5).reshape(-1, 1).astype(np.float32)


def rotation_matrix(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(N, 1) degrees each -> (N, 3, 3) float32 (Rz(roll) Ry(yaw) Rx(pitch))^T, for row vectors: x @ R."""
    def rad(v: np.ndarray) -> np.ndarray:
        return (np.asarray(v, np.float32).reshape(-1) / np.float32(180) * np.float32(math.pi)).astype(np.float32)

    x, y, z = rad(pitch), rad(yaw), rad(roll)
    n = x.shape[0]
    one, zero = np.ones(n, np.float32), np.zeros(n, np.float32)
    rx = np.stack([one, zero, zero, zero, np.cos(x), -np.sin(x), zero, np.sin(x), np.cos(x)], 1).reshape(n, 3, 3)
    ry = np.stack([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], 1).reshape(n, 3, 3)
    rz = np.stack([np.cos(z), -np.sin(z), zero, np.sin(z), np.cos(z), zero, zero, zero, one], 1).reshape(n, 3, 3)
    return np.ascontiguousarray((rz @ ry @ rx).transpose(0, 2, 1)).astype(np.float32)


@dataclass(frozen=True)
class KeypointInfo:
    """One image's motion-extractor reading (see the module docstring); float32 numpy arrays, batch 1."""

    kp: np.ndarray
    exp: np.ndarray
    pitch: np.ndarray
    yaw: np.ndarray
    roll: np.ndarray
    t: np.ndarray
    scale: np.ndarray
    R: np.ndarray

    @classmethod
    def from_outputs(cls, out: dict[str, np.ndarray]) -> KeypointInfo:
        """From the motion graph's outputs: pitch/yaw/roll (N, 1) degrees, t (N, 3), exp and kp (N, K, 3) or
        (N, 3K), scale (N, 1)."""
        n = out["kp"].shape[0]
        pitch, yaw, roll = (np.asarray(out[k], np.float32).reshape(n, 1) for k in ("pitch", "yaw", "roll"))
        return cls(kp=np.asarray(out["kp"], np.float32).reshape(n, -1, 3),
                   exp=np.asarray(out["exp"], np.float32).reshape(n, -1, 3), pitch=pitch, yaw=yaw, roll=roll,
                   t=np.asarray(out["t"], np.float32).reshape(n, 3),
                   scale=np.asarray(out["scale"], np.float32).reshape(n, 1),
                   R=rotation_matrix(pitch, yaw, roll))


def transform_keypoint(info: KeypointInfo) -> np.ndarray:
    """(N, K, 3) posed keypoints: scale * (kp @ R + exp) + [tx, ty, 0] (LivePortrait's Eqn. 2, tz unused)."""
    x = (info.kp @ info.R + info.exp) * info.scale[:, :, None]
    x[:, :, 0:2] += info.t[:, None, 0:2]
    return x.astype(np.float32)


@dataclass(frozen=True)
class MotionGains:
    """FaceMimic's controls over the relative motion; all 1 and False reproduce LivePortrait exactly.

    expression: (K,) gain on each keypoint's expression change (per-region intensity); rotation: gain on the
    relative rotation angle; translation: gain on the relative translation; scale_lock: keep the avatar's scale.
    """

    expression: np.ndarray | float = 1.0
    rotation: float = 1.0
    translation: float = 1.0
    scale_lock: bool = False


def _scaled_rotation(r_rel: np.ndarray, gain: float) -> np.ndarray:
    """(N, 3, 3) rotation with its angle multiplied by gain (axis-angle, Rodrigues); gain 1 returns r_rel."""
    if gain == 1.0:
        return r_rel
    out = np.empty_like(r_rel)
    for i, r in enumerate(r_rel.astype(np.float64)):
        angle = math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2)))
        if angle < 1e-8:
            out[i] = np.eye(3)
            continue
        axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(angle))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        a = gain * angle
        out[i] = np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)
    return out.astype(np.float32)


def relative_keypoints(source: KeypointInfo, driving: KeypointInfo, initial: KeypointInfo,
                       gains: MotionGains | None = None) -> np.ndarray:
    """(N, K, 3) driven keypoints: the driving frame's motion since `initial`, applied to the source.

    LivePortrait's relative branch for a source image (animation_region 'all'):
        R_new = (R_d R_0^T) R_s;  exp_new = exp_s + (exp_d - exp_0);  scale_new = scale_s * scale_d / scale_0;
        t_new = t_s + (t_d - t_0) with tz = 0;  x = scale_new * (kp_s @ R_new + exp_new) + t_new.
    With `gains` the rotation angle, expression change (per keypoint), translation change are scaled and the scale
    change can be dropped; the default gains are the formula above exactly.
    """
    g = gains or MotionGains()
    r_rel = driving.R @ initial.R.transpose(0, 2, 1)
    r_new = _scaled_rotation(r_rel, g.rotation) @ source.R
    exp_change = driving.exp - initial.exp
    if not (np.isscalar(g.expression) and g.expression == 1.0):
        exp_change = exp_change * np.asarray(g.expression, np.float32).reshape(1, -1, 1)
    exp_new = source.exp + exp_change
    scale_new = source.scale if g.scale_lock else source.scale * (driving.scale / initial.scale)
    t_change = driving.t - initial.t
    if g.translation != 1.0:
        t_change = t_change * np.float32(g.translation)
    t_new = (source.t + t_change).copy()
    t_new[..., 2] = 0
    x = scale_new[:, :, None] * (source.kp @ r_new + exp_new) + t_new[:, None, :]
    return x.astype(np.float32)


def motion_multiplier(x_s: np.ndarray, x_d_0: np.ndarray) -> float:
    """The 'expression-friendly' multiplier sqrt(hull volume of x_s) / sqrt(hull volume of x_d_0) (scipy's hull).

    In the relative path x_d_0 rebuilds x_s (R_0 R_0^T = I), so this is 1 up to rounding (1 + 1e-7 on the fixture);
    without scipy (not a FaceMimic requirement) it is taken as exactly 1.
    """
    try:
        from scipy.spatial import ConvexHull
    except ImportError:
        return 1.0

    return float(np.sqrt(ConvexHull(x_s.reshape(-1, 3)).volume) / np.sqrt(ConvexHull(x_d_0.reshape(-1, 3)).volume))


def apply_stitching(x_d: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """x_d (N, K, 3) plus the stitching MLP's delta (N, 3K + 2): 3K expression offsets, then tx, ty on x and y."""
    n, k, _ = x_d.shape
    out = x_d + delta[:, : 3 * k].reshape(n, k, 3)
    out[..., :2] += delta[:, 3 * k: 3 * k + 2].reshape(n, 1, 2)
    return out.astype(np.float32)
