"""Load FOMM checkpoints (Avatarify's `vox-adv-cpk.pth.tar` and the like) safely and strictly.

Safety: files are read with `torch.load(..., weights_only=True)` only, so a checkpoint can hold tensors and plain
containers but never code. Strictness: both state dicts must match the modules of a `FommConfig` key for key and
shape before anything is loaded; the error names the first offending keys. Extra top-level entries (training
checkpoints also hold a discriminator, optimizers and the epoch) are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatarcam.errors import ConfigError, ModelFileError
from avatarcam.generators.fomm.model import (
    DenseMotionParams,
    FommConfig,
    FommGenerator,
    FommKeypointDetector,
    GeneratorParams,
    KeypointDetectorParams,
)

__all__ = [
    "FommYamlConfig",
    "build_fomm_modules",
    "infer_fomm_config",
    "load_fomm_checkpoint",
    "read_fomm_state_dicts",
    "read_fomm_yaml",
]

StateDict = Mapping[str, Tensor]

# torch.save writes a zip archive since torch 1.6; older files (the released FOMM weights) are a pickle stream that
# starts with torch's magic number 0x1950a86a20f9469cfc6c pickled as a LONG1.
_ZIP_HEADER = b"PK\x03\x04"
_LEGACY_HEADER = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_MAX_LISTED = 5

_NOT_SHIPPED = (
    "FaceMimic never ships FOMM weights (published under CC BY-NC 4.0, non-commercial; see the README's "
    "Responsible use). Avatarify users usually have "
    "`vox-adv-cpk.pth.tar` in their avatarify folder: point FaceMimic at that file"
)


def _convert_hint(path: Path) -> str:
    return (
        "If you trust the file, convert it once in a trusted environment, e.g.\n"
        "  python -c \"import torch; c = torch.load('"
        f"{path}"
        "', map_location='cpu', weights_only=False); "
        "torch.save({'kp_detector': c['kp_detector'], 'generator': c['generator']}, 'fomm-weights.pth.tar')\"\n"
        "and use fomm-weights.pth.tar, which then holds tensors only."
    )


def read_fomm_state_dicts(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Read (kp_detector, generator) state dicts from a FOMM checkpoint file, loading tensors only, on the CPU."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModelFileError(f"FOMM checkpoint {path} {what}. {_NOT_SHIPPED}.")
    with path.open("rb") as f:
        head = f.read(len(_LEGACY_HEADER))
    if not (head.startswith(_ZIP_HEADER) or head == _LEGACY_HEADER):
        raise ModelFileError(
            f"{path} is not a PyTorch checkpoint: it starts with {head[:8]!r}, expected a zip archive (PK..) or a "
            f"legacy torch pickle. Pass the FOMM .pth.tar file itself, e.g. vox-adv-cpk.pth.tar"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        message = str(error)
        rejected = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if rejected:
            raise ModelFileError(
                f"{path} stores a Python object ({rejected.group(1)}) besides tensors, and FaceMimic loads "
                f"checkpoints with torch.load(weights_only=True) only, because unpickling objects can run arbitrary "
                f"code. {_convert_hint(path)}"
            ) from error
        first_line = message.strip().splitlines()[0][:160] if message.strip() else "no detail"
        raise ModelFileError(
            f"{path} could not be read as a PyTorch checkpoint ({type(error).__name__}: {first_line}): the file "
            f"is probably truncated or corrupt; copy or download it again"
        ) from error

    if not isinstance(checkpoint, Mapping) or not {"kp_detector", "generator"} <= set(checkpoint):
        seen = f"a dict with keys {sorted(map(str, checkpoint))[:10]}" if isinstance(checkpoint, Mapping) else (
            f"a {type(checkpoint).__name__}"
        )
        raise ModelFileError(
            f"{path}: expected FOMM's checkpoint format, a dict with 'kp_detector' and 'generator' state dicts, "
            f"but the file holds {seen}. Is it a FOMM checkpoint (e.g. vox-adv-cpk.pth.tar)?"
        )
    return _as_state_dict(checkpoint["kp_detector"], path, "kp_detector"), _as_state_dict(
        checkpoint["generator"], path, "generator"
    )


def _as_state_dict(value: Any, path: Path, name: str) -> dict[str, Tensor]:
    if not isinstance(value, Mapping):
        raise ModelFileError(f"{path}: checkpoint['{name}'] should be a state dict, got a {type(value).__name__}")
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, Tensor):
            raise ModelFileError(
                f"{path}: checkpoint['{name}'][{key!r}] should be a tensor, got a {type(tensor).__name__}"
            )
    return dict(value)


# --------------------------------------------------------------------------------------------------------------------
# Config inference from shapes.
# --------------------------------------------------------------------------------------------------------------------


def _shape(state: StateDict, key: str, part: str) -> tuple[int, ...]:
    if key not in state:
        raise ModelFileError(
            f"cannot infer the FOMM config: the {part} state dict has no key '{key}'; is this a FOMM checkpoint?"
        )
    return tuple(state[key].shape)


def _count(state: StateDict, pattern: str) -> int:
    """How many consecutive indices i have key pattern.format(i) in the state dict."""
    count = 0
    while pattern.format(count) in state:
        count += 1
    return count


def _max_features(block_expansion: int, level_widths: list[int], base_max_features: int) -> int:
    """max_features that explains widths of levels 1, 2, ...: the base value if it fits, else the widest level.

    Shapes cannot tell apart max_features values at or above the widest level (no level is clipped), so the
    base config's value is kept whenever it yields the same widths; vox-256 shapes thus give back vox-256 exactly.
    """
    if all(min(base_max_features, block_expansion * 2 ** (i + 1)) == w for i, w in enumerate(level_widths)):
        return base_max_features
    return max(level_widths + [block_expansion])


def _hourglass_widths(state: StateDict, prefix: str, part: str, base_max_features: int) -> tuple[int, int, int]:
    """(block_expansion, max_features, num_blocks) of the hourglass under `prefix`."""
    num_blocks = _count(state, prefix + "encoder.down_blocks.{}.conv.weight")
    if num_blocks == 0:
        _shape(state, prefix + "encoder.down_blocks.0.conv.weight", part)
    widths = [_shape(state, f"{prefix}encoder.down_blocks.{i}.conv.weight", part)[0] for i in range(num_blocks)]
    # The last decoder block produces level 0, whose width is block_expansion itself.
    block_expansion = _shape(state, f"{prefix}decoder.up_blocks.{num_blocks - 1}.conv.weight", part)[0]
    return block_expansion, _max_features(block_expansion, widths, base_max_features), num_blocks


def _downsample_scale(state: StateDict, key: str, base_scale: float, part: str) -> float:
    """Scale factor of an anti-alias downsampler from its kernel size; 1 when the module is absent."""
    if key not in state:
        return 1.0
    size = _shape(state, key, part)[-1]
    if base_scale != 1 and 2 * round((1 / base_scale - 1) / 2 * 4) + 1 == size:
        return base_scale  # keep the caller's exact value when it explains the kernel
    # Kernel size k = 2 * round(4 sigma) + 1 with sigma = (1/scale - 1) / 2, so scale = 4 / (k + 3) up to rounding.
    return 4 / (size + 3)


def infer_fomm_config(
    kp_detector_state: StateDict, generator_state: StateDict, *, base: FommConfig | None = None
) -> FommConfig:
    """The FommConfig whose modules have these state-dict shapes.

    Widths, block counts, keypoint count and downsampling scales come from the shapes; what shapes cannot tell
    (temperature, kp_variance, kp padding, align_corners) comes from `base`, vox-256 by default.
    """
    base = base or FommConfig.vox256()
    kp_be, kp_mf, kp_blocks = _hourglass_widths(
        kp_detector_state, "predictor.", "kp_detector", base.kp_detector.max_features
    )
    num_kp, kp_in = _shape(kp_detector_state, "kp.weight", "kp_detector")[:2]
    jacobian_out = _shape(kp_detector_state, "jacobian.weight", "kp_detector")[0]
    gen_be, num_channels = _shape(generator_state, "first.conv.weight", "generator")[:2]
    num_down = _count(generator_state, "down_blocks.{}.conv.weight")
    down_widths = [_shape(generator_state, f"down_blocks.{i}.conv.weight", "generator")[0] for i in range(num_down)]
    dm_prefix = "dense_motion_network."
    dm_be, dm_mf, dm_blocks = _hourglass_widths(
        generator_state, dm_prefix + "hourglass.", "generator", base.generator.dense_motion.max_features
    )
    num_motions = _shape(generator_state, dm_prefix + "mask.weight", "generator")[0]

    if num_motions != num_kp + 1 or jacobian_out not in (4, 4 * num_kp) or kp_in != kp_be + num_channels:
        raise ModelFileError(
            f"the state dicts do not describe one FOMM model: kp.weight says {num_kp} keypoints, "
            f"dense_motion_network.mask.weight says {num_motions - 1}, jacobian.weight has {jacobian_out} outputs "
            f"(expected {4 * num_kp}); were they taken from different checkpoints?"
        )
    try:
        return FommConfig(
            num_kp=num_kp,
            num_channels=num_channels,
            kp_detector=KeypointDetectorParams(
                temperature=base.kp_detector.temperature,
                block_expansion=kp_be,
                max_features=kp_mf,
                num_blocks=kp_blocks,
                scale_factor=_downsample_scale(
                    kp_detector_state, "down.weight", base.kp_detector.scale_factor, "kp_detector"
                ),
                single_jacobian_map=jacobian_out == 4 and num_kp != 1,
                pad=base.kp_detector.pad,
            ),
            generator=GeneratorParams(
                block_expansion=gen_be,
                max_features=_max_features(gen_be, down_widths, base.generator.max_features),
                num_down_blocks=num_down,
                num_bottleneck_blocks=_count(generator_state, "bottleneck.r{}.conv1.weight"),
                dense_motion=DenseMotionParams(
                    block_expansion=dm_be,
                    max_features=dm_mf,
                    num_blocks=dm_blocks,
                    scale_factor=_downsample_scale(
                        generator_state, dm_prefix + "down.weight",
                        base.generator.dense_motion.scale_factor, "generator",
                    ),
                    kp_variance=base.generator.dense_motion.kp_variance,
                ),
            ),
            align_corners=base.align_corners,
        )
    except ConfigError as error:  # the shapes describe no valid FOMM model (e.g. zero-width layers)
        raise ModelFileError(f"cannot infer a FOMM config from the checkpoint shapes: {error}") from error


# --------------------------------------------------------------------------------------------------------------------
# FOMM's own YAML config (config/vox-adv-256.yaml and the like, which Avatarify users pass with --config).
# --------------------------------------------------------------------------------------------------------------------

# The model sections FaceMimic reads from model_params; discriminator_params (training only) is ignored.
_MODEL_SECTIONS = ("common_params", "kp_detector_params", "generator_params")


@dataclass(frozen=True)
class FommYamlConfig:
    """What FaceMimic takes from a FOMM YAML file: the model hyperparameters and the frame size it was trained at."""

    path: Path
    config: FommConfig
    """model_params as a FommConfig (align_corners False, as the original code runs on torch >= 1.3)."""
    frame_size: int | None
    """Side in pixels of dataset_params.frame_shape ([H, W, C], square); None when the file has no frame_shape."""


def read_fomm_yaml(path: str | os.PathLike[str]) -> FommYamlConfig:
    """Read a FOMM YAML config (yaml.safe_load): model_params and dataset_params.frame_shape; ConfigError if unusable.

    Only `model_params.{common_params, kp_detector_params, generator_params}` and `dataset_params.frame_shape` are
    read; training sections (train_params, discriminator_params, augmentation, ...) are ignored.
    """
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"FOMM config {path} does not exist: pass FOMM's YAML file, e.g. first-order-model/config/vox-adv-256.yaml "
            f"(--fomm-config or generator.fomm_config), or leave it unset for the vox-256 defaults"
        )
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"FOMM config {path} is not valid YAML: {error}") from None
    if not isinstance(tree, Mapping) or not isinstance(tree.get("model_params"), Mapping):
        raise ConfigError(
            f"FOMM config {path} has no model_params mapping: expected FOMM's YAML layout (dataset_params, "
            f"model_params with common_params, kp_detector_params, generator_params), e.g. config/vox-adv-256.yaml"
        )
    model_params = {k: v for k, v in tree["model_params"].items() if k in _MODEL_SECTIONS}
    try:
        config = FommConfig.from_model_params(model_params)
    except ConfigError as error:
        raise ConfigError(f"FOMM config {path}: {error}") from None
    frame_size = None
    dataset = tree.get("dataset_params")
    shape = dataset.get("frame_shape") if isinstance(dataset, Mapping) else None
    if shape is not None:
        valid = (
            isinstance(shape, (list, tuple)) and len(shape) in (2, 3)
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        )
        if not valid or shape[0] != shape[1]:
            raise ConfigError(
                f"FOMM config {path}: dataset_params.frame_shape is {shape!r}, expected a square [size, size, 3] "
                f"such as [256, 256, 3]; FaceMimic runs FOMM on square frames"
            )
        frame_size = int(shape[0])
    return FommYamlConfig(path=path, config=config, frame_size=frame_size)


# --------------------------------------------------------------------------------------------------------------------
# Strict loading.
# --------------------------------------------------------------------------------------------------------------------


def _describe_mismatches(expected: StateDict, seen: StateDict) -> list[str]:
    """Human-readable differences in key set and shapes, in the expected state-dict order, then unexpected keys."""
    problems = []
    for key, tensor in expected.items():
        if key not in seen:
            problems.append(f"missing '{key}' (expected shape {tuple(tensor.shape)})")
        elif tuple(seen[key].shape) != tuple(tensor.shape):
            problems.append(f"'{key}' has shape {tuple(seen[key].shape)}, expected {tuple(tensor.shape)}")
    problems += [f"unexpected '{key}' (shape {tuple(seen[key].shape)})" for key in seen if key not in expected]
    return problems


def build_fomm_modules(
    kp_detector_state: StateDict, generator_state: StateDict, config: FommConfig, *, source: str = "checkpoint"
) -> tuple[FommKeypointDetector, FommGenerator]:
    """Modules for `config` with the given state dicts loaded strictly, in eval mode and without gradients."""
    kp_detector, generator = FommKeypointDetector(config), FommGenerator(config)
    pairs = (("kp_detector", kp_detector, kp_detector_state), ("generator", generator, generator_state))
    for name, module, state in pairs:
        problems = _describe_mismatches(module.state_dict(), state)
        if problems:
            listed = "; ".join(problems[:_MAX_LISTED])
            more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            raise ModelFileError(
                f"{source}: the {name} state dict does not match the FOMM config ({len(problems)} differences): "
                f"{listed}{more}. The checkpoint was made with other model_params or is damaged: pass the FommConfig "
                f"of its FOMM YAML, or no config to infer one from the shapes"
            )
        module.load_state_dict(state, strict=True)
        module.eval().requires_grad_(False)  # inference only; eval() makes batch norm use the running statistics
    return kp_detector, generator


def load_fomm_checkpoint(
    path: str | os.PathLike[str], config: FommConfig | None = None
) -> tuple[FommKeypointDetector, FommGenerator]:
    """Load a FOMM checkpoint into (keypoint detector, generator), eval mode, on the CPU.

    With `config=None` the config is inferred from the checkpoint shapes (`infer_fomm_config`, vox-256 defaults
    for what shapes cannot tell, align_corners False); pass e.g. `FommConfig.vox256(align_corners=True)` otherwise.
    """
    kp_detector_state, generator_state = read_fomm_state_dicts(path)
    if config is None:
        config = infer_fomm_config(kp_detector_state, generator_state)
    return build_fomm_modules(kp_detector_state, generator_state, config, source=str(path))
