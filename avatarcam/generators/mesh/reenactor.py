"""The mesh family's reenactor: relative motion transfer of the landmarks, then the dense warp."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from avatarcam.avatars import Avatar
from avatarcam.generators.base import GeneratorSections, require_torch
from avatarcam.generators.mesh.model import MeshGenerator, MeshSettings, PreparedMesh
from avatarcam.matching import shape_distance
from avatarcam.motion import MotionSettings, MotionTransfer, Neutral, neutral_from_faces
from avatarcam.types import Observed

log = logging.getLogger(__name__)


class MeshReenactor:
    """The built-in landmark-driven generator with relative motion transfer (a Reenactor[PreparedMesh, Neutral])."""

    name = "mesh"
    needs_landmarks = True

    def __init__(self, *, mesh: MeshSettings | None = None, motion: MotionSettings | None = None, warp_runner=None):
        self.generator = MeshGenerator(mesh, warp_runner=warp_runner)
        self.motion = MotionTransfer(motion)
        self.canvas_size = self.generator.settings.canvas_size

    def prepare(self, avatar: Avatar) -> PreparedMesh:
        """Spline weights and face geometry of one avatar (no drawn eyelids or mouth when its mesh does not fit)."""
        prepared = self.generator.prepare(avatar.canvas_bgr, avatar.points)
        return prepared if avatar.mesh_fit.fits else dataclasses.replace(prepared, draw_features=False)

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

    def best_match(self, prepared: Sequence[PreparedMesh], observed: Observed) -> int | None:
        """The avatar whose landmarks are closest in shape and pose to the driver's face (matching.shape_distance)."""
        if observed.face is None or not prepared:
            return None
        distances = [shape_distance(observed.face.points_px, p.face.points) for p in prepared]
        return int(np.argmin(distances))

    def close(self) -> None:
        """Release the warp runtime, if one is open."""
        if self.generator.warp_runner is not None:
            self.generator.warp_runner.close()
            self.generator.warp_runner = None


def mesh_warp_runner(backend: str, mesh: MeshSettings) -> Any:
    """An open MeshWarpRunner for a GPU runtime or a runtime asked for by name; None for the numpy/cv2 CPU path."""
    if backend == "auto":
        from avatarcam.backends import detect_hardware

        hardware = detect_hardware()
        if not hardware.cuda_available:
            log.info("mesh warp: numpy/cv2 on the CPU (no CUDA device; the fastest CPU path)")
            return None
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            log.info("mesh warp: numpy/cv2 on the CPU (a CUDA device, but torch is not installed: "
                     "python tools/install.py --torch)")
            return None
    else:
        require_torch(f"generator.backend {backend}")
    from avatarcam.generators.mesh.torch_warp import MeshWarpRunner

    runner = MeshWarpRunner(requested=backend, settings=mesh).open()
    if backend == "auto" and runner.device == "cpu":  # no GPU runtime opened: the CPU path is faster
        runner.close()
        return None
    log.info("mesh warp: %s", runner.label)
    return runner


def build_mesh_reenactor(sections: GeneratorSections) -> MeshReenactor:
    """The mesh reenactor for generator.{canvas_size, grid_size, mouth_interior, backend} and the motion section."""
    g = sections.generator
    # A motion-field cell finer than 4 canvas pixels buys nothing but time.
    mesh = MeshSettings(canvas_size=g.canvas_size, grid_size=min(g.grid_size, g.canvas_size // 4),
                        mouth_interior=g.mouth_interior)
    return MeshReenactor(mesh=mesh, motion=MotionSettings.from_section(sections.motion),
                         warp_runner=mesh_warp_runner(g.backend, mesh))
