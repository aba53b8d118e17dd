"""FaceMimic's own port of the First Order Motion Model (FOMM, Siarohin et al. 2019): keypoint detector and generator.

The modules load the state dicts of FOMM checkpoints (e.g. Avatarify's `vox-adv-cpk.pth.tar`) strictly: key names,
order and shapes equal those of the original `KPDetector` and `OcclusionAwareGenerator`, which is why submodule
attributes are called `predictor`, `kp`, `jacobian`, `down`, `dense_motion_network`, `first`, `bottleneck.r0`, ...
Everything else (structure, helpers, the export split) is our own. Parity with the original code is checked against
`tests/fixtures/fomm/parity.npz`, made by running the upstream modules unchanged (see ORIGIN.md there).

Conventions shared by every function here:
- images are NCHW float32 RGB in [0, 1];
- keypoints are (x, y) in FOMM's normalised frame: x = -1 is the centre of the left pixel column and x = +1 the
  centre of the right one (`coordinate_grid`);
- a keypoint jacobian is the 2x2 linear part of the local motion around a keypoint (from FOMM's abstract reference
  frame to the image), row-major: row 0 is the x output, row 1 the y output.

`align_corners` (how `F.grid_sample` maps [-1, 1] onto pixels) is a config field, and its default is False:
- False is what the original code computes on every torch since 1.3, so it is what Avatarify users see today
  (Avatarify pins torch 1.7.1, current FOMM torch 1.12.1). A FaceMimic user switching from Avatarify gets the same
  pictures from the same weights.
- True is the semantics the released weights were trained with (torch 1.0, where grid_sample behaved like
  align_corners=True) and matches FOMM's own `coordinate_grid`. The two sample each grid with a W/(W-1) scale
  difference about the centre (half a sample apart at the borders) and differ by up to 0.6 per pixel on the
  fixture. Offered for users who prefer the trained behaviour; both variants are tested against the fixture.

Export design: the generator is split into `FommGenerator.encode_source` (once per avatar) and
`FommGenerator.forward` (once per frame, pure tensor ops: no scipy, no control flow on tensor values, 2x2 inverses in
closed form), so both halves can be traced by `torch.onnx.export`. `FommSourceEncoder` and `FommFrameGenerator`
wrap the halves as modules for export. Only the per-avatar hull area in `movement_scale` runs in numpy; it is part of
neither graph.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarcam.errors import ConfigError

__all__ = [
    "DenseMotionParams",
    "FommConfig",
    "FommFrameGenerator",
    "FommFrameOutput",
    "FommGenerator",
    "FommKeypointDetector",
    "FommKeypoints",
    "FommSourceEncoder",
    "GeneratorParams",
    "KeypointDetectorParams",
    "convex_hull_area",
    "coordinate_grid",
    "movement_scale",
    "normalize_kp",
    "relative_keypoints",
]


# --------------------------------------------------------------------------------------------------------------------
# Configuration: FOMM's YAML `model_params`, validated once.
# --------------------------------------------------------------------------------------------------------------------

_KP = "model_params.kp_detector_params"
_GEN = "model_params.generator_params"
_DM = "model_params.generator_params.dense_motion_params"
_COMMON = "model_params.common_params"


def _require_int(path: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{path}: expected an integer >= {minimum}, got {value!r}")


def _require_number(path: str, value: Any, *, low: float, high: float = math.inf) -> None:
    """value must be a real number with low < value <= high."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_number and low < value <= high):
        upper = "inf)" if math.isinf(high) else f"{high}]"
        raise ConfigError(f"{path}: expected a number in ({low}, {upper}, got {value!r}")


def _require_bool(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class KeypointDetectorParams:
    """FOMM `kp_detector_params`: widths and heatmap settings of the keypoint detector."""

    temperature: float
    block_expansion: int
    max_features: int
    num_blocks: int
    scale_factor: float
    single_jacobian_map: bool = False
    pad: int = 0

    def __post_init__(self) -> None:
        _require_number(f"{_KP}.temperature", self.temperature, low=0.0)
        _require_int(f"{_KP}.block_expansion", self.block_expansion, 1)
        _require_int(f"{_KP}.max_features", self.max_features, 1)
        _require_int(f"{_KP}.num_blocks", self.num_blocks, 1)
        _require_number(f"{_KP}.scale_factor", self.scale_factor, low=0.0, high=1.0)
        _require_bool(f"{_KP}.single_jacobian_map", self.single_jacobian_map)
        _require_int(f"{_KP}.pad", self.pad, 0)


@dataclass(frozen=True)
class DenseMotionParams:
    """FOMM `dense_motion_params`: the hourglass that turns sparse keypoint motions into a dense warp."""

    block_expansion: int
    max_features: int
    num_blocks: int
    scale_factor: float
    kp_variance: float = 0.01

    def __post_init__(self) -> None:
        _require_int(f"{_DM}.block_expansion", self.block_expansion, 1)
        _require_int(f"{_DM}.max_features", self.max_features, 1)
        _require_int(f"{_DM}.num_blocks", self.num_blocks, 1)
        _require_number(f"{_DM}.scale_factor", self.scale_factor, low=0.0, high=1.0)
        _require_number(f"{_DM}.kp_variance", self.kp_variance, low=0.0)


@dataclass(frozen=True)
class GeneratorParams:
    """FOMM `generator_params`: encoder / bottleneck / decoder widths plus the nested dense-motion network."""

    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    dense_motion: DenseMotionParams

    def __post_init__(self) -> None:
        _require_int(f"{_GEN}.block_expansion", self.block_expansion, 1)
        _require_int(f"{_GEN}.max_features", self.max_features, 1)
        _require_int(f"{_GEN}.num_down_blocks", self.num_down_blocks, 1)
        _require_int(f"{_GEN}.num_bottleneck_blocks", self.num_bottleneck_blocks, 0)
        if not isinstance(self.dense_motion, DenseMotionParams):
            raise ConfigError(f"{_DM}: expected DenseMotionParams, got {type(self.dense_motion).__name__}")


# FOMM keys FaceMimic accepts, per section; the values are the optional keys' defaults (None = required).
_COMMON_KEYS: dict[str, Any] = {"num_kp": None, "num_channels": None, "estimate_jacobian": None}
_KP_KEYS: dict[str, Any] = {
    "temperature": None, "block_expansion": None, "max_features": None, "num_blocks": None,
    "scale_factor": 1.0, "single_jacobian_map": False, "pad": 0,
}
_GEN_KEYS: dict[str, Any] = {
    "block_expansion": None, "max_features": None, "num_down_blocks": None, "num_bottleneck_blocks": None,
    "estimate_occlusion_map": False, "dense_motion_params": None,
}
_DM_KEYS: dict[str, Any] = {
    "block_expansion": None, "max_features": None, "num_blocks": None, "scale_factor": 1.0, "kp_variance": 0.01,
}


def _read_section(params: Any, path: str, allowed: dict[str, Any]) -> dict[str, Any]:
    """Keys of one FOMM config section with defaults filled in; unknown or missing keys are ConfigErrors."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(params).__name__}")
    unknown = sorted(str(k) for k in params if k not in allowed)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key (valid keys: {', '.join(allowed)})")
    values = {}
    for key, default in allowed.items():
        if key in params:
            values[key] = params[key]
        elif default is None:
            raise ConfigError(f"{path}.{key}: missing (FOMM's model_params requires it)")
        else:
            values[key] = default
    return values


@dataclass(frozen=True)
class FommConfig:
    """Hyperparameters of a FOMM keypoint detector + occlusion-aware generator pair, plus the grid_sample convention.

    Only the code paths of FOMM's face models are supported: jacobians on, dense motion on, occlusion map on.
    """

    num_kp: int
    num_channels: int
    kp_detector: KeypointDetectorParams
    generator: GeneratorParams
    align_corners: bool = False
    """grid_sample convention; False reproduces the original code on torch >= 1.3 (see the module docstring)."""

    def __post_init__(self) -> None:
        _require_int(f"{_COMMON}.num_kp", self.num_kp, 1)
        _require_int(f"{_COMMON}.num_channels", self.num_channels, 1)
        if not isinstance(self.kp_detector, KeypointDetectorParams):
            raise ConfigError(f"{_KP}: expected KeypointDetectorParams, got {type(self.kp_detector).__name__}")
        if not isinstance(self.generator, GeneratorParams):
            raise ConfigError(f"{_GEN}: expected GeneratorParams, got {type(self.generator).__name__}")
        _require_bool("align_corners", self.align_corners)

    @classmethod
    def vox256(cls, *, align_corners: bool = False) -> FommConfig:
        """The `model_params` of FOMM's config/vox-256.yaml (and vox-adv-256.yaml), as used by Avatarify."""
        return cls(
            num_kp=10,
            num_channels=3,
            kp_detector=KeypointDetectorParams(
                temperature=0.1, block_expansion=32, max_features=1024, num_blocks=5, scale_factor=0.25
            ),
            generator=GeneratorParams(
                block_expansion=64,
                max_features=512,
                num_down_blocks=2,
                num_bottleneck_blocks=6,
                dense_motion=DenseMotionParams(block_expansion=64, max_features=1024, num_blocks=5, scale_factor=0.25),
            ),
            align_corners=align_corners,
        )

    @classmethod
    def from_model_params(cls, model_params: Mapping[str, Any], *, align_corners: bool = False) -> FommConfig:
        """Build from a FOMM YAML `model_params` mapping (common_params / kp_detector_params / generator_params)."""
        top = _read_section(
            model_params, "model_params", {"common_params": None, "kp_detector_params": None, "generator_params": None}
        )
        common = _read_section(top["common_params"], _COMMON, _COMMON_KEYS)
        kp = _read_section(top["kp_detector_params"], _KP, _KP_KEYS)
        gen = _read_section(top["generator_params"], _GEN, _GEN_KEYS)
        dm = _read_section(gen.pop("dense_motion_params"), _DM, _DM_KEYS)
        # Other values select upstream code paths that no FOMM face model uses; refusing them beats a silent mismatch.
        if common["estimate_jacobian"] is not True:
            raise ConfigError(
                f"{_COMMON}.estimate_jacobian: FaceMimic's FOMM port supports only true, "
                f"got {common['estimate_jacobian']!r}"
            )
        if gen.pop("estimate_occlusion_map") is not True:
            raise ConfigError(f"{_GEN}.estimate_occlusion_map: FaceMimic's FOMM port supports only true")
        return cls(
            num_kp=common["num_kp"],
            num_channels=common["num_channels"],
            kp_detector=KeypointDetectorParams(**kp),
            generator=GeneratorParams(**gen, dense_motion=DenseMotionParams(**dm)),
            align_corners=align_corners,
        )

    def to_model_params(self) -> dict[str, Any]:
        """The FOMM `model_params` mapping for this config (for sidecar JSON and round trips)."""
        kp, gen, dm = self.kp_detector, self.generator, self.generator.dense_motion
        return {
            "common_params": {"num_kp": self.num_kp, "num_channels": self.num_channels, "estimate_jacobian": True},
            "kp_detector_params": {
                "temperature": kp.temperature, "block_expansion": kp.block_expansion,
                "max_features": kp.max_features, "scale_factor": kp.scale_factor, "num_blocks": kp.num_blocks,
                "single_jacobian_map": kp.single_jacobian_map, "pad": kp.pad,
            },
            "generator_params": {
                "block_expansion": gen.block_expansion, "max_features": gen.max_features,
                "num_down_blocks": gen.num_down_blocks, "num_bottleneck_blocks": gen.num_bottleneck_blocks,
                "estimate_occlusion_map": True,
                "dense_motion_params": {
                    "block_expansion": dm.block_expansion, "max_features": dm.max_features,
                    "num_blocks": dm.num_blocks, "scale_factor": dm.scale_factor, "kp_variance": dm.kp_variance,
                },
            },
        }

    @property
    def image_size_multiple(self) -> int:
        """Image height and width must be multiples of this, so every hourglass skip connection lines up."""
        multiple = 2**self.generator.num_down_blocks
        for scale, blocks in (
            (self.kp_detector.scale_factor, self.kp_detector.num_blocks),
            (self.generator.dense_motion.scale_factor, self.generator.dense_motion.num_blocks),
        ):
            multiple = math.lcm(multiple, round(2**blocks / scale))
        return multiple

    def allowed_image_sizes(self, up_to: int = 1024) -> list[int]:
        """The square input sizes (pixels) this model accepts, up to `up_to`: the multiples of image_size_multiple."""
        m = self.image_size_multiple
        return list(range(m, max(up_to, m) + 1, m))

    def check_image_size(self, height: int, width: int) -> None:
        """Raise ConfigError unless an input of height x width pixels fits this model."""
        m = self.image_size_multiple
        if height % m or width % m or height < m or width < m:
            allowed = ", ".join(map(str, self.allowed_image_sizes()))
            raise ConfigError(
                f"image size {width}x{height}: this FOMM model needs width and height that are positive multiples "
                f"of {m} ({allowed}, ...; FOMM's demo and Avatarify use 256x256); choose one of those sizes"
            )


# --------------------------------------------------------------------------------------------------------------------
# Keypoints and frame outputs.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FommKeypoints:
    """FOMM keypoints of a batch of images."""

    value: Tensor
    """(B, K, 2) float32, (x, y) in FOMM's [-1, 1] frame (see `coordinate_grid`)."""
    jacobian: Tensor
    """(B, K, 2, 2) float32 local affine motion around each keypoint."""


@dataclass(frozen=True)
class FommFrameOutput:
    """What the generator produces for one batch of driving keypoints."""

    prediction: Tensor
    """(B, 3, H, W) float32 RGB in [0, 1]: the animated avatar."""
    occlusion_map: Tensor
    """(B, 1, h, w) float32 in (0, 1) on the dense-motion grid (h = H * dense scale_factor); 1 = visible in source."""
    mask: Tensor
    """(B, K + 1, h, w) float32, softmax over dim 1; channel 0 is the background (identity) motion."""
    deformation: Tensor
    """(B, h, w, 2) float32 grid_sample grid (x, y), about [-1, 1]: where each output pixel samples the source."""


# --------------------------------------------------------------------------------------------------------------------
# Pure tensor helpers (traceable).
# --------------------------------------------------------------------------------------------------------------------


def coordinate_grid(
    height: int, width: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """(height, width, 2) grid of (x, y): pixel-centre coordinates mapped linearly onto [-1, 1] (FOMM's convention)."""
    # Same operation order as upstream (divide, double, shift) so the grid is bit-identical to the one FOMM used.
    xs = 2 * (torch.arange(width, dtype=dtype, device=device) / (width - 1)) - 1
    ys = 2 * (torch.arange(height, dtype=dtype, device=device) / (height - 1)) - 1
    xx = xs.view(1, width).expand(height, width)
    yy = ys.view(height, 1).expand(height, width)
    return torch.stack([xx, yy], dim=-1)


def _gaussian_heatmaps(kp_value: Tensor, grid: Tensor, variance: float) -> Tensor:
    """(B, K, h, w) unnormalised isotropic Gaussians centred on (B, K, 2) keypoints, over an (h, w, 2) grid."""
    offsets = grid.unsqueeze(0).unsqueeze(0) - kp_value.unsqueeze(2).unsqueeze(2)
    return torch.exp(-0.5 * offsets.pow(2).sum(-1) / variance)


def _inverse_2x2(matrices: Tensor) -> Tensor:
    """Inverse of (..., 2, 2) matrices in closed form; ONNX has no standard Inverse operator."""
    a, b = matrices[..., 0, 0], matrices[..., 0, 1]
    c, d = matrices[..., 1, 0], matrices[..., 1, 1]
    det = (a * d - b * c).unsqueeze(-1).unsqueeze(-1)
    adjugate = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2)
    return adjugate / det


# --------------------------------------------------------------------------------------------------------------------
# Building blocks. Attribute names (conv, norm, conv1, norm2, ...) are fixed by the checkpoint keys.
# --------------------------------------------------------------------------------------------------------------------


class ConvNormReLU(nn.Module):
    """Conv -> BatchNorm -> ReLU at constant resolution (the generator's `first` block)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock(ConvNormReLU):
    """3x3 conv -> BatchNorm -> ReLU, then 2x2 average pooling (halves H and W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(super().forward(x), kernel_size=2)


class UpBlock(ConvNormReLU):
    """Nearest 2x upsampling, then 3x3 conv -> BatchNorm -> ReLU (doubles H and W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class PreActResidual(nn.Module):
    """Pre-activation residual block at constant width: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Registration order fixes the state-dict order: conv1, conv2, norm1, norm2.
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(channels)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        # Out of place on purpose: the input may be the cached per-avatar encoding.
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return x + y


def _level_width(level: int, block_expansion: int, max_features: int) -> int:
    """Channel count of hourglass level `level`: doubling per level from block_expansion, capped at max_features."""
    return min(max_features, block_expansion * 2**level)


class HourglassEncoder(nn.Module):
    """The contracting half of the hourglass; returns the input and every level's features."""

    def __init__(self, in_channels: int, block_expansion: int, max_features: int, num_blocks: int) -> None:
        super().__init__()
        widths = [in_channels] + [_level_width(i + 1, block_expansion, max_features) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(DownBlock(widths[i], widths[i + 1]) for i in range(num_blocks))

    def forward(self, x: Tensor) -> list[Tensor]:
        levels = [x]
        for block in self.down_blocks:
            levels.append(block(levels[-1]))
        return levels


class HourglassDecoder(nn.Module):
    """The expanding half; each up block's output is concatenated with the encoder level of the same size."""

    def __init__(self, in_channels: int, block_expansion: int, max_features: int, num_blocks: int) -> None:
        super().__init__()
        blocks = []
        for level in reversed(range(num_blocks)):
            deeper = _level_width(level + 1, block_expansion, max_features)
            # The deepest block sees only the bottleneck; every other one also sees the previous skip concatenation.
            in_width = deeper if level == num_blocks - 1 else 2 * deeper
            blocks.append(UpBlock(in_width, _level_width(level, block_expansion, max_features)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_channels = _level_width(0, block_expansion, max_features) + in_channels

    def forward(self, levels: list[Tensor]) -> Tensor:
        out = levels[-1]
        for block, skip in zip(self.up_blocks, reversed(levels[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style hourglass: output has the input's size and `out_channels` = min(block_expansion, max) + input."""

    def __init__(self, in_channels: int, block_expansion: int, max_features: int, num_blocks: int) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(in_channels, block_expansion, max_features, num_blocks)
        self.decoder = HourglassDecoder(in_channels, block_expansion, max_features, num_blocks)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class GaussianDownsampler(nn.Module):
    """Anti-aliased downsampling by `scale`: a fixed depthwise Gaussian blur, then nearest subsampling.

    The kernel is a state-dict buffer called `weight` ((C, 1, k, k), k = 13 for scale 0.25) because FOMM saves it.
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1  # Python's round, as upstream, so the kernel size matches saved buffers
        taps = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        profile = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = torch.outer(profile, profile)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, size, size).clone())
        self.channels = channels
        self.padding = size // 2
        self.scale = scale
        step = 1 / scale
        # Nearest resampling by an integer factor keeps pixels 0, n, 2n, ...: a strided convolution computes exactly
        # those outputs, skipping (n^2 - 1)/n^2 of the blur work and the Resize op in exported graphs.
        self.stride = round(step) if abs(step - round(step)) < 1e-9 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.stride is not None:
            return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.channels)
        blurred = F.conv2d(x, self.weight, padding=self.padding, groups=self.channels)
        return F.interpolate(blurred, scale_factor=(self.scale, self.scale), mode="nearest")


def _downsampler(channels: int, scale: float) -> nn.Module:
    # At scale 1 FOMM has no `down` module (and no `down.weight` key); Identity has no state either.
    return nn.Identity() if scale == 1 else GaussianDownsampler(channels, scale)


# --------------------------------------------------------------------------------------------------------------------
# Keypoint detector.
# --------------------------------------------------------------------------------------------------------------------


class FommKeypointDetector(nn.Module):
    """Image -> K keypoints (softmax-heatmap expectation) and their 2x2 jacobians (heatmap-weighted regression)."""

    def __init__(self, config: FommConfig) -> None:
        super().__init__()
        params = config.kp_detector
        self.config = config
        self.predictor = Hourglass(config.num_channels, params.block_expansion, params.max_features, params.num_blocks)
        self.kp = nn.Conv2d(self.predictor.out_channels, config.num_kp, kernel_size=7, padding=params.pad)
        self.num_jacobian_maps = 1 if params.single_jacobian_map else config.num_kp
        self.jacobian = nn.Conv2d(
            self.predictor.out_channels, 4 * self.num_jacobian_maps, kernel_size=7, padding=params.pad
        )
        # Untrained detectors start from identity jacobians, as upstream; loading a checkpoint overwrites this.
        with torch.no_grad():
            self.jacobian.weight.zero_()
            self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps))
        self.down = _downsampler(config.num_channels, params.scale_factor)
        self.temperature = params.temperature

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) float32 RGB in [0, 1] -> value (B, K, 2), jacobian (B, K, 2, 2)."""
        features = self.predictor(self.down(image))
        return self.keypoints_from(self.kp(features), self.jacobian(features))

    def keypoints_from(self, logits: Tensor, jacobian_maps: Tensor) -> tuple[Tensor, Tensor]:
        """The heads' outputs -> value (B, K, 2), jacobian (B, K, 2, 2): softmax heatmaps (temperature), their
        expected positions, and the heatmap-weighted jacobian maps.

        logits: (B, K, h, w) from `kp`; jacobian_maps: (B, 4 * num_jacobian_maps, h, w) from `jacobian`.
        """
        batch, num_kp, height, width = logits.shape
        heatmaps = F.softmax(logits.flatten(2) / self.temperature, dim=2).view(batch, num_kp, height, width)
        grid = coordinate_grid(height, width, dtype=heatmaps.dtype, device=heatmaps.device)
        value = (heatmaps.unsqueeze(-1) * grid).sum(dim=(2, 3))
        jacobian_maps = jacobian_maps.reshape(batch, self.num_jacobian_maps, 4, height, width)
        jacobian = (heatmaps.unsqueeze(2) * jacobian_maps).flatten(3).sum(-1)
        return value, jacobian.view(batch, num_kp, 2, 2)

    @torch.no_grad()
    def detect(self, image: Tensor) -> FommKeypoints:
        """Checked, gradient-free `forward` returning FommKeypoints."""
        _check_image(image, self.config, "image")
        value, jacobian = self(image)
        return FommKeypoints(value=value, jacobian=jacobian)


def _check_image(image: Tensor, config: FommConfig, name: str) -> None:
    if image.dim() != 4 or image.shape[1] != config.num_channels:
        raise ValueError(f"{name}: expected shape (B, {config.num_channels}, H, W), got {tuple(image.shape)}")
    config.check_image_size(int(image.shape[2]), int(image.shape[3]))


# --------------------------------------------------------------------------------------------------------------------
# Generator.
# --------------------------------------------------------------------------------------------------------------------


class DenseMotionNetwork(nn.Module):
    """Sparse keypoint motions -> dense warp (softmax blend of K+1 motions) and occlusion map, at reduced size."""

    def __init__(self, config: FommConfig) -> None:
        super().__init__()
        params = config.generator.dense_motion
        num_motions = config.num_kp + 1  # K keypoint motions plus the background (identity) motion
        in_channels = num_motions * (config.num_channels + 1)  # per motion: one heatmap + the warped source
        self.hourglass = Hourglass(in_channels, params.block_expansion, params.max_features, params.num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_channels, num_motions, kernel_size=7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_channels, 1, kernel_size=7, padding=3)
        self.down = _downsampler(config.num_channels, params.scale_factor)
        self.kp_variance = params.kp_variance
        self.align_corners = config.align_corners

    def forward(
        self,
        source_image: Tensor,
        kp_source_value: Tensor,
        kp_source_jacobian: Tensor,
        kp_driving_value: Tensor,
        kp_driving_jacobian: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """-> deformation (B, h, w, 2), occlusion_map (B, 1, h, w), mask (B, K+1, h, w) on the downsampled grid."""
        motions, hourglass_in = self.motion_inputs(
            source_image, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
        )
        features = self.hourglass(hourglass_in)
        return self.blend(motions, self.mask(features), self.occlusion(features))

    def motion_inputs(
        self,
        source_image: Tensor,
        kp_source_value: Tensor,
        kp_source_jacobian: Tensor,
        kp_driving_value: Tensor,
        kp_driving_jacobian: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """-> motions (B, K+1, h, w, 2): the background's identity grid and each keypoint's first-order motion;
        hourglass input (B, (K+1) * (C+1), h, w): per motion its heatmap difference and the source warped by it."""
        small = self.down(source_image)
        batch, channels, height, width = small.shape
        num_kp = kp_driving_value.shape[1]
        grid = coordinate_grid(height, width, dtype=small.dtype, device=small.device)

        # Where each keypoint moved: positive bump at the driving position, negative at the source position.
        bumps = _gaussian_heatmaps(kp_driving_value, grid, self.kp_variance) - _gaussian_heatmaps(
            kp_source_value, grid, self.kp_variance
        )
        bumps = torch.cat([torch.zeros_like(bumps[:, :1]), bumps], dim=1)

        # First-order motion per keypoint k: z -> kp_s + J_s J_d^-1 (z - kp_d), written out per component.
        affine = torch.matmul(kp_source_jacobian, _inverse_2x2(kp_driving_jacobian))
        affine = affine.view(batch, num_kp, 1, 1, 2, 2)
        offsets = grid.view(1, 1, height, width, 2) - kp_driving_value.view(batch, num_kp, 1, 1, 2)
        mapped_x = affine[..., 0, 0] * offsets[..., 0] + affine[..., 0, 1] * offsets[..., 1]
        mapped_y = affine[..., 1, 0] * offsets[..., 0] + affine[..., 1, 1] * offsets[..., 1]
        keypoint_motions = torch.stack([mapped_x, mapped_y], dim=-1) + kp_source_value.view(batch, num_kp, 1, 1, 2)
        background = grid.view(1, 1, height, width, 2).expand(batch, 1, height, width, 2)
        motions = torch.cat([background, keypoint_motions], dim=1)  # (B, K+1, h, w, 2)

        # The source warped by each of the K+1 motions, so the hourglass can see which motion fits where.
        stacked = small.unsqueeze(1).expand(batch, num_kp + 1, channels, height, width)
        warped = F.grid_sample(
            stacked.reshape(batch * (num_kp + 1), channels, height, width),
            motions.reshape(batch * (num_kp + 1), height, width, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=self.align_corners,
        ).view(batch, num_kp + 1, channels, height, width)

        hourglass_in = torch.cat([bumps.unsqueeze(2), warped], dim=2).view(batch, -1, height, width)
        return motions, hourglass_in

    @staticmethod
    def blend(motions: Tensor, mask_logits: Tensor, occlusion_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """motions (B, K+1, h, w, 2), the heads' logits (B, K+1, h, w) and (B, 1, h, w) -> deformation (softmax
        blend of the motions), occlusion_map (sigmoid), mask (softmax), as `forward` returns them."""
        mask = F.softmax(mask_logits, dim=1)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)
        return deformation, torch.sigmoid(occlusion_logits), mask


class FommGenerator(nn.Module):
    """FOMM's occlusion-aware generator, split into a per-avatar encoder and a per-frame warp-and-decode."""

    def __init__(self, config: FommConfig) -> None:
        super().__init__()
        params = config.generator
        self.config = config
        # Registration order fixes the state-dict order of the original OcclusionAwareGenerator.
        self.dense_motion_network = DenseMotionNetwork(config)
        self.first = ConvNormReLU(config.num_channels, params.block_expansion, kernel_size=7, padding=3)
        levels = range(params.num_down_blocks)
        widths = [_level_width(i, params.block_expansion, params.max_features) for i in range(len(levels) + 1)]
        self.down_blocks = nn.ModuleList(DownBlock(widths[i], widths[i + 1]) for i in levels)
        self.up_blocks = nn.ModuleList(UpBlock(widths[i + 1], widths[i]) for i in reversed(levels))
        self.bottleneck = nn.Sequential(
            OrderedDict((f"r{i}", PreActResidual(widths[-1])) for i in range(params.num_bottleneck_blocks))
        )
        self.final = nn.Conv2d(params.block_expansion, config.num_channels, kernel_size=7, padding=3)
        self.align_corners = config.align_corners
        # The motion grid (H * scale) and the encoding (H / 2^n) coincide for vox-256; otherwise FOMM resizes the
        # warp and occlusion map bilinearly. Decided here from the config so forward has no shape-dependent branch.
        self.resize_motion = not math.isclose(params.dense_motion.scale_factor, 2.0**-params.num_down_blocks)

    def encode_source(self, source_image: Tensor) -> Tensor:
        """Per-avatar half: (B, C, H, W) RGB in [0, 1] -> (B, F, H / 2^n, W / 2^n) features (F = 256 for vox-256)."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        return out

    def forward(
        self,
        source_image: Tensor,
        source_features: Tensor,
        kp_source_value: Tensor,
        kp_source_jacobian: Tensor,
        kp_driving_value: Tensor,
        kp_driving_jacobian: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-frame half -> (prediction, occlusion_map, mask, deformation); contracts as in FommFrameOutput.

        `source_image` is the avatar, (B, C, H, W) RGB in [0, 1] (the dense-motion network downsamples it, which costs
        well under 1 % of a frame); `source_features` must be `encode_source(source_image)`; keypoints as in
        FommKeypoints. All inputs share the batch size B.
        """
        deformation, occlusion_map, mask = self.dense_motion_network(
            source_image, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
        )
        out = self.bottleneck(self.warped_features(source_features, deformation, occlusion_map))
        for block in self.up_blocks:
            out = block(out)
        prediction = torch.sigmoid(self.final(out))
        return prediction, occlusion_map, mask, deformation

    def warped_features(self, source_features: Tensor, deformation: Tensor, occlusion_map: Tensor) -> Tensor:
        """The bottleneck's input: the encoding warped by the deformation and multiplied by the occlusion map."""
        warp, visibility = deformation, occlusion_map
        if self.resize_motion:
            size = source_features.shape[2:]
            warp = F.interpolate(warp.permute(0, 3, 1, 2), size=size, mode="bilinear").permute(0, 2, 3, 1)
            visibility = F.interpolate(visibility, size=size, mode="bilinear")
        out = F.grid_sample(
            source_features, warp, mode="bilinear", padding_mode="zeros", align_corners=self.align_corners
        )
        return out * visibility

    @torch.no_grad()
    def generate(self, source_image: Tensor, kp_source: FommKeypoints, kp_driving: FommKeypoints) -> FommFrameOutput:
        """Checked, gradient-free one-shot call (encode + frame), like the original generator's forward."""
        _check_image(source_image, self.config, "source_image")
        features = self.encode_source(source_image)
        prediction, occlusion_map, mask, deformation = self(
            source_image, features, kp_source.value, kp_source.jacobian, kp_driving.value, kp_driving.jacobian
        )
        return FommFrameOutput(prediction=prediction, occlusion_map=occlusion_map, mask=mask, deformation=deformation)


class FommSourceEncoder(nn.Module):
    """Module view of `FommGenerator.encode_source`, for exporting the per-avatar half on its own."""

    def __init__(self, generator: FommGenerator) -> None:
        super().__init__()
        self.generator = generator
        # A new module starts in training mode, and torch.onnx.export restores the wrapper's mode recursively when it
        # finishes: without this, exporting an eval-mode generator would leave its batch norms in training mode.
        self.train(generator.training)

    def forward(self, source_image: Tensor) -> Tensor:
        return self.generator.encode_source(source_image)


class FommFrameGenerator(nn.Module):
    """Module view of the per-frame `FommGenerator.forward` returning the prediction only (the live output)."""

    def __init__(self, generator: FommGenerator) -> None:
        super().__init__()
        self.generator = generator
        self.train(generator.training)  # see FommSourceEncoder

    def forward(
        self,
        source_image: Tensor,
        source_features: Tensor,
        kp_source_value: Tensor,
        kp_source_jacobian: Tensor,
        kp_driving_value: Tensor,
        kp_driving_jacobian: Tensor,
    ) -> Tensor:
        return self.generator(
            source_image, source_features, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
        )[0]


# --------------------------------------------------------------------------------------------------------------------
# Relative motion transfer (Avatarify / FOMM `normalize_kp`).
# --------------------------------------------------------------------------------------------------------------------


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points, in float64 (Andrew's monotone chain, then the shoelace formula)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points: expected shape (N, 2), got {pts.shape}")
    pts = np.unique(pts, axis=0)  # sorted by x, then y, without duplicates
    if len(pts) < 3:
        return 0.0

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half_hull(ordered: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in ordered:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]  # the last point starts the other half

    hull = np.array(half_hull(pts) + half_hull(pts[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def movement_scale(kp_source_value: Tensor, kp_driving_initial_value: Tensor) -> float:
    """sqrt(hull area of the source keypoints / hull area of the initial driving keypoints), from batch element 0.

    Called once per (avatar, calibration) pair; it is FOMM's `adapt_movement_scale` and runs in numpy float64.
    """
    source_area = convex_hull_area(kp_source_value[0].detach().cpu().numpy())
    driving_area = convex_hull_area(kp_driving_initial_value[0].detach().cpu().numpy())
    if not (source_area > 0 and driving_area > 0):
        raise ValueError(
            f"keypoint hull areas must be positive to adapt the movement scale, got source {source_area:.3g} and "
            f"initial driving {driving_area:.3g}: the keypoints are collinear; recalibrate on a frame with a face"
        )
    return float(np.sqrt(source_area) / np.sqrt(driving_area))


def relative_keypoints(
    kp_source: FommKeypoints,
    kp_driving: FommKeypoints,
    kp_driving_initial: FommKeypoints,
    *,
    scale: float = 1.0,
    use_relative_jacobian: bool = True,
) -> FommKeypoints:
    """Move the source keypoints by the driving motion since the initial frame (pure tensor ops, traceable).

    value = kp_source + scale * (kp_driving - kp_driving_initial); jacobian = J_d J_d0^-1 J_s when relative.
    Batch dimensions broadcast: a (1, K, ...) source and initial frame work with a (B, K, ...) driving batch.
    """
    value = (kp_driving.value - kp_driving_initial.value) * scale + kp_source.value
    if not use_relative_jacobian:
        return FommKeypoints(value=value, jacobian=kp_driving.jacobian)
    jacobian_change = torch.matmul(kp_driving.jacobian, _inverse_2x2(kp_driving_initial.jacobian))
    return FommKeypoints(value=value, jacobian=torch.matmul(jacobian_change, kp_source.jacobian))


def normalize_kp(
    kp_source: FommKeypoints,
    kp_driving: FommKeypoints,
    kp_driving_initial: FommKeypoints,
    adapt_movement_scale: bool = True,
    use_relative_movement: bool = True,
    use_relative_jacobian: bool = True,
) -> FommKeypoints:
    """FOMM's `normalize_kp` with Avatarify's defaults (relative motion, relative jacobian, hull-adapted scale).

    Without relative movement the driving keypoints are returned unchanged (absolute mode), as upstream.
    """
    if not use_relative_movement:
        return kp_driving
    scale = movement_scale(kp_source.value, kp_driving_initial.value) if adapt_movement_scale else 1.0
    return relative_keypoints(
        kp_source, kp_driving, kp_driving_initial, scale=scale, use_relative_jacobian=use_relative_jacobian
    )
