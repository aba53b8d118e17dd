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

int8 (fomm_precision int8, auto's choice on CPUs with VNNI): the bottleneck's convolutions run on torch's int8
kernels (oneDNN), twice the bf16 multiply rate; see Int8Residual for the scheme and int8_calibration_ranges for the
calibration. The up blocks and final conv stay bf16. In both modes the dense-motion hourglass's up blocks run as
UpsampleConvPhases from side 8 on and its mask and occlusion heads as one convolution (float32, same function).

The keypoint detector's export (FommFastKeypointDetector) gets the same two float32 rewrites: same function, about
12 % less CPU on ONNX Runtime.

The result is not bit-identical to the float32 port: its tolerance against the exact path is stated and tested in
tests/test_fomm_fast.py and in the README. `bf16_native()` decides at run time whether the fast path can be used;
on any other CPU the exact float32 path runs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarcam.generators.fomm.model import ConvNormReLU, FommGenerator, FommKeypointDetector, PreActResidual

__all__ = [
    "BF16_CPU_FLAGS",
    "INT8_CPU_FLAGS",
    "Int8Bottleneck",
    "Int8Residual",
    "bottleneck_ranges",
    "int8_native",
    "FommFastDecoder",
    "FommFastFrameGenerator",
    "FommFastKeypointDetector",
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


# x86 flags of CPUs with 8-bit dot-product instructions (Intel Cascade Lake / Alder Lake and later, AMD Zen 4 and
# later): oneDNN's int8 convolutions multiply 8-bit pairs at twice the bf16 rate there.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# torch's quantized engine used for the int8 bottleneck (oneDNN; "x86" picks oneDNN or FBGEMM per shape).
_INT8_ENGINE = "onednn"


@functools.lru_cache(maxsize=1)
def int8_native() -> tuple[bool, str]:
    """(usable, reason): whether this CPU and torch run the int8 bottleneck natively (the decoder around it also
    needs bf16_native())."""
    if _INT8_ENGINE not in torch.backends.quantized.supported_engines:
        return False, f"torch {torch.__version__} has no {_INT8_ENGINE} quantized engine"
    found = [flag for flag in INT8_CPU_FLAGS if flag in cpu_flags()]
    if not found:
        return False, f"the CPU has none of {', '.join(INT8_CPU_FLAGS)} (int8 convolutions would not be faster)"
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


# Row taps of the same sum for a 2x2 convolution per output phase: phase 0 (row 2i) reads rows i-1, i with weights
# W0, W1+W2; phase 1 (row 2i+1) reads rows i, i+1 with W0+W1, W2.
_PHASE_ROWS = (((0,), (1, 2)), ((0, 1), (2,)))


class UpsampleConvPhases(nn.Module):
    """A folded UpBlock (nearest 2x upsampling + 3x3 conv + ReLU) as one 2x2 convolution on the small input that
    computes the four output phases (row parity x column parity) as four channel groups, then interleaves them.

    2.25x fewer multiplies than convolving the upsampled image, the same function up to float32 re-association of
    the weight sums, and only standard operators (Conv, Slice, Concat, DepthToSpace), so it exports to ONNX and runs
    in float32 on ONNX Runtime (used in the dense-motion and keypoint hourglasses, which stay float32).
    """

    def __init__(self, block: ConvNormReLU) -> None:
        super().__init__()
        if not isinstance(block.norm, nn.Identity) or block.conv.kernel_size != (3, 3) or block.conv.padding != (1, 1):
            raise ValueError("UpsampleConvPhases needs a folded UpBlock (3x3 conv, padding 1, norm folded)")
        weight = block.conv.weight.detach()
        kernels = []
        for rows in _PHASE_ROWS:
            summed_rows = torch.stack([weight[:, :, list(taps), :].sum(2) for taps in rows], 2)
            for cols in _PHASE_ROWS:
                kernels.append(torch.stack([summed_rows[:, :, :, list(taps)].sum(3) for taps in cols], 3))
        out_channels = weight.shape[0]
        # Channel order (out channel, row phase, column phase), as pixel_shuffle / DepthToSpace(CRD) expects.
        self.weight = nn.Parameter(torch.stack(kernels, 1).reshape(out_channels * 4, weight.shape[1], 2, 2),
                                   requires_grad=False)
        self.bias = nn.Parameter(block.conv.bias.detach().repeat_interleave(4), requires_grad=False)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2], x.shape[3]
        y = F.relu(F.conv2d(x, self.weight, self.bias, padding=1))  # (B, 4C, H+1, W+1); phase (p, q) at offset p, q
        groups = y.unflatten(1, (self.out_channels, 4))
        phases = [groups[:, :, 2 * p + q, p:p + height, q:q + width] for p in (0, 1) for q in (0, 1)]
        return F.pixel_shuffle(torch.stack(phases, 2).flatten(1, 2), 2)


# Below this input side an hourglass up block stays upsampling + 3x3 conv (batch norm folded): there the layer is
# bound by reading its weights (up to 1024 x 2048 channels on 2x2 or 4x4 pixels), and the phase kernels hold 16/9 as
# many. ONNX Runtime, 2 cores, vox-256 dense motion: phases from side 8 on took 8 % less CPU than phases everywhere.
_MIN_PHASED_SIDE = 8


def _phased_up_blocks(blocks: nn.ModuleList, input_side: int) -> nn.ModuleList:
    """An hourglass decoder's up blocks, batch norms folded, as UpsampleConvPhases where the block's input is at
    least _MIN_PHASED_SIDE wide. input_side: the hourglass input's side (the deepest block sees it / 2**len(blocks))."""
    folded = _folded(blocks)
    sides = [input_side // 2 ** (len(folded) - i) for i in range(len(folded))]
    return nn.ModuleList(
        UpsampleConvPhases(block) if side >= _MIN_PHASED_SIDE else block for block, side in zip(folded, sides)
    ).requires_grad_(False)  # folding made new bias parameters; these are inference weights like the rest


def _fused_conv(*convs: nn.Conv2d) -> nn.Conv2d:
    """One convolution computing several that read the same input (same kernel, padding and stride): their output
    channels concatenated in order. Same function; one pass over the input instead of one per head, and a wider
    output that vectorises better (FOMM's heads have 1 to 40 output channels)."""
    first = convs[0]
    shape = (first.kernel_size, first.padding, first.stride, first.dilation, first.groups, first.in_channels)
    if any((c.kernel_size, c.padding, c.stride, c.dilation, c.groups, c.in_channels) != shape for c in convs):
        raise ValueError("_fused_conv needs convolutions of the same input, kernel, padding, stride and groups")
    fused = nn.Conv2d(first.in_channels, sum(c.out_channels for c in convs), first.kernel_size,
                      stride=first.stride, padding=first.padding, dilation=first.dilation, groups=first.groups)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([c.weight for c in convs]))
        fused.bias.copy_(torch.cat([c.bias if c.bias is not None else torch.zeros(c.out_channels) for c in convs]))
    return fused.requires_grad_(False)


def _phased_dense_motion(network: nn.Module, image_size: int) -> nn.Module:
    """A copy of an eval-mode DenseMotionNetwork whose hourglass up blocks are folded, as UpsampleConvPhases from
    side _MIN_PHASED_SIDE on (image_size: the frames' side, for the hourglass's sides)."""
    network = copy.deepcopy(network)
    decoder = network.hourglass.decoder
    scale = network.down.scale if hasattr(network.down, "scale") else 1.0
    decoder.up_blocks = _phased_up_blocks(decoder.up_blocks, round(image_size * scale))
    return network


def _transposed_up_blocks(blocks: nn.ModuleList, input_sides: list[int]) -> nn.ModuleList:
    """Folded up blocks, each replaced by UpsampleConvReLU where its input is at least _MIN_TRANSPOSED_SIDE wide."""
    return nn.ModuleList(
        UpsampleConvReLU(block) if side >= _MIN_TRANSPOSED_SIDE else block for block, side in zip(blocks, input_sides)
    )


def _to_bf16(module: nn.Module) -> nn.Module:
    return module.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------- int8 bottleneck

ChannelRanges = tuple[Tensor, Tensor, Tensor]
"""Per bottleneck block, float32 (C,) channel maxima of: conv1's input (after norm1 + ReLU), conv1's output (after
the folded norm2 + ReLU) and |conv2's output|."""


def bottleneck_ranges(bottleneck: nn.Sequential, inputs: list[Tensor]) -> list[ChannelRanges]:
    """Channel ranges of every block of a folded float32 bottleneck (`_folded`), maxima over all `inputs`.

    inputs: warped features (B, F, h, w) float32, what the bottleneck sees (e.g. FommFrameMotion's output).
    """
    ranges: list[ChannelRanges] | None = None
    with torch.inference_mode():
        for x in inputs:
            seen = []
            for block in bottleneck:
                a = F.relu(block.norm1(x))
                b = F.relu(block.conv1(a))
                c = block.conv2(b)
                seen.append(tuple(v.abs().amax(dim=(0, 2, 3)) for v in (a, b, c)))
                x = x + c
            ranges = seen if ranges is None else [
                tuple(torch.maximum(old, new) for old, new in zip(before, now)) for before, now in zip(ranges, seen)
            ]
    if ranges is None:
        raise ValueError("bottleneck_ranges needs at least one input")
    return ranges


@contextlib.contextmanager
def _quiet_quantization() -> Iterator[None]:
    """torch 2.13 warns (once per process) on quantized-tensor creation that the API will be deprecated; torch is
    pinned exactly (pyproject), so the warning tells a user nothing. Silenced around weight quantisation, which runs
    before any per-frame call (warnings.catch_warnings is not thread-safe, so never per frame)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)
        yield


def _prepacked_int8_conv(weight: Tensor, bias: Tensor) -> Any:
    """A 3x3, padding-1 convolution prepacked for torch's int8 kernels: symmetric int8 weights with one scale per
    output channel (max |w| / 127), float32 bias."""
    scales = (weight.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127).double()
    with _quiet_quantization():
        qweight = torch.quantize_per_channel(weight.float(), scales, torch.zeros(len(scales), dtype=torch.long), 0,
                                             torch.qint8)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = _INT8_ENGINE
    try:
        return torch.ops.quantized.conv2d_prepack(qweight, bias.float(), [1, 1], [1, 1], [1, 1], 1)
    finally:
        torch.backends.quantized.engine = previous


class Int8Residual(nn.Module):
    """A folded PreActResidual with 8-bit convolutions: x + g * conv2(relu(conv1(q(relu(s * x + t))))).

    - weights: int8, one scale per output channel; activations: uint8 / int8, one scale per tensor. conv1's input
      scale is taken from each frame (its max / 255, never clipped); conv1's and conv2's output scales are fixed
      from calibration `ranges` (values beyond the calibrated maxima saturate). The residual sum stays float32.
    - cross-layer equalisation (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
      Correction", section 4.1): a positive per-channel factor moved from a ReLU's output into the next
      convolution's input channels is exact algebra (ReLU commutes with positive scaling); chosen as
      sqrt(activation range / weight range) it evens out the channels so that one 8-bit scale per tensor loses
      little on channels with small values. conv2's output channels are divided by their range and multiplied
      back in float32 (g) after dequantisation.
    """

    def __init__(self, block: PreActResidual, ranges: ChannelRanges) -> None:
        super().__init__()
        if not isinstance(block.norm2, nn.Identity):
            raise ValueError("Int8Residual needs a folded block (norm2 folded into conv1, see _folded)")
        norm = block.norm1
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            w1, b1 = block.conv1.weight.detach().clone(), block.conv1.bias.detach().clone()
            w2, b2 = block.conv2.weight.detach().clone(), block.conv2.bias.detach().clone()
            a_range, b_range, c_range = (r.float().clamp_min(1e-6) for r in ranges)
            e = torch.sqrt(a_range / w1.abs().amax(dim=(0, 2, 3)).clamp_min(1e-12))  # conv1 input channels
            scale, shift, w1 = scale / e, shift / e, w1 * e.view(1, -1, 1, 1)
            f = torch.sqrt(b_range / w2.abs().amax(dim=(0, 2, 3)).clamp_min(1e-12))  # conv1 out = conv2 in
            w1, b1, w2, b2_range = w1 / f.view(-1, 1, 1, 1), b1 / f, w2 * f.view(1, -1, 1, 1), b_range / f
            w2, b2 = w2 / c_range.view(-1, 1, 1, 1), b2 / c_range  # conv2 output channels to range 1
        self.register_buffer("scale", scale.view(1, -1, 1, 1).contiguous())
        self.register_buffer("shift", shift.view(1, -1, 1, 1).contiguous())
        self.register_buffer("gain", c_range.view(1, -1, 1, 1).contiguous())
        self.conv1 = _prepacked_int8_conv(w1, b1)
        self.conv2 = _prepacked_int8_conv(w2, b2)
        self.conv1_out_scale = float(b2_range.max()) / 255  # uint8 after the ReLU
        self.conv2_out_scale = 1.0 / 127  # int8 range as uint8 with zero point 128

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) float32 (channels-last preferred) -> same shape, float32."""
        # The ReLU is the quantisation itself: quint8 with zero point 0 clamps negatives to 0, and the scale only
        # needs the maximum, which is max(a, 0) either way (one pass over the tensor fewer, bit-identical).
        a = torch.addcmul(self.shift, x, self.scale)
        # No warning here: torch warns once per process, and that once was silenced in _prepacked_int8_conv.
        # amax, not max: on a channels-last tensor torch 2.13's full max() takes a slow strided path (about 2 ms
        # per block on one core against 0.06 ms, measured in one process; same value, so bit-identical output).
        qa = torch.quantize_per_tensor(a, max(float(a.amax()), 1e-8) / 255, 0, torch.quint8)
        b = torch.ops.quantized.conv2d_relu(qa, self.conv1, self.conv1_out_scale, 0)
        c = torch.ops.quantized.conv2d(b, self.conv2, self.conv2_out_scale, 128)
        return torch.addcmul(x, c.dequantize(), self.gain)


class Int8Bottleneck(nn.Sequential):
    """The generator's bottleneck as Int8Residual blocks: (B, F, h, w) float32 -> float32, channels-last."""

    def __init__(self, bottleneck: nn.Sequential, ranges: list[ChannelRanges]) -> None:
        if len(ranges) != len(bottleneck):
            raise ValueError(f"Int8Bottleneck: {len(ranges)} calibration ranges for {len(bottleneck)} blocks")
        super().__init__(*(Int8Residual(block, r) for block, r in zip(bottleneck, ranges)))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float().contiguous(memory_format=torch.channels_last))


def int8_calibration_ranges(generator: FommGenerator, kp_detector: nn.Module,
                            images: list[Tensor]) -> list[ChannelRanges]:
    """Bottleneck channel ranges of each image animated by its own keypoints (identity motion), float32.

    images: (1, C, H, W) float32 RGB in [0, 1] at the model's input size (e.g. the built-in avatars).
    """
    motion = FommFrameMotion(generator, int(images[0].shape[-1]) if images else 256)
    warped = []
    with torch.inference_mode():
        for image in images:
            value, jacobian = kp_detector(image)
            warped.append(motion(image, generator.encode_source(image), value, jacobian, value, jacobian))
    return bottleneck_ranges(_folded(generator.bottleneck), warped)


class FommFrameMotion(nn.Module):
    """The float32 first half of the frame generator: dense motion, then the encoding warped and occluded.

    Inputs as FommGenerator.forward -> warped_features (B, F, H/4, W/4) float32, the bottleneck's input. Exported
    to ONNX (fomm_export.FRAME_MOTION) and run on ONNX Runtime beside the bf16 decoder.
    """

    def __init__(self, generator: FommGenerator, image_size: int = 256) -> None:
        super().__init__()
        self.generator = generator
        network = generator.dense_motion_network
        # In eval mode (batch norms folded: eval mode only) the hourglass's up blocks run as UpsampleConvPhases from
        # side 8 on, and the mask and occlusion heads (7x7 convolutions of the same features) as one convolution.
        # image_size (the frames' side) only picks the faster form per block; every choice computes the same.
        self.dense_motion = network if generator.training else _phased_dense_motion(network, image_size)
        self.heads = None if generator.training else _fused_conv(network.mask, network.occlusion)
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
        network = self.dense_motion
        if self.heads is None:
            deformation, occlusion_map, _ = network(
                source_image, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
            )
        else:
            motions, hourglass_in = network.motion_inputs(
                source_image, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian
            )
            logits = self.heads(network.hourglass(hourglass_in))
            num_motions = motions.shape[1]
            deformation, occlusion_map, _ = network.blend(motions, logits[:, :num_motions], logits[:, num_motions:])
        return self.generator.warped_features(source_features, deformation, occlusion_map)


class FommFastKeypointDetector(nn.Module):
    """The keypoint detector as exported for ONNX Runtime and TensorRT: the same function as FommKeypointDetector
    (float32; batch norms folded, so eval mode only), with the hourglass's up blocks as UpsampleConvPhases from
    side 8 on and the keypoint and jacobian heads (7x7 convolutions of the same features) as one convolution.

    (B, C, H, W) float32 RGB in [0, 1] -> value (B, K, 2), jacobian (B, K, 2, 2), as FommKeypointDetector.
    image_size (the frames' side) only picks the faster form per up block.
    """

    def __init__(self, detector: FommKeypointDetector, image_size: int = 256) -> None:
        super().__init__()
        if detector.training:
            raise ValueError("FommFastKeypointDetector folds batch norms: pass a detector in eval mode")
        self.detector = copy.deepcopy(detector)
        decoder = self.detector.predictor.decoder
        scale = detector.down.scale if hasattr(detector.down, "scale") else 1.0
        decoder.up_blocks = _phased_up_blocks(decoder.up_blocks, round(image_size * scale))
        self.heads = _fused_conv(detector.kp, detector.jacobian)
        self.num_kp = detector.kp.out_channels
        self.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        detector = self.detector
        logits = self.heads(detector.predictor(detector.down(image)))
        return detector.keypoints_from(logits[:, :self.num_kp], logits[:, self.num_kp:])


class FommFastDecoder(nn.Module):
    """The bf16 second half: warped_features (B, F, h, w) float32 -> prediction (B, 3, H, W) float32 in [0, 1].

    Batch norms folded, channels-last bfloat16, up blocks as transposed convolutions; with int8_ranges the
    bottleneck is an Int8Bottleneck (float32 in and out, int8 convolutions). Weights are copies, so the float32
    generator may be freed.
    """

    def __init__(self, generator: FommGenerator, image_size: int = 256,
                 int8_ranges: list[ChannelRanges] | None = None) -> None:
        super().__init__()
        if generator.training:
            raise ValueError("FommFastDecoder folds batch norms: pass a generator in eval mode")
        folded = _folded(generator.bottleneck)
        self.int8 = int8_ranges is not None
        self.bottleneck = Int8Bottleneck(folded, int8_ranges) if int8_ranges is not None else _to_bf16(folded)
        feature_side = image_size // 2**generator.config.generator.num_down_blocks
        self.up_blocks = _to_bf16(_transposed_up_blocks(
            _folded(generator.up_blocks), [feature_side * 2**i for i in range(len(generator.up_blocks))]
        ))
        self.final = _to_bf16(copy.deepcopy(generator.final))
        self.eval().requires_grad_(False)

    def forward(self, warped_features: Tensor) -> Tensor:
        if self.int8:
            out = self.bottleneck(warped_features).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        else:
            out = self.bottleneck(warped_features.to(dtype=torch.bfloat16, memory_format=torch.channels_last))
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out).float()).contiguous()


class FommFastFrameGenerator(nn.Module):
    """`FommFrameGenerator` (same inputs, prediction only) as FommFrameMotion (float32) + FommFastDecoder (bf16)."""

    def __init__(self, generator: FommGenerator, image_size: int = 256,
                 int8_ranges: list[ChannelRanges] | None = None) -> None:
        super().__init__()
        self.motion = FommFrameMotion(generator, image_size)
        self.decoder = FommFastDecoder(generator, image_size, int8_ranges)
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
