"""FOMM's per-frame generator in bfloat16 for CPUs that compute bf16 natively (oneDNN through torch).

Why: on a CPU the frame generator is about 90 % of a FOMM frame, almost all of it 3x3 convolutions (the six
bottleneck blocks at 256 channels on 64x64, the up blocks, the dense-motion hourglass). In float32 oneDNN already
runs them near the cores' FMA peak; CPUs with AVX512_BF16 or AMX-BF16 multiply bf16 pairs at twice that rate or more
(accumulating in float32), which is where the speed comes from.

What runs in bf16 and what does not:
- bf16 (channels-last): the decoder, i.e. the six bottleneck blocks, the up blocks and the final convolution (about
  three quarters of the frame generator's time in float32). Batch norms that follow a convolution are folded into
  it (exact algebra, done in float32 before rounding the weights to bf16).
- float32: the whole dense-motion network, because it decides the geometry: in bf16 its mask softmax moved the
  warp enough to cost up to 0.68 per pixel (32 dB) on the tiny fixture, against 0.035 (50 dB) for the decoder alone.
  Also float32: the feature warp (grid_sample), the occlusion product and the output sigmoid. The keypoint detector
  and the per-avatar encoder are not touched (they stay exact; the encoder's output is cached per avatar).

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
from torch import Tensor, nn

from avatarcam.generators.fomm_model import ConvNormReLU, FommGenerator, PreActResidual

__all__ = ["BF16_CPU_FLAGS", "FommFastFrameGenerator", "bf16_native", "cpu_flags"]

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
    """A copy of module with every conv -> batch-norm pair folded (ConvNormReLU blocks, PreActResidual conv1 + norm2)."""
    module = copy.deepcopy(module)
    for child in module.modules():
        if isinstance(child, ConvNormReLU):
            child.conv, child.norm = _fold_batch_norm(child.conv, child.norm), nn.Identity()
        elif isinstance(child, PreActResidual):
            child.conv1, child.norm2 = _fold_batch_norm(child.conv1, child.norm2), nn.Identity()
    return module


def _to_bf16(module: nn.Module) -> nn.Module:
    return module.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


class FommFastFrameGenerator(nn.Module):
    """`FommFrameGenerator` (same inputs, prediction only) with the convolution stacks in bf16; see the module doc."""

    def __init__(self, generator: FommGenerator) -> None:
        super().__init__()
        if generator.training:
            raise ValueError("FommFastFrameGenerator folds batch norms: pass a generator in eval mode")
        self.dense_motion_network = generator.dense_motion_network  # float32: it decides the geometry
        self.bottleneck = _to_bf16(_folded(generator.bottleneck))
        self.up_blocks = _to_bf16(_folded(generator.up_blocks))
        self.final = _to_bf16(copy.deepcopy(generator.final))
        self._warped_features = generator.warped_features  # float32 (a bound method: not a registered submodule)
        self.eval().requires_grad_(False)

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
        warp, visibility, _ = self.dense_motion_network(
            source_image, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
        )
        out = self._warped_features(source_features, warp, visibility)
        out = out.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out).float()).contiguous()
