"""FOMM as three exportable models: keypoint detector, source encoder (once per avatar), frame generator (per frame).

The three share one naming scheme with `EXPORTABLE_MODELS` and the reenactor:

    fomm_kp_detector      image (1, 3, H, W)                      -> kp_value (1, K, 2), kp_jacobian (1, K, 2, 2)
    fomm_source_encoder   source_image (1, 3, H, W)               -> source_features (1, F, H/4, W/4)
    fomm_frame_generator  source_image, source_features, kp_source_value, kp_source_jacobian,
                          kp_driving_value, kp_driving_jacobian   -> prediction (1, 3, H, W)

Images are float32 RGB in [0, 1], NCHW; keypoints as in `fomm.model`. Shapes are static (batch 1, one image size),
so ONNX Runtime binds preallocated buffers and TensorRT builds one profile.

Which checkpoint: the reenactor passes its own (`recipes_for`, `ensure_exported`) and keeps every checkpoint's files
in its own folder, engines/fomm-<weights hash>/, so another checkpoint never reuses a stale export. The registry
factories (`kp_detector_recipe`, ...) take no arguments, so they read the checkpoint path from the environment
variable FACEMIMIC_FOMM_CHECKPOINT; when it is unset they export the random-weight tiny test model in
tests/fixtures/fomm/ (a smoke test of the export path, useless for animation) and say so in the log.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.base import ModelIO, TensorSpec
from avatarcam.backends.models import ExportRecipe
from avatarcam.errors import ConfigError, EngineError, FaceMimicError
from avatarcam.paths import PROJECT_ROOT

__all__ = [
    "CHECKPOINT_ENV",
    "DEFAULT_IMAGE_SIZE",
    "FRAME_GENERATOR",
    "FRAME_MOTION",
    "KP_DETECTOR",
    "MODEL_NAMES",
    "SOURCE_ENCODER",
    "FommModels",
    "choose_image_size",
    "ensure_exported",
    "export_folder",
    "frame_generator_recipe",
    "kp_detector_recipe",
    "load_fomm_models",
    "model_io",
    "recipes_for",
    "source_encoder_recipe",
    "weights_key",
]

log = logging.getLogger(__name__)

KP_DETECTOR = "fomm_kp_detector"
SOURCE_ENCODER = "fomm_source_encoder"
FRAME_GENERATOR = "fomm_frame_generator"
MODEL_NAMES = (KP_DETECTOR, SOURCE_ENCODER, FRAME_GENERATOR)
# The float32 first half of the frame generator (dense motion + warped encoding), exported only for the bf16 / int8
# CPU paths (fomm_fast), which run it on ONNX Runtime and the rest of the generator on torch. The name carries the
# graph's version (v3: hourglass up blocks as fomm_fast.UpsampleConvPhases from side 8 on, mask and occlusion heads
# as one convolution), so an older export is never reused (the weights key also hashes fomm_fast's source).
FRAME_MOTION = "fomm_frame_motion_v3"

CHECKPOINT_ENV = "FACEMIMIC_FOMM_CHECKPOINT"
SMOKE_CHECKPOINT = PROJECT_ROOT / "tests" / "fixtures" / "fomm" / "tiny-checkpoint.pth.tar"
# FOMM's demo and Avatarify resize source and driving frames to 256x256 whatever the checkpoint's layer widths, and
# every released FOMM checkpoint (vox, vox-adv, taichi, fashion, mgif, bair, nemo) was trained at 256x256.
DEFAULT_IMAGE_SIZE = 256
KEY_CHARS = 16


@dataclass(frozen=True)
class FommModels:
    """A loaded checkpoint: torch modules in eval mode, the image size they run at and the weights' cache key."""

    config: Any
    """The FommConfig: from the FOMM YAML when one was given, else inferred from the checkpoint's shapes."""
    kp_detector: Any
    """FommKeypointDetector; None once released (no runtime runs torch)."""
    generator: Any
    """FommGenerator; None once released."""
    image_size: int
    """Side of the square crops the models see, in pixels (256 unless the user chose another, see choose_image_size)."""
    key: str
    """`weights_key` of the two modules: names the export folder."""
    checkpoint: Path

    def without_modules(self) -> FommModels:
        """The same description without the torch modules, so their memory (240 MB for vox) can be freed."""
        return replace(self, kp_detector=None, generator=None)


def choose_image_size(config: Any, *, image_size: int | None = None, fomm_yaml: Any = None) -> int:
    """The model's square input size: image_size if given, else the FOMM YAML's frame_shape, else 256.

    Never guessed from the layer widths: FOMM's demo and Avatarify run every checkpoint at 256x256, so a checkpoint
    of other widths at another size would animate differently from the original code. ConfigError names the value,
    where it came from and the sizes this model accepts.
    """
    if image_size is not None:
        size, origin = image_size, "generator.fomm_size (--fomm-size)"
    elif fomm_yaml is not None and fomm_yaml.frame_size is not None:
        size, origin = fomm_yaml.frame_size, f"dataset_params.frame_shape of {fomm_yaml.path}"
    else:
        size, origin = DEFAULT_IMAGE_SIZE, "the default"
    if isinstance(size, bool) or not isinstance(size, int) or size % config.image_size_multiple or size <= 0:
        allowed = ", ".join(map(str, config.allowed_image_sizes()))
        raise ConfigError(
            f"FOMM input size {size!r} (from {origin}) does not fit this model: it needs a multiple of "
            f"{config.image_size_multiple}, i.e. one of {allowed}, ...; 256 is what FOMM's demo and Avatarify use"
        )
    return size


def weights_key(kp_detector: Any, generator: Any) -> str:
    """First 16 hex digits of a hash over both modules' weights and model code (export.source_hash of each) and the
    source of fomm_fast, whose modules are what the keypoint detector's and the motion graph's exports contain."""
    from avatarcam.backends.export import source_hash
    from avatarcam.generators.fomm import fast

    digest = hashlib.sha256()
    for module in (kp_detector, generator):
        digest.update(source_hash(module).encode())
    digest.update(inspect.getsource(fast).encode())
    return digest.hexdigest()[:KEY_CHARS]


def load_fomm_models(
    checkpoint: Path | str, *, image_size: int | None = None, fomm_config: Path | str | None = None
) -> FommModels:
    """Load a checkpoint and compute its cache key; ModelFileError if unusable, ConfigError for a bad size or YAML.

    fomm_config: FOMM's own YAML (e.g. config/vox-adv-256.yaml); its model_params must describe the checkpoint, and
    its dataset_params.frame_shape sets the size when image_size is None. Without it the config is inferred from the
    checkpoint's shapes. The size is `choose_image_size`'s: 256 unless the user says otherwise.
    """
    from avatarcam.generators.fomm.checkpoint import load_fomm_checkpoint, read_fomm_yaml

    checkpoint = Path(checkpoint).expanduser()
    fomm_yaml = None if fomm_config is None else read_fomm_yaml(fomm_config)
    kp_detector, generator = load_fomm_checkpoint(checkpoint, None if fomm_yaml is None else fomm_yaml.config)
    config = kp_detector.config
    size = choose_image_size(config, image_size=image_size, fomm_yaml=fomm_yaml)
    return FommModels(
        config=config,
        kp_detector=kp_detector,
        generator=generator,
        image_size=size,
        key=weights_key(kp_detector, generator),
        checkpoint=checkpoint,
    )


# --------------------------------------------------------------------------------------------------------------------
# I/O contracts and recipes.
# --------------------------------------------------------------------------------------------------------------------


def _feature_shape(models: FommModels) -> tuple[int, int, int, int]:
    gen = models.config.generator
    channels = min(gen.max_features, gen.block_expansion * 2**gen.num_down_blocks)
    side = models.image_size // 2**gen.num_down_blocks
    return (1, channels, side, side)


def model_io(models: FommModels) -> dict[str, ModelIO]:
    """name -> ModelIO of the three models (and FRAME_MOTION) at models.image_size (what the torch runtime declares)."""
    size, num_kp = models.image_size, models.config.num_kp
    channels = models.config.num_channels

    def spec(name: str, shape: tuple[int, ...]) -> TensorSpec:
        return TensorSpec(name=name, shape=shape, dtype="float32")

    image = (1, channels, size, size)
    kp = (spec("kp_value", (1, num_kp, 2)), spec("kp_jacobian", (1, num_kp, 2, 2)))
    frame_inputs = (
        spec("source_image", image),
        spec("source_features", _feature_shape(models)),
        spec("kp_source_value", (1, num_kp, 2)),
        spec("kp_source_jacobian", (1, num_kp, 2, 2)),
        spec("kp_driving_value", (1, num_kp, 2)),
        spec("kp_driving_jacobian", (1, num_kp, 2, 2)),
    )
    return {
        KP_DETECTOR: ModelIO(inputs=(spec("image", image),), outputs=kp),
        SOURCE_ENCODER: ModelIO(
            inputs=(spec("source_image", image),), outputs=(spec("source_features", _feature_shape(models)),)
        ),
        FRAME_GENERATOR: ModelIO(inputs=frame_inputs, outputs=(spec("prediction", image),)),
        FRAME_MOTION: ModelIO(inputs=frame_inputs, outputs=(spec("warped_features", _feature_shape(models)),)),
    }


def _random_keypoints(rng: np.random.Generator, num_kp: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints inside the frame with well-conditioned jacobians, like a trained detector's (det ~ 0.4 .. 2)."""
    value = rng.uniform(-0.8, 0.8, size=(1, num_kp, 2)).astype(np.float32)
    jacobian = (np.eye(2, dtype=np.float32) + rng.normal(0.0, 0.15, size=(1, num_kp, 2, 2))).astype(np.float32)
    return value, jacobian


def _module_builders(models: FommModels) -> dict[str, Callable[[], Any]]:
    """name -> the module that is exported (the keypoint detector as fomm_fast.FommFastKeypointDetector: the same
    function, faster on ONNX Runtime)."""
    from avatarcam.generators.fomm.fast import FommFastKeypointDetector, FommFrameMotion
    from avatarcam.generators.fomm.model import FommFrameGenerator, FommSourceEncoder

    return {
        KP_DETECTOR: lambda: FommFastKeypointDetector(models.kp_detector, models.image_size),
        SOURCE_ENCODER: lambda: FommSourceEncoder(models.generator),
        FRAME_GENERATOR: lambda: FommFrameGenerator(models.generator),
        FRAME_MOTION: lambda: FommFrameMotion(models.generator, models.image_size),
    }


def _make_inputs(models: FommModels, name: str) -> Callable[[np.random.Generator], dict[str, np.ndarray]]:
    io = model_io(models)[name]
    num_kp = models.config.num_kp

    def make(rng: np.random.Generator) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        for spec in io.inputs:
            if spec.shape is None or None in spec.shape:
                raise EngineError(f"FOMM export input {spec.name} has no static shape ({spec.shape}): a bug")
            shape = tuple(int(d) for d in spec.shape if d is not None)
            if spec.name in ("image", "source_image"):
                feed[spec.name] = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
            elif spec.name == "source_features":
                # Encoder features come out of ReLU and average pooling: non-negative, order 1.
                feed[spec.name] = rng.uniform(0.0, 2.0, size=shape).astype(np.float32)
        if "kp_source_value" in {s.name for s in io.inputs}:
            feed["kp_source_value"], feed["kp_source_jacobian"] = _random_keypoints(rng, num_kp)
            feed["kp_driving_value"], feed["kp_driving_jacobian"] = _random_keypoints(rng, num_kp)
        return {spec.name: feed[spec.name] for spec in io.inputs}  # forward() order

    return make


def recipes_for(models: FommModels) -> dict[str, ExportRecipe]:
    """name -> ExportRecipe of the FOMM models (model_io's names) of one loaded checkpoint (static shapes, batch 1)."""
    recipes = {}
    builders = _module_builders(models)
    for name, io in model_io(models).items():
        make = _make_inputs(models, name)
        recipes[name] = ExportRecipe(
            module=builders[name](),
            example_inputs=make(np.random.default_rng(0)),
            output_names=io.output_names,
            make_inputs=make,
        )
    return recipes


def torch_module_factory(models: FommModels, name: str) -> Callable[[], Any]:
    """A function returning the torch module of one of the three models (for ModelSpec.torch_module); the torch
    runtime runs the port itself (the keypoint detector unfused)."""
    if name == KP_DETECTOR:
        return lambda: models.kp_detector
    return _module_builders(models)[name]


# --------------------------------------------------------------------------------------------------------------------
# Export on first use.
# --------------------------------------------------------------------------------------------------------------------


def export_folder(models: FommModels, *, engines_dir: Path | str) -> Path:
    """engines/fomm-<weights key>/: one folder per checkpoint (and model code) version."""
    return Path(engines_dir) / f"fomm-{models.key}"



def ensure_exported(
    models: FommModels,
    *,
    engines_dir: Path | str,
    names: tuple[str, ...] = MODEL_NAMES,
    log_line: Callable[[str], None] = log.info,
) -> dict[str, Path]:
    """name -> ONNX path in export_folder(); exports (and verifies against torch) what is missing or stale."""
    from avatarcam.backends.export import export_mismatch, export_onnx
    from avatarcam.backends.verify import verify_onnx

    folder = export_folder(models, engines_dir=engines_dir)
    recipes = recipes_for(models)
    ios = model_io(models)
    paths = {}
    for name in names:
        path = folder / f"{name}.onnx"
        paths[name] = path
        problem = export_mismatch(path, ios[name]) if path.exists() else "not exported yet"
        if problem is None:
            continue
        recipe = recipes[name]
        log_line(f"Exporting {name} of {models.checkpoint.name} to {path} ({problem}); first use, this takes a while")
        try:
            exported = export_onnx(
                recipe.module,
                recipe.example_inputs,
                path,
                input_names=recipe.input_names,
                output_names=recipe.output_names,
                dynamic_axes=recipe.dynamic_axes,
                opset=recipe.opset,
            )
            errors = verify_onnx(exported, recipe.module, recipe.sample_inputs(np.random.default_rng(1)),
                                 atol=recipe.atol)
        except FaceMimicError:
            path.unlink(missing_ok=True)  # never leave an unverified export where the next start would trust it
            raise
        log_line(f"{name}: exported; max abs error vs torch {max(errors.values()):.2e}")
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Registry factories (EXPORTABLE_MODELS takes functions without arguments).
# --------------------------------------------------------------------------------------------------------------------


def _registry_models(environ: Mapping[str, str] | None = None) -> FommModels:
    environ = os.environ if environ is None else environ
    value = environ.get(CHECKPOINT_ENV, "").strip()
    if value:
        return load_fomm_models(value)
    if not SMOKE_CHECKPOINT.is_file():
        raise ConfigError(
            f"{CHECKPOINT_ENV} is not set, so there is no FOMM checkpoint to export: set it to your checkpoint, e.g. "
            f"`{CHECKPOINT_ENV}=~/avatarify/vox-adv-cpk.pth.tar python tools/export_onnx.py --model {KP_DETECTOR}`"
        )
    log.warning(
        "%s is not set: exporting the random-weight tiny FOMM test model (a smoke test only); set it to your "
        "checkpoint, e.g. ~/avatarify/vox-adv-cpk.pth.tar, to export real weights", CHECKPOINT_ENV,
    )
    return load_fomm_models(SMOKE_CHECKPOINT)


def kp_detector_recipe() -> ExportRecipe:
    """Registry factory: the keypoint detector of $FACEMIMIC_FOMM_CHECKPOINT (default: the tiny test model)."""
    return recipes_for(_registry_models())[KP_DETECTOR]


def source_encoder_recipe() -> ExportRecipe:
    """Registry factory: the per-avatar source encoder of $FACEMIMIC_FOMM_CHECKPOINT."""
    return recipes_for(_registry_models())[SOURCE_ENCODER]


def frame_generator_recipe() -> ExportRecipe:
    """Registry factory: the per-frame generator of $FACEMIMIC_FOMM_CHECKPOINT."""
    return recipes_for(_registry_models())[FRAME_GENERATOR]
