"""Occlusion cue of the face swap: where something (a hand, a cup) covers the user's face, the swap fades out there.

MediaPipe keeps tracking a face behind a hand and gives no per-point visibility, so the cue is the user's own face:
each face-mesh triangle's appearance (8-bit Lab colour and the local edge strength of L, sampled at its centroid
on the low-resolution picture of the face box, less the face's median so that a global change of light or exposure
is not a cover) has a slowly updated mean and spread per triangle. A triangle whose appearance now lies far outside
its own spread is covered. The model is keyed by triangle, not by pixel, so it follows the head as it moves and
turns; a triangle's spread learns its usual changes (shading as the head turns, a brow raised). Triangles on the
eyelids and lips (which change shape with every blink and word) are not judged themselves; the reenactor grows the
covered region past them. A covered triangle learns its new look only slowly (its mean only, over COVERED_TIME_S,
each frame's step bounded by its spread), so a lasting change of the face (a shadow that stays) is taken in after
a while instead of fading that part of the swap out for good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

FEATURES = 4
"""Per triangle: L, a, b (8-bit Lab, less the face's median) and the edge strength of L."""
LEARN_TIME_S = 2.0
"""Time constant of a visible triangle's mean and spread."""
COVERED_TIME_S = 20.0
"""Time constant of a covered triangle's mean and spread (a lasting change is taken in eventually)."""
WARM_UP_S = 0.5
"""No triangle is called covered before the model has seen the face this long."""
SPREAD_FLOOR = np.array([6.0, 4.0, 4.0, 5.0], np.float32)
"""Least standard deviation per feature (8-bit Lab levels, edge levels): below it a difference is noise (video
compression, sensor noise, small shading changes)."""
COVERED_FROM, COVERED_TO = 4.0, 6.0
"""Normalised distance (root of the sum over the features of ((value - mean) / spread)^2) where a triangle starts to
count as covered and where it is covered for certain."""


@dataclass
class OcclusionModel:
    """One face's appearance per mesh triangle over recent frames, and the covered share of each triangle now."""

    mean: np.ndarray | None = None
    """(T, FEATURES) float32 mean appearance of each triangle."""
    var: np.ndarray | None = None
    """(T, FEATURES) float32 variance of each triangle's appearance."""
    seen_s: float = 0.0
    last_time_s: float | None = None
    covered: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """(T,) float32 0..1 how surely each triangle is covered in the last frame (0 during the warm-up)."""

    def update(self, features: np.ndarray, judged: np.ndarray, time_s: float) -> np.ndarray:
        """(T,) float32 covered share of each triangle from its (T, FEATURES) appearance now; `judged` (T,) bool says
        which triangles are visible and judged (others read 0 and keep their model)."""
        dt = 0.0 if self.last_time_s is None else min(max(time_s - self.last_time_s, 0.0), 1.0)
        self.last_time_s = time_s
        if self.mean is None or self.var is None or self.mean.shape != features.shape:
            self.mean = features.copy()
            self.var = np.zeros_like(features)
            self.seen_s = 0.0
            self.covered = np.zeros(len(features), np.float32)
            return self.covered
        spread2 = self.var + SPREAD_FLOOR**2
        excess = features - self.mean
        # Edges count one way only: a cover adds edges (fingers, a cup's rim); motion blur only takes them away.
        excess[:, 3] = np.maximum(excess[:, 3], 0.0)
        distance = np.sqrt((excess**2 / spread2).sum(1))
        t = np.clip((distance - COVERED_FROM) / (COVERED_TO - COVERED_FROM), 0.0, 1.0)
        covered = np.where(judged, t * t * (3.0 - 2.0 * t), 0.0).astype(np.float32)
        if self.seen_s < WARM_UP_S:
            covered[:] = 0.0
        self.seen_s += dt
        fast = 1.0 - math.exp(-dt / LEARN_TIME_S)
        slow = 1.0 - math.exp(-dt / COVERED_TIME_S)
        alpha = (np.where(judged, np.where(covered > 0.0, slow, fast), 0.0)[:, None]).astype(np.float32)
        # Winsorised: one frame moves the mean and spread by a bounded step, so a cover is learnt only slowly.
        limit = COVERED_FROM * np.sqrt(spread2)
        delta = np.clip(features - self.mean, -limit, limit)
        self.mean += alpha * delta
        # A covered triangle's spread is kept: widening it would make the cover look ordinary within a second.
        self.var += np.where(covered[:, None] > 0.0, 0.0, alpha) * (delta * delta - self.var)
        self.covered = covered
        return covered


def triangle_features(box_lab_low: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(T, FEATURES) float32 appearance of an (h, w, 3) uint8 8-bit Lab low-resolution face box at (T, 2) centroids
    (low-resolution pixels): Lab over a 3x3 neighbourhood and the mean Sobel edge magnitude of L, with the median
    over the centroids taken off each channel."""
    lab = box_lab_low.astype(np.float32)
    gx = cv2.Sobel(lab[..., 0], cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lab[..., 0], cv2.CV_32F, 0, 1, ksize=3)
    stack = np.dstack([lab, cv2.magnitude(gx, gy) * 0.25])
    stack = cv2.blur(stack, (3, 3))
    map_xy = np.ascontiguousarray(centroids.astype(np.float32)[None])
    sampled = cv2.remap(stack, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)[0]
    sampled[:, :3] -= np.median(sampled[:, :3], 0)
    return sampled.astype(np.float32)
