"""LivePortrait as five exportable graphs, split by how often they run.

    per avatar   lp_appearance      source_image (1, 3, 256, 256)                -> feature_volume (1, C, D, 64, 64)
    per frame    lp_motion          image (1, 3, 256, 256)                       -> pitch, yaw, roll (1, 1) degrees,
                                                                                    t (1, 3), exp (1, K, 3),
                                                                                    scale (1, 1), kp (1, K, 3)
                 lp_warp_generate   feature_volume, kp_source, kp_driving (1, K, 3) -> image (1, 3, 512, 512)
                 lp_stitching       kp_source, kp_driving (1, K, 3)              -> kp_stitched (1, K, 3)
                 lp_retargeting     kp_source (1, K, 3), eye_ratio (1, 3), lip_ratio (1, 2)
                                                                                 -> eye_delta, lip_delta (1, K, 3)

(lp_motion also runs once per avatar for the source keypoints.) Images are float32 RGB in [0, 1], NCHW.

The warping module's two volumetric samples are exported with the plugin-free sampler (sampler.py: one 4-D
GridSample over the depth slices, blended along depth), so every graph is opset 17 with built-in ops only and IR
version 10 (avatarcam.backends.export pins it); torch runtimes keep torch's 5-D grid_sample. Static shapes, batch 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatarcam.backends.base import ModelIO, TensorSpec
from avatarcam.errors import FaceMimicError

__all__ = [
    "APPEARANCE",
    "GRAPH_NAMES",
    "MOTION",
    "PER_AVATAR",
    "PER_FRAME",
    "RETARGETING",
    "STITCHING",
    "WARP_GENERATE",
    "AppearanceGraph",
    "MotionGraph",
    "RetargetingGraph",
    "StitchingGraph",
    "WarpGenerateGraph",
    "appearance_recipe",
    "ensure_exported",
    "export_folder",
    "graph_io",
    "graph_module",
    "motion_recipe",
    "recipe",
    "retargeting_recipe",
    "sample_inputs",
    "stitching_recipe",
    "warp_generate_recipe",
]

log = logging.getLogger(__name__)

APPEARANCE = "lp_appearance"
MOTION = "lp_motion"
WARP_GENERATE = "lp_warp_generate"
STITCHING = "lp_stitching"
RETARGETING = "lp_retargeting"
GRAPH_NAMES = (APPEARANCE, MOTION, WARP_GENERATE, STITCHING, RETARGETING)
PER_AVATAR = (APPEARANCE, MOTION)
PER_FRAME = (MOTION, WARP_GENERATE, STITCHING, RETARGETING)
IMAGE_SIZE = 256
"""Side of the face crops every LivePortrait network was trained on."""
VERIFY_ATOL = {APPEARANCE: 1e-4, MOTION: 1e-4, WARP_GENERATE: 1e-4, STITCHING: 1e-5, RETARGETING: 1e-5}
"""Largest max abs error accepted between ONNX Runtime CPU and torch when an export is verified (see the export
tests for the measured values)."""


def headpose_degrees_torch(logits: torch.Tensor) -> torch.Tensor:
    """(N, B) bin logits -> (N, 1) degrees: 3 * sum_k softmax_k * k - 97.5 (as LivePortrait's camera.py)."""
    idx = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return (torch.sum(F.softmax(logits, dim=1) * idx, dim=1) * 3 - 97.5).unsqueeze(1)


class AppearanceGraph(nn.Module):
    """lp_appearance: the appearance feature extractor."""

    def __init__(self, appearance: nn.Module) -> None:
        super().__init__()
        self.appearance = appearance

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        return self.appearance(source_image)


class MotionGraph(nn.Module):
    """lp_motion: the motion extractor with pose in degrees and kp/exp reshaped to (N, K, 3)."""

    def __init__(self, motion: nn.Module) -> None:
        super().__init__()
        self.motion = motion

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.motion(image)
        n = image.shape[0]
        return (headpose_degrees_torch(out["pitch"]), headpose_degrees_torch(out["yaw"]),
                headpose_degrees_torch(out["roll"]), out["t"], out["exp"].reshape(n, -1, 3), out["scale"],
                out["kp"].reshape(n, -1, 3))


class WarpGenerateGraph(nn.Module):
    """lp_warp_generate: warping module then SPADE generator (LivePortrait's warp_decode)."""

    def __init__(self, warping: nn.Module, generator: nn.Module) -> None:
        super().__init__()
        self.warping = warping
        self.generator = generator

    def forward(self, feature_volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        warped = self.warping(feature_volume, kp_driving=kp_driving, kp_source=kp_source)
        return self.generator(warped["out"])


class StitchingGraph(nn.Module):
    """lp_stitching: the stitching MLP on [x_s, x_d] and its delta applied (63 offsets, then tx, ty on x, y)."""

    def __init__(self, stitching: nn.Module) -> None:
        super().__init__()
        self.stitching = stitching

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        n, k, _ = kp_source.shape
        delta = self.stitching(torch.cat([kp_source.reshape(n, -1), kp_driving.reshape(n, -1)], dim=1))
        shift = torch.cat([delta[:, 3 * k: 3 * k + 2], torch.zeros_like(delta[:, :1])], dim=1)
        return kp_driving + delta[:, : 3 * k].reshape(n, k, 3) + shift.reshape(n, 1, 3)


class RetargetingGraph(nn.Module):
    """lp_retargeting: eye and lip retargeting MLPs on [x_s, ratios] -> keypoint deltas (N, K, 3)."""

    def __init__(self, eye: nn.Module, lip: nn.Module) -> None:
        super().__init__()
        self.eye = eye
        self.lip = lip

    def forward(self, kp_source: torch.Tensor, eye_ratio: torch.Tensor,
                lip_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k, _ = kp_source.shape
        flat = kp_source.reshape(n, -1)
        eye = self.eye(torch.cat([flat, eye_ratio], dim=1)).reshape(n, k, 3)
        lip = self.lip(torch.cat([flat, lip_ratio], dim=1)).reshape(n, k, 3)
        return eye, lip


def graph_module(models: Any, name: str, *, sampler: str = "slices") -> nn.Module:
    """The torch module of one graph, in eval mode (the warping module uses `sampler`; see sampler.py).

    The warping module is shared with `models`, so setting the sampler here sets it for every user of `models`.
    """
    from avatarcam.generators.liveportrait.model import set_sampler

    if name == APPEARANCE:
        return AppearanceGraph(models.appearance).eval()
    if name == MOTION:
        return MotionGraph(models.motion).eval()
    if name == WARP_GENERATE:
        return WarpGenerateGraph(set_sampler(models.warping, sampler), models.generator).eval()
    if name == STITCHING:
        return StitchingGraph(models.stitching).eval()
    if name == RETARGETING:
        return RetargetingGraph(models.eye, models.lip).eval()
    raise ValueError(f"LivePortrait graph {name!r} is not one of {', '.join(GRAPH_NAMES)}")


def graph_io(models: Any, name: str) -> ModelIO:
    """Inputs and outputs of one graph (static shapes, batch 1) for the loaded widths."""
    k = models.motion.config.num_kp
    fa = models.appearance.config
    side = IMAGE_SIZE // 2**fa.num_down_blocks
    volume = (1, fa.reshape_channel, fa.reshape_depth, side, side)
    out_side = side * 4 * (2 if models.generator.config.upscale > 1 else 1)

    def spec(n: str, shape: tuple[int, ...]) -> TensorSpec:
        return TensorSpec(name=n, shape=shape, dtype="float32")

    image = (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    kp = (1, k, 3)
    table = {
        APPEARANCE: ((spec("source_image", image),), (spec("feature_volume", volume),)),
        MOTION: ((spec("image", image),), (
            spec("pitch", (1, 1)), spec("yaw", (1, 1)), spec("roll", (1, 1)), spec("t", (1, 3)),
            spec("exp", kp), spec("scale", (1, 1)), spec("kp", kp))),
        WARP_GENERATE: ((spec("feature_volume", volume), spec("kp_source", kp), spec("kp_driving", kp)),
                        (spec("image", (1, 3, out_side, out_side)),)),
        STITCHING: ((spec("kp_source", kp), spec("kp_driving", kp)), (spec("kp_stitched", kp),)),
        RETARGETING: ((spec("kp_source", kp), spec("eye_ratio", (1, 3)), spec("lip_ratio", (1, 2))),
                      (spec("eye_delta", kp), spec("lip_delta", kp))),
    }
    inputs, outputs = table[name]
    return ModelIO(inputs=inputs, outputs=outputs)


def sample_inputs(models: Any, name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible random inputs of one graph: images in [0, 1], keypoints like a motion extractor's (about +-0.7,
    driving = source plus a small motion), feature volumes of order 1, eye/lip ratios in their ranges."""
    io = graph_io(models, name)
    shapes = {s.name: tuple(int(d or 1) for d in s.shape or ()) for s in io.inputs}
    feed: dict[str, np.ndarray] = {}
    for n, shape in shapes.items():
        if n in ("image", "source_image"):
            feed[n] = rng.uniform(0, 1, shape)
        elif n == "feature_volume":
            feed[n] = rng.normal(0, 1, shape)
        elif n == "kp_source":
            feed[n] = rng.uniform(-0.7, 0.7, shape)
        elif n == "eye_ratio":
            feed[n] = rng.uniform(0.05, 0.45, shape)
        elif n == "lip_ratio":
            feed[n] = rng.uniform(0.0, 0.7, shape)
    if "kp_driving" in shapes:
        feed["kp_driving"] = feed["kp_source"] + rng.normal(0, 0.05, shapes["kp_driving"])
    return {n: feed[n].astype(np.float32) for n in shapes}


def export_folder(models: Any, *, engines_dir: Path | str) -> Path:
    """engines/liveportrait-<weights key>/: one folder per weights (and model code) version."""
    return Path(engines_dir) / f"liveportrait-{models.key}"



def ensure_exported(models: Any, *, engines_dir: Path | str, names: tuple[str, ...] = GRAPH_NAMES,
                    log_line: Callable[[str], None] = log.info) -> dict[str, Path]:
    """name -> ONNX path in export_folder(); exports and verifies (ONNX Runtime CPU vs torch) what is missing."""
    from avatarcam.backends.export import export_mismatch, export_onnx
    from avatarcam.backends.verify import verify_onnx

    folder = export_folder(models, engines_dir=engines_dir)
    paths = {}
    for name in names:
        path = folder / f"{name}.onnx"
        paths[name] = path
        io = graph_io(models, name)
        problem = export_mismatch(path, io) if path.exists() else "not exported yet"
        if problem is None:
            continue
        log_line(f"Exporting {name} to {path} ({problem}); first use, this takes a while")
        try:
            exported = export_onnx(graph_module(models, name, sampler="slices"),
                                   sample_inputs(models, name, np.random.default_rng(0)), path,
                                   input_names=io.input_names, output_names=io.output_names)
            # Verified against the original op: the plugin-free graph must equal torch's 5-D grid_sample.
            errors = verify_onnx(exported, graph_module(models, name, sampler="torch"),
                                 sample_inputs(models, name, np.random.default_rng(1)), atol=VERIFY_ATOL[name])
        except FaceMimicError:
            path.unlink(missing_ok=True)  # never leave an unverified export where the next start would trust it
            raise
        finally:
            graph_module(models, name, sampler="torch")  # torch runtimes keep the original op
        log_line(f"{name}: exported; max abs error vs torch {max(errors.values()):.2e}")
    return paths


def onnx_grid_sample_ranks(onnx_path: Path | str) -> list[int]:
    """Rank of the data input of every GridSample node in an ONNX file (after shape inference)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    ranks = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return [ranks.get(node.input[0], -1) for node in model.graph.node if node.op_type == "GridSample"]


# --------------------------------------------------------------------------------------------------------------------
# Registry factories (the export registry takes functions without arguments).
# --------------------------------------------------------------------------------------------------------------------

CHECKPOINT_ENV = "FACEMIMIC_LIVEPORTRAIT_CHECKPOINT"
"""The weights folder the registry factories export; unset: the tiny random test weights (a smoke test only)."""


def _registry_models() -> Any:
    import os

    from avatarcam.generators.liveportrait.checkpoint import load_liveportrait
    from avatarcam.paths import PROJECT_ROOT

    value = os.environ.get(CHECKPOINT_ENV, "").strip()
    if value:
        return load_liveportrait(value)
    log.warning("%s is not set: exporting the random-weight tiny LivePortrait test model (a smoke test only); set it "
                "to your pretrained_weights/liveportrait folder to export real weights", CHECKPOINT_ENV)
    return load_liveportrait(PROJECT_ROOT / "tests" / "fixtures" / "liveportrait" / "tiny-weights")


def recipe(name: str, models: Any = None) -> Any:
    """backends.models.ExportRecipe of one graph (plugin-free sampler) for `models` (default: _registry_models())."""
    from avatarcam.backends.models import ExportRecipe

    models = _registry_models() if models is None else models
    io = graph_io(models, name)
    return ExportRecipe(module=graph_module(models, name, sampler="slices"),
                        example_inputs=sample_inputs(models, name, np.random.default_rng(0)),
                        output_names=io.output_names, make_inputs=lambda rng: sample_inputs(models, name, rng),
                        atol=VERIFY_ATOL[name])


def appearance_recipe() -> Any:
    """Registry factory: lp_appearance of $FACEMIMIC_LIVEPORTRAIT_CHECKPOINT."""
    return recipe(APPEARANCE)


def motion_recipe() -> Any:
    """Registry factory: lp_motion."""
    return recipe(MOTION)


def warp_generate_recipe() -> Any:
    """Registry factory: lp_warp_generate."""
    return recipe(WARP_GENERATE)


def stitching_recipe() -> Any:
    """Registry factory: lp_stitching."""
    return recipe(STITCHING)


def retargeting_recipe() -> Any:
    """Registry factory: lp_retargeting."""
    return recipe(RETARGETING)
