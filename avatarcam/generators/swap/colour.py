"""Colour matching of the swapped face to the user's lighting: mean and spread per channel in CIE Lab.

Reinhard et al. 2001, "Color Transfer between Images": each Lab channel of the source is shifted and scaled so
that its mean and standard deviation over a region match the target's. Here the region is the face (eyes and
mouth left out), the source the avatar's warped face and the target the user's face under the camera's light.
The statistics are smoothed over time with an exponential moving average (time constant `time_s`), so frame-to-
frame noise of the statistics (blinks, the mouth opening, compression) does not make the face flicker. OpenCV's
8-bit Lab is used (L scaled to 0..255, a and b offset by 128), so the transform is one cv2.transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

GAIN_LIMITS = np.array([[0.6, 1.6], [0.7, 1.4], [0.7, 1.4]], np.float32)
"""Allowed spread ratio (user / avatar) per Lab channel: a beard or glasses must not turn the avatar's skin into
stripes, nor a flat painting into noise."""
MIN_PIXELS = 16


def lab_stats(image_bgr: np.ndarray, mask: np.ndarray, *, lab: np.ndarray | None = None) -> np.ndarray | None:
    """(2, 3) float32 [means, standard deviations] of 8-bit Lab channels of an (h, w, 3) uint8 BGR image (or of
    its 8-bit Lab conversion `lab`, when the caller has it) over the pixels where the (h, w) uint8 mask is non-zero;
    None when fewer than MIN_PIXELS are."""
    if int(np.count_nonzero(mask)) < MIN_PIXELS:
        return None
    if lab is None:
        lab = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2LAB)
    mean, std = cv2.meanStdDev(lab, mask=mask)
    return np.stack([mean[:, 0], std[:, 0]]).astype(np.float32)


@dataclass
class ColourMatch:
    """Smoothed Lab statistics of one face (avatar side and user side) and the transform they give."""

    time_s: float = 0.3
    """Time constant of the moving average in seconds (0: no smoothing)."""
    source: np.ndarray | None = None
    """(2, 3) float32 smoothed avatar statistics."""
    target: np.ndarray | None = None
    """(2, 3) float32 smoothed user statistics."""
    last_time_s: float | None = None

    def update(self, source: np.ndarray | None, target: np.ndarray | None, time_s: float) -> None:
        """Blend new statistics in (None: keep the old ones), weighted by the time since the last update."""
        dt = 0.0 if self.last_time_s is None else min(max(time_s - self.last_time_s, 0.0), 1.0)
        self.last_time_s = time_s
        alpha = 1.0 if self.time_s <= 0 else 1.0 - math.exp(-dt / self.time_s)
        if source is not None:
            self.source = source.copy() if self.source is None else self.source + alpha * (source - self.source)
        if target is not None:
            self.target = target.copy() if self.target is None else self.target + alpha * (target - self.target)

    def matrix(self) -> np.ndarray | None:
        """(3, 4) float32 per-channel 8-bit Lab transform (gain, offset) for cv2.transform; None before both sides
        have statistics."""
        if self.source is None or self.target is None:
            return None
        gain = np.clip(self.target[1] / np.maximum(self.source[1], 1.0), GAIN_LIMITS[:, 0], GAIN_LIMITS[:, 1])
        offset = self.target[0] - gain * self.source[0]
        out = np.zeros((3, 4), np.float32)
        out[np.arange(3), np.arange(3)] = gain
        out[:, 3] = offset
        return out


def apply_lab_transform(image_bgr: np.ndarray, matrix: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The (h, w, 3) uint8 BGR image with a (3, 4) 8-bit Lab transform applied (saturating)."""
    lab = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2LAB)
    lab = cv2.transform(lab, matrix)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR, dst=out)
