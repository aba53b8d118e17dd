"""LivePortrait's five networks, written for FaceMimic, with the published checkpoints' state-dict layout.

The architecture follows the LivePortrait paper and its reference implementation (KwaiVGI/LivePortrait, MIT, commit
1986663, src/modules/*.py); the code here is FaceMimic's own. Every module registers its parameters and buffers
under the published names, in the published order (tests/test_liveportrait_model.py checks every key, shape and
position against ../shared/reference/liveportrait/keys-full.json, copied into tests/fixtures/liveportrait/).

Networks (shapes for the published widths; B = batch, K = 21 keypoints):

    AppearanceFeatureExtractor  image (B, 3, 256, 256) in [0, 1]            -> f_s (B, 32, 16, 64, 64)
    MotionExtractor             image (B, 3, 256, 256) in [0, 1]            -> dict pitch/yaw/roll (B, 66) logits,
                                                                               t (B, 3), exp (B, 3K), scale (B, 1),
                                                                               kp (B, 3K)
    WarpingNetwork              f_s, kp_driving (B, K, 3), kp_source (B, K, 3) -> dict occlusion_map (B, 1, 64, 64),
                                                                               deformation (B, 16, 64, 64, 3),
                                                                               out (B, 256, 64, 64)
    SPADEDecoder                warped feature (B, 256, 64, 64)             -> image (B, 3, 512, 512) in (0, 1)
    StitchingRetargetingNetwork MLP: stitching 126 -> 65, lip 65 -> 63, eye 66 -> 63

Widths are never hard-coded: `infer_*_config` reads them from a state dict's shapes, so the published weights, the
tiny test fixture and any other width load with no code change. Only eval-mode inference is implemented (batch
norms use their running statistics; spectral norm divides by the sigma of the stored u, v vectors, as torch does in
eval without a power iteration).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avatarcam.generators.liveportrait.sampler import grid_sample_3d

__all__ = [
    "AppearanceConfig",
    "AppearanceFeatureExtractor",
    "GeneratorConfig",
    "MotionConfig",
    "MotionExtractor",
    "MlpConfig",
    "SPADEDecoder",
    "StitchingRetargetingNetwork",
    "WarpingConfig",
    "WarpingNetwork",
    "infer_appearance_config",
    "infer_generator_config",
    "infer_mlp_config",
    "infer_motion_config",
    "infer_warping_config",
    "make_coordinate_grid",
    "set_sampler",
]

KP_VARIANCE = 0.01
"""Variance of the Gaussian keypoint heatmaps in the dense motion network (fixed in the original code)."""


# --------------------------------------------------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------------------------------------------------


class ConvNormAct2d(nn.Module):
    """conv -> BatchNorm2d -> ReLU (or LeakyReLU 0.01); optional 2x2 average pooling. Keys: conv.*, norm.*."""

    def __init__(self, cin: int, cout: int, kernel: int, *, leaky: bool = False, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.norm = nn.BatchNorm2d(cout)
        self.leaky = leaky
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        x = F.leaky_relu(x, 0.01) if self.leaky else F.relu(x)
        return F.avg_pool2d(x, 2) if self.pool else x


class ConvNormAct3d(nn.Module):
    """Conv3d 3x3x3 -> BatchNorm3d -> ReLU, with H and W pooled (down) or upsampled first (up) by 2."""

    def __init__(self, cin: int, cout: int, *, mode: str) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        x = F.relu(self.norm(self.conv(x)))
        if self.mode == "down":
            x = F.avg_pool3d(x, (1, 2, 2))
        return x


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x)))))). Keys conv1, conv2, norm1, norm2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def _count(state: Mapping[str, Any], pattern: str) -> int:
    """How many distinct integers fill the single group of `pattern` in the state dict's keys."""
    found = {int(m.group(1)) for k in state for m in [re.fullmatch(pattern, k)] if m}
    return len(found)


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state:
        raise KeyError(key)
    return tuple(state[key].shape)


# --------------------------------------------------------------------------------------------------------------------
# Appearance feature extractor (F).
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppearanceConfig:
    """Widths of F (models.yaml appearance_feature_extractor_params)."""

    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6


def infer_appearance_config(state: Mapping[str, Any]) -> AppearanceConfig:
    """F's widths from its state dict (KeyError naming a missing key)."""
    first = _shape(state, "first.conv.weight")
    second = _shape(state, "second.weight")
    reshape_channel = _shape(state, "resblocks_3d.3dr0.conv1.weight")[0]
    return AppearanceConfig(
        image_channel=first[1], block_expansion=first[0],
        num_down_blocks=_count(state, r"down_blocks\.(\d+)\.conv\.weight"),
        max_features=second[0], reshape_channel=reshape_channel, reshape_depth=second[0] // reshape_channel,
        num_resblocks=_count(state, r"resblocks_3d\.3dr(\d+)\.conv1\.weight"),
    )


class AppearanceFeatureExtractor(nn.Module):
    """F: image -> 3-D appearance feature volume f_s (B, reshape_channel, reshape_depth, H/4, W/4)."""

    def __init__(self, config: AppearanceConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.first = ConvNormAct2d(c.image_channel, c.block_expansion, 3)
        widths = [min(c.max_features, c.block_expansion * 2**i) for i in range(c.num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(
            ConvNormAct2d(widths[i], widths[i + 1], 3, pool=True) for i in range(c.num_down_blocks)
        )
        self.second = nn.Conv2d(widths[-1], c.max_features, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(c.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(c.reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.first(image)
        for block in self.down_blocks:
            x = block(x)
        x = self.second(x)
        b, _, h, w = x.shape
        return self.resblocks_3d(x.reshape(b, self.config.reshape_channel, self.config.reshape_depth, h, w))


# --------------------------------------------------------------------------------------------------------------------
# Motion extractor (M): a ConvNeXt V2 backbone with pose, translation, expression, scale and keypoint heads.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionConfig:
    """Widths of M: ConvNeXt V2 stage dims and depths (fixed in the original code), keypoints and pose bins."""

    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (3, 3, 9, 3)
    num_kp: int = 21
    num_bins: int = 66
    in_channels: int = 3


def infer_motion_config(state: Mapping[str, Any]) -> MotionConfig:
    """M's widths from its state dict."""
    stages = _count(state, r"detector\.stages\.(\d+)\.0\.dwconv\.weight")
    dims = tuple(_shape(state, f"detector.stages.{i}.0.dwconv.weight")[0] for i in range(stages))
    depths = tuple(_count(state, rf"detector\.stages\.{i}\.(\d+)\.dwconv\.weight") for i in range(stages))
    return MotionConfig(
        dims=dims, depths=depths, num_kp=_shape(state, "detector.fc_kp.weight")[0] // 3,
        num_bins=_shape(state, "detector.fc_pitch.weight")[0],
        in_channels=_shape(state, "detector.downsample_layers.0.0.weight")[1],
    )


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (N, C, H, W), written out as ConvNeXt does (biased variance, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on (N, H, W, C): x + gamma * x * (||x||_HW / mean_C ||x||_HW + 1e-6) + beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.sqrt((x * x).sum(dim=(1, 2), keepdim=True))
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, Linear x4, GELU, GRN, Linear back, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2Heads(nn.Module):
    """The backbone (keys detector.*) with its seven linear heads."""

    def __init__(self, config: MotionConfig) -> None:
        super().__init__()
        dims = config.dims
        layers = [nn.Sequential(nn.Conv2d(config.in_channels, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0]))]
        for i in range(len(dims) - 1):
            layers.append(nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)))
        self.downsample_layers = nn.ModuleList(layers)
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)]) for dim, depth in zip(dims, config.depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        last, k, bins = dims[-1], config.num_kp, config.num_bins
        self.fc_kp = nn.Linear(last, 3 * k)
        self.fc_scale = nn.Linear(last, 1)
        self.fc_pitch = nn.Linear(last, bins)
        self.fc_yaw = nn.Linear(last, bins)
        self.fc_roll = nn.Linear(last, bins)
        self.fc_t = nn.Linear(last, 3)
        self.fc_exp = nn.Linear(last, 3 * k)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean(dim=(-2, -1)))
        return {
            "pitch": self.fc_pitch(x), "yaw": self.fc_yaw(x), "roll": self.fc_roll(x), "t": self.fc_t(x),
            "exp": self.fc_exp(x), "scale": self.fc_scale(x), "kp": self.fc_kp(x),
        }


class MotionExtractor(nn.Module):
    """M: image -> raw pose logits, translation, expression, scale and canonical keypoints (see ConvNeXtV2Heads)."""

    def __init__(self, config: MotionConfig) -> None:
        super().__init__()
        self.config = config
        self.detector = ConvNeXtV2Heads(config)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(image)


# --------------------------------------------------------------------------------------------------------------------
# Warping module (W): dense motion from keypoints, then the warped feature volume.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarpingConfig:
    """Widths of W and its dense motion network (models.yaml warping_module_params)."""

    num_kp: int = 21
    feature_channel: int = 32
    """reshape_channel: channels of f_s."""
    third_in: int = 512
    """Channels of the warped volume with depth folded in (max_features = feature_channel * depth)."""
    out_channels: int = 256
    """block_expansion * 2**num_down_blocks: the generator's input width."""
    compress: int = 4
    dm_block_expansion: int = 32
    dm_max_features: int = 1024
    dm_num_blocks: int = 5
    reshape_depth: int = 16


def infer_warping_config(state: Mapping[str, Any]) -> WarpingConfig:
    """W's widths from its state dict."""
    p = "dense_motion_network."
    num_kp = _shape(state, p + "mask.weight")[0] - 1
    compress, feature_channel = _shape(state, p + "compress.weight")[:2]
    in_features = (num_kp + 1) * (compress + 1)
    out_filters = _shape(state, p + "hourglass.decoder.conv.weight")[0]
    blocks = _count(state, p + r"hourglass\.encoder\.down_blocks\.(\d+)\.conv\.weight")
    widths = [_shape(state, p + f"hourglass.encoder.down_blocks.{i}.conv.weight")[0] for i in range(blocks)]
    third = _shape(state, "third.conv.weight")
    return WarpingConfig(
        num_kp=num_kp, feature_channel=feature_channel, third_in=third[1], out_channels=third[0], compress=compress,
        dm_block_expansion=out_filters - in_features, dm_max_features=max(widths), dm_num_blocks=blocks,
        reshape_depth=_shape(state, p + "occlusion.weight")[1] // out_filters,
    )


def make_coordinate_grid(depth: int, height: int, width: int, *, like: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) grid of (x, y, z) from -1 to 1 with the end points on the first and last voxel centres.

    This is the align_corners=True spacing; the samplers use align_corners=False, so the identity grid is not an
    identity warp (it reaches half a voxel past the outer centres). The trained weights expect exactly this.
    """
    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, dtype=like.dtype, device=like.device) / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


class Hourglass3d(nn.Module):
    """U-Net over (D, H, W) pooling only H and W; keys encoder.down_blocks.*, decoder.up_blocks.*, decoder.conv/norm."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()

        def width(i: int) -> int:
            return min(max_features, block_expansion * 2**i)

        self.out_filters = block_expansion + in_features
        self.encoder = _HourglassEncoder(nn.ModuleList(
            ConvNormAct3d(in_features if i == 0 else width(i), width(i + 1), mode="down") for i in range(num_blocks)
        ))
        self.decoder = _HourglassDecoder(nn.ModuleList(
            ConvNormAct3d((1 if i == num_blocks - 1 else 2) * width(i + 1), width(i), mode="up")
            for i in reversed(range(num_blocks))
        ), self.out_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.encoder.down_blocks:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.decoder.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.decoder.norm(self.decoder.conv(out)))


class _HourglassEncoder(nn.Module):
    """Holds the encoder's down blocks (keys encoder.down_blocks.*)."""

    def __init__(self, down_blocks: nn.ModuleList) -> None:
        super().__init__()
        self.down_blocks = down_blocks


class _HourglassDecoder(nn.Module):
    """Holds the decoder's up blocks and its final conv + norm (keys decoder.up_blocks.*, decoder.conv, .norm)."""

    def __init__(self, up_blocks: nn.ModuleList, channels: int) -> None:
        super().__init__()
        self.up_blocks = up_blocks
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm3d(channels)


class DenseMotionNetwork(nn.Module):
    """Keypoints -> per-voxel softmax over 1 + K motions -> deformation grid, plus the occlusion map."""

    def __init__(self, config: WarpingConfig) -> None:
        super().__init__()
        c = config
        k1 = c.num_kp + 1
        self.hourglass = Hourglass3d(c.dm_block_expansion, k1 * (c.compress + 1), c.dm_num_blocks, c.dm_max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, k1, 7, padding=3)
        self.compress = nn.Conv3d(c.feature_channel, c.compress, 1)
        self.norm = nn.BatchNorm3d(c.compress)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * c.reshape_depth, 1, 7, padding=3)
        self.num_kp = c.num_kp
        self.sampler = "torch"

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, d, h, w = feature.shape
        k = self.num_kp
        feature = F.relu(self.norm(self.compress(feature)))
        c = feature.shape[1]
        identity = make_coordinate_grid(d, h, w, like=kp_source)  # (D, H, W, 3)
        # Motion 0 is the identity; motion k moves every voxel by kp_source_k - kp_driving_k (summed in the original's
        # order, (grid - driving) + source, so the rounding is the same).
        grid = identity.reshape(1, 1, d, h, w, 3)
        moved = (grid - kp_driving.reshape(b, k, 1, 1, 1, 3)) + kp_source.reshape(b, k, 1, 1, 1, 3)
        sparse = torch.cat([identity.reshape(1, 1, d, h, w, 3).expand(b, 1, d, h, w, 3), moved], dim=1)
        repeated = feature.unsqueeze(1).expand(b, k + 1, c, d, h, w).reshape(b * (k + 1), c, d, h, w)
        deformed = grid_sample_3d(repeated, sparse.reshape(b * (k + 1), d, h, w, 3), self.sampler)
        deformed = deformed.reshape(b, k + 1, c, d, h, w)
        # Heatmaps: Gaussian(driving) - Gaussian(source) around each keypoint, zeros for the identity motion.
        def gaussian(kp: torch.Tensor) -> torch.Tensor:
            diff = identity.reshape(1, 1, d, h, w, 3) - kp.reshape(b, k, 1, 1, 1, 3)
            return torch.exp(-0.5 * (diff**2).sum(-1) / KP_VARIANCE)

        heat = gaussian(kp_driving) - gaussian(kp_source)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2)  # (B, K+1, 1, D, H, W)
        prediction = self.hourglass(torch.cat([heat, deformed], dim=2).reshape(b, -1, d, h, w))
        mask = F.softmax(self.mask(prediction), dim=1)  # (B, K+1, D, H, W)
        deformation = (sparse * mask.unsqueeze(-1)).sum(dim=1)  # (B, D, H, W, 3)
        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return {"mask": mask, "deformation": deformation, "occlusion_map": occlusion}


class WarpingNetwork(nn.Module):
    """W: warps f_s by the keypoint-driven dense motion, folds depth into channels, and masks by occlusion."""

    def __init__(self, config: WarpingConfig) -> None:
        super().__init__()
        self.config = config
        self.dense_motion_network = DenseMotionNetwork(config)
        self.third = ConvNormAct2d(config.third_in, config.out_channels, 3, leaky=True)
        self.fourth = nn.Conv2d(config.out_channels, config.out_channels, 1)

    @property
    def sampler(self) -> str:
        """Which volumetric sampler both 5-D samples use ('torch' or 'slices'; see sampler.py)."""
        return self.dense_motion_network.sampler

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        dense = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = grid_sample_3d(feature_3d, dense["deformation"], self.sampler)
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.reshape(b, c * d, h, w)))
        out = out * dense["occlusion_map"]
        return {"occlusion_map": dense["occlusion_map"], "deformation": dense["deformation"], "out": out}


def set_sampler(module: nn.Module, sampler: str) -> nn.Module:
    """Use `sampler` ('torch' or 'slices') in every volumetric sample of `module`; returns module."""
    from avatarcam.generators.liveportrait.sampler import SAMPLERS

    if sampler not in SAMPLERS:
        raise ValueError(f"volumetric sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    for sub in module.modules():
        if isinstance(sub, DenseMotionNetwork):
            sub.sampler = sampler
    return module


# --------------------------------------------------------------------------------------------------------------------
# SPADE generator (G).
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """Widths of G: input channels (= label channels), output channels of up_1, SPADE hidden width, upscale."""

    input_channels: int = 256
    out_channels: int = 64
    hidden: int = 128
    upscale: int = 2


def infer_generator_config(state: Mapping[str, Any]) -> GeneratorConfig:
    """G's widths from its state dict."""
    upscale = 2 if "conv_img.0.weight" in state else 1
    return GeneratorConfig(
        input_channels=_shape(state, "fc.weight")[1],
        out_channels=_shape(state, "up_1.conv_1.weight_orig")[0],
        hidden=_shape(state, "G_middle_0.norm_0.mlp_shared.0.weight")[0],
        upscale=upscale,
    )


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is weight_orig / sigma, sigma = u . (W v) from the stored vectors (torch's eval mode).

    Keys (in order): bias (if any), weight_orig, weight_u, weight_v, as torch.nn.utils.spectral_norm leaves them.
    """

    weight_u: torch.Tensor
    weight_v: torch.Tensor

    def __init__(self, cin: int, cout: int, kernel: int, *, bias: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.weight_orig = nn.Parameter(torch.zeros(cout, cin, kernel, kernel))
        self.register_buffer("weight_u", torch.zeros(cout))
        self.register_buffer("weight_v", torch.zeros(cin * kernel * kernel))
        self.padding = kernel // 2

    def weight(self) -> torch.Tensor:
        """The effective (normalised) convolution weight."""
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """Instance norm (no affine) modulated by gamma/beta convs of the nearest-resized segmentation map."""

    def __init__(self, channels: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """SPADE residual block with spectral-normed convs; a learned 1x1 shortcut when the width changes."""

    def __init__(self, fin: int, fout: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        middle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, middle, 3)
        self.conv_1 = SpectralNormConv2d(middle, fout, 3)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_channels, hidden)
        self.norm_1 = SPADE(middle, label_channels, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_channels, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class SPADEDecoder(nn.Module):
    """G: warped feature (B, C, h, w) -> image (B, 3, 4h * u, 4w * u) in (0, 1), u = 2 with the PixelShuffle head
    (upscale 2, published: 64x64 -> 512x512) and 1 without it."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c, hid = config.input_channels, config.hidden
        self.fc = nn.Conv2d(c, 2 * c, 3, padding=1)
        for i in range(6):
            setattr(self, f"G_middle_{i}", SPADEResBlock(2 * c, 2 * c, c, hid))
        self.up_0 = SPADEResBlock(2 * c, c, c, hid)
        self.up_1 = SPADEResBlock(c, config.out_channels, c, hid)
        self.conv_img: nn.Module
        if config.upscale > 1:
            self.conv_img = nn.Sequential(nn.Conv2d(config.out_channels, 3 * 4, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.conv_img = nn.Conv2d(config.out_channels, 3, 3, padding=1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))


# --------------------------------------------------------------------------------------------------------------------
# Stitching and retargeting MLPs (S).
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlpConfig:
    """Sizes of one stitching/retargeting MLP: input, hidden layers (ReLU after each), output."""

    input_size: int
    hidden_sizes: tuple[int, ...]
    output_size: int


def infer_mlp_config(state: Mapping[str, Any]) -> MlpConfig:
    """An MLP's sizes from its (prefix-free) state dict: Linear layers at mlp.0, mlp.2, ..."""
    n = _count(state, r"mlp\.(\d+)\.weight")
    shapes = [_shape(state, f"mlp.{2 * i}.weight") for i in range(n)]
    return MlpConfig(input_size=shapes[0][1], hidden_sizes=tuple(s[0] for s in shapes[:-1]),
                     output_size=shapes[-1][0])


class StitchingRetargetingNetwork(nn.Module):
    """Linear/ReLU stack (keys mlp.0, mlp.2, ...): stitching, eye or lip retargeting."""

    def __init__(self, config: MlpConfig) -> None:
        super().__init__()
        sizes = (config.input_size, *config.hidden_sizes)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], config.output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
