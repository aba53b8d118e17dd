"""Reenactors: one per generator, each turning (avatar, driver frame, neutral) into an output canvas.

A reenactor is what the live pipeline, the offline renderer and the benchmark drive, so all three produce the
same frames from the same inputs.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from avatarcam.avatars import Avatar
from avatarcam.generators.mesh.model import MeshGenerator, MeshSettings, PreparedMesh
from avatarcam.motion import MotionSettings, MotionTransfer, Neutral, neutral_from_faces
from avatarcam.types import Observed


class Reenactor(Protocol):
    """The per-generator stage of the pipeline."""

    name: str
    canvas_size: int

    def prepare(self, avatar: Avatar) -> Any:
        """Everything computed once per avatar (may take a second; run it off the render thread)."""

    def neutral_from(self, window: list[Observed]) -> Any:
        """The driver's neutral from a calibration window."""

    def render(self, prepared: Any, observed: Observed | None, neutral: Any, time_s: float,
               out: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Draw the avatar for this driver frame into `out` (S, S, 3) uint8 BGR and return it."""

    def reset(self) -> None:
        """Forget temporal state (after recalibration or an avatar switch)."""


class MeshReenactor:
    """The built-in landmark-driven generator with relative motion transfer."""

    name = "mesh"

    def __init__(self, *, mesh: MeshSettings | None = None, motion: MotionSettings | None = None, warp_runner=None):
        self.generator = MeshGenerator(mesh, warp_runner=warp_runner)
        self.motion = MotionTransfer(motion)
        self.canvas_size = self.generator.settings.canvas_size

    def prepare(self, avatar: Avatar) -> PreparedMesh:
        """Spline weights and face geometry of one avatar."""
        return self.generator.prepare(avatar.canvas_bgr, avatar.points)

    def neutral_from(self, window: list[Observed]) -> Neutral:
        """Average the calibration window's landmarks."""
        return neutral_from_faces([o.face for o in window if o.face is not None])

    def render(self, prepared: PreparedMesh, observed: Observed | None, neutral: Neutral | None, time_s: float,
               out: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Motion transfer, then the warp."""
        start = time.perf_counter()
        face = observed.face if observed is not None else None
        driven = self.motion.transfer(face, neutral, prepared.face, time_s)
        mid = time.perf_counter()
        self.generator.generate(prepared, driven, out)
        if timings is not None:
            timings["motion"] = (mid - start) * 1000
            timings["generate"] = (time.perf_counter() - mid) * 1000
        return out

    def reset(self) -> None:
        """Restart smoothing and the lost-face timer."""
        self.motion.reset()

    @property
    def runtime(self) -> str:
        """Where the warp runs: 'numpy/cv2 (CPU)' or the backend runner's label."""
        runner = self.generator.warp_runner
        return "numpy/cv2 (CPU)" if runner is None else runner.label

    def close(self) -> None:
        """Release the warp runtime, if one is open."""
        if self.generator.warp_runner is not None:
            self.generator.warp_runner.close()
            self.generator.warp_runner = None
