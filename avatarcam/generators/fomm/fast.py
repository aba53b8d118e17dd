"""FOMM's per-frame generator in bfloat16 for CPUs that compute bf16 natively (oneDNN through torch).

Why: on a CPU the frame generator is about 90 % of a FOMM frame, almost all of it 3x3 convolutions (the six
bottleneck blocks at 256 channels on 64x64, the up blocks, the dense-motion hourglass). In float32 oneDNN already
runs them near the cores' FMA peak; CPUs with AVX512_BF16 or AMX-BF16 multiply bf16 pairs at twice that rate or more
(accumulating in float32), which is where the speed comes from.

What runs in bf16 and what does not:
- bf16 (channels-last, torch): the decoder (FommFastDecoder), i.e. the six bottleneck blocks, the up blocks and the
  final convolution (about three quarters of the frame generator's time in float32). Batch norms that follow a
  convolution are folded into it (exact algebra, done in float32 before rounding the weights to bf16), and each
  up block (nearest 2x upsampling + 3x3 conv) runs as one stride-2 transposed convolution with summed taps,
  2.25x fewer multiplies.
- float32 (FommFrameMotion, exported to ONNX and run on ONNX Runtime): the whole dense-motion network, because it
  decides the geometry (in bf16 its mask softmax moved the warp enough to cost up to 0.68 per pixel, 32 dB, on the
  tiny fixture, against 0.035, 50 dB, for the decoder alone), then the feature warp and the occlusion product.
  ONNX Runtime, not torch, because its many small operations kept their speed on a busy CPU where torch's OpenMP
  threads lost several times over. The keypoint detector and the per-avatar encoder are not touched (they stay
  exact; the encoder's output is cached per avatar).

The result is not bit-identical to the float32 port: its tolerance against the exact path is stated and tested in
tests/test_fomm_fast.py and in the README. `bf16_native()` decides at run time whether the fast path can be used;
on any other CPU the exact float32 path runs.
"""

from __future__ import annotations

import copy
import functools
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarcam.generators.fomm.model import ConvNormReLU, FommGenerator, PreActResidual

__all__ = [
    "BF16_CPU_FLAGS",
    "FommFastDecoder",
    "FommFastFrameGenerator",
    "FommFrameMotion",
    "UpsampleConvReLU",
    "bf16_native",
    "cpu_flags",
]

# /proc/cpuinfo flags of x86 CPUs that multiply bf16 in hardware (Intel Cooper Lake, Sapphire Rapids and later; AMD
# Zen 4 and later). Without them oneDNN emulates bf16 with float32 instructions, which is slower than float32 itself.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere or if unreadable)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def bf16_native() -> tuple[bool, str]:
    """(usable, reason): whether this CPU and torch run bf16 convolutions natively, with the reason in words."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"bf16 fast path is only enabled on x86-64 CPUs (this is {platform.machine()})"
    if not torch.backends.mkldnn.is_available():
        return False, f"torch {torch.__version__} was built without oneDNN (mkldnn)"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "oneDNN reports no bf16 support on this CPU"
    flags = cpu_flags()
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if not found:
        return False, f"the CPU has none of {', '.join(BF16_CPU_FLAGS)} (bf16 would be emulated, slower than fp32)"
    return True, f"CPU flags {', '.join(found)}"


def _fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing norm(conv(x)) in eval mode: weights scaled per output channel, bias shifted (float32)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        fused.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
    return fused


def _folded(module: nn.Module) -> nn.Module:
    """A copy of module with every conv -> batch-norm pair folded (ConvNormReLU blocks, PreActResidual conv1 +
    norm2)."""
    module = copy.deepcopy(module)
    for child in module.modules():
        if isinstance(child, ConvNormReLU):
            child.conv, child.norm = _fold_batch_norm(child.conv, child.norm), nn.Identity()
        elif isinstance(child, PreActResidual):
            child.conv1, child.norm2 = _fold_batch_norm(child.conv1, child.norm2), nn.Identity()
    return module


# Nearest 2x upsampling then a 3x3 convolution (padding 1) equals one stride-2 transposed convolution with a 4x4
# kernel: output row 2i reads input rows i-1, i with weights W0, W1+W2; row 2i+1 reads rows i, i+1 with W0+W1, W2
# (zero padding on both sides matches). Kernel tap k of the transposed convolution (padding 1) collects these rows.
_TAP_ROWS = ((2,), (1, 2), (0, 1), (0,))
# Below this input side the transposed convolution was not faster than upsampling + conv in float32 (oneDNN, 2 cores).
_MIN_TRANSPOSED_SIDE = 16


class UpsampleConvReLU(nn.Module):
    """An UpBlock with its batch norm folded, computed as one transposed convolution (2.25x fewer multiplies).

    Same function as upsample-nearest-2x + 3x3 conv + ReLU up to float32 re-association of the weight sums.
    """

    def __init__(self, block: ConvNormReLU) -> None:
        super().__init__()
        if not isinstance(block.norm, nn.Identity) or block.conv.kernel_size != (3, 3) or block.conv.padding != (1, 1):
            raise ValueError("UpsampleConvReLU needs a folded UpBlock (3x3 conv, padding 1, norm folded)")
        weight = block.conv.weight.detach()
        rows = torch.stack([weight[:, :, list(taps), :].sum(2) for taps in _TAP_ROWS], 2)
        kernel = torch.stack([rows[:, :, :, list(taps)].sum(3) for taps in _TAP_ROWS], 3)
        self.weight = nn.Parameter(kernel.transpose(0, 1).contiguous(), requires_grad=False)  # (in, out, 4, 4)
        self.bias = nn.Parameter(block.conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1))


def _transposed_up_blocks(blocks: nn.ModuleList, input_sides: list[int]) -> nn.ModuleList:
    """Folded up blocks, each replaced by UpsampleConvReLU where its input is at least _MIN_TRANSPOSED_SIDE wide."""
    return nn.ModuleList(
        UpsampleConvReLU(block) if side >= _MIN_TRANSPOSED_SIDE else block for block, side in zip(blocks, input_sides)
    )


def _to_bf16(module: nn.Module) -> nn.Module:
    return module.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


class FommFrameMotion(nn.Module):
    """The float32 first half of the frame generator: dense motion, then the encoding warped and occluded.

    Inputs as FommGenerator.forward -> warped_features (B, F, H/4, W/4) float32, the bottleneck's input. Exported
    to ONNX (fomm_export.FRAME_MOTION) and run on ONNX Runtime beside the bf16 decoder.
    """

    def __init__(self, generator: FommGenerator) -> None:
        super().__init__()
        self.generator = generator
        self.train(generator.training)  # a new module starts in training mode; see fomm_model.FommSourceEncoder

    def forward(
        self,
        source_image: Tensor,
        source_features: Tensor,
        kp_source_value: Tensor,
        kp_source_jacobian: Tensor,
        kp_driving_value: Tensor,
        kp_driving_jacobian: Tensor,
    ) -> Tensor:
        deformation, occlusion_map, _ = self.generator.dense_motion_network(
            source_image, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
        )
        return self.generator.warped_features(source_features, deformation, occlusion_map)


class FommFastDecoder(nn.Module):
    """The bf16 second half: warped_features (B, F, h, w) float32 -> prediction (B, 3, H, W) float32 in [0, 1].

    Batch norms folded, channels-last bfloat16, up blocks as transposed convolutions; weights are copies, so the
    float32 generator may be freed.
    """

    def __init__(self, generator: FommGenerator, image_size: int = 256) -> None:
        super().__init__()
        if generator.training:
            raise ValueError("FommFastDecoder folds batch norms: pass a generator in eval mode")
        self.bottleneck = _to_bf16(_folded(generator.bottleneck))
        feature_side = image_size // 2**generator.config.generator.num_down_blocks
        self.up_blocks = _to_bf16(_transposed_up_blocks(
            _folded(generator.up_blocks), [feature_side * 2**i for i in range(len(generator.up_blocks))]
        ))
        self.final = _to_bf16(copy.deepcopy(generator.final))
        self.eval().requires_grad_(False)

    def forward(self, warped_features: Tensor) -> Tensor:
        out = self.bottleneck(warped_features.to(dtype=torch.bfloat16, memory_format=torch.channels_last))
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out).float()).contiguous()


class FommFastFrameGenerator(nn.Module):
    """`FommFrameGenerator` (same inputs, prediction only) as FommFrameMotion (float32) + FommFastDecoder (bf16)."""

    def __init__(self, generator: FommGenerator, image_size: int = 256) -> None:
        super().__init__()
        self.motion = FommFrameMotion(generator)
        self.decoder = FommFastDecoder(generator, image_size)
        self.eval()

    def forward(
        self,
        source_image: Tensor,
        source_features: Tensor,
        kp_source_value: Tensor,
        kp_source_jacobian: Tensor,
        kp_driving_value: Tensor,
        kp_driving_jacobian: Tensor,
    ) -> Tensor:
        """Inputs as FommGenerator.forward (float32) -> prediction (B, 3, H, W) float32 RGB in [0, 1]."""
        return self.decoder(self.motion(
            source_image, source_features, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
        ))
