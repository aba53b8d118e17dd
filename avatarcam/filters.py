"""Temporal smoothing: a vectorised One Euro filter (Casiez et al. 2012) over arrays of any shape."""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff_hz: np.ndarray | float, dt_s: float) -> np.ndarray:
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff_hz))
    return np.asarray(1.0 / (1.0 + tau / dt_s))


class OneEuroFilter:
    """Adaptive low-pass filter: strong smoothing when still, little lag when moving fast.

    `min_cutoff_hz` sets the smoothing of slow motion (lower is smoother), `beta` how quickly the cutoff rises
    with speed (higher is less lag). Values are in the units of the filtered array per second.
    """

    def __init__(self, *, min_cutoff_hz: float = 1.0, beta: float = 0.05, derivative_cutoff_hz: float = 1.0):
        if min_cutoff_hz <= 0 or beta < 0 or derivative_cutoff_hz <= 0:
            raise ValueError(
                f"OneEuroFilter needs min_cutoff_hz > 0, beta >= 0, derivative_cutoff_hz > 0; got "
                f"{min_cutoff_hz}, {beta}, {derivative_cutoff_hz}"
            )
        self.min_cutoff_hz = min_cutoff_hz
        self.beta = beta
        self.derivative_cutoff_hz = derivative_cutoff_hz
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time_s: float | None = None

    def reset(self) -> None:
        """Forget the history; the next sample passes through unchanged."""
        self._value = self._speed = self._time_s = None

    def __call__(self, value: np.ndarray, time_s: float) -> np.ndarray:
        """Filter one sample taken at `time_s` (seconds, increasing); returns a new array of the same shape."""
        value = np.asarray(value, dtype=np.float32)
        if self._value is None or self._time_s is None or time_s <= self._time_s:
            self._value = value.copy()
            self._speed = np.zeros_like(value)
            self._time_s = time_s
            return self._value.copy()
        dt_s = time_s - self._time_s
        self._time_s = time_s
        speed = (value - self._value) / dt_s
        a_d = _alpha(self.derivative_cutoff_hz, dt_s)
        previous_speed = np.zeros_like(value) if self._speed is None else self._speed
        self._speed = a_d * speed + (1 - a_d) * previous_speed
        cutoff = self.min_cutoff_hz + self.beta * np.abs(self._speed)
        a = _alpha(cutoff, dt_s).astype(np.float32)
        self._value = a * value + (1 - a) * self._value
        return self._value.copy()
