"""Numeric bounds of the float parity tests, each set from measured noise with its headroom stated.

The noise was measured by `python tools/measure_float_noise.py` (torch 2.13.0, onnxruntime 1.32, 2-core x86-64
with AVX-512): torch threads 1/2/4 x oneDNN on/off x deterministic algorithms off/on, channels-last inputs (what
FOMM's own demo feeds), torch's and oneDNN's SIMD paths capped at AVX2 and at SSE4.1, ONNX Runtime threads 1/2/4 x
graph optimisation off/basic/all, every pair of a torch and an ONNX Runtime configuration. "Worst" below is the
largest error seen there. Capped at AVX2, the port's keypoints land 1.03e-5 / 1.12e-5 from the fixture: exactly the
errors that failed the old 1e-5 bound on another 2-core machine. Each bound is at least 10x its worst case, and each family
has a sensitivity test showing that a wrong answer (a perturbed weight, a one-pixel shift, swapped keypoints, the
other align_corners) fails the same bound by a wide margin. Rerun the script after changing a model or a runtime.

Errors are max |ours - reference| unless named *_MEAN_* (mean |ours - reference|). Bounds of the FOMM parity
arrays apply per unit of magnitude: `scaled(bound, reference)` multiplies by max(1, max |reference|), so keypoint
jacobians or normalised keypoints larger than 1 get the same relative headroom. tools/fomm_parity.py carries the
same FOMM numbers (a tool cannot import tests); tests/test_fomm_parity_tool.py checks that they agree.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- FOMM port vs the original code (parity.npz)

FOMM_KP_BOUND = 3e-4
"""Keypoint values, jacobians and kp_norm, in FOMM's [-1, 1] frame (1 px of a 128 image is 0.016).
Worst 2.0e-5 (kp_norm_value, channels-last inputs); ONNX Runtime's keypoints 2.1e-5 from the original: 14x."""
FOMM_SCALE_REL_BOUND = 2e-5
"""adapt_movement_scale, relative. Worst 1.1e-6 (SSE4.1 kernels): 17x (the fixture's scale is 1.0228: 1100 bounds
from a skipped adaptation's 1)."""
FOMM_MAP_BOUND = 2e-4
"""Deformation grid, occlusion map and mask. Worst 1.9e-5 (mask, channels-last, oneDNN off): 10.5x."""
FOMM_PREDICTION_BOUND = 4e-3
"""Predicted images in [0, 1]: about one uint8 level. Worst 2.6e-4 for the torch port (channels-last, oneDNN off),
3.2e-4 for the keypoint -> relative motion -> generator chain on ONNX Runtime: 12.5x. Max-abs noise concentrates on
a few edge pixels, so FOMM_PREDICTION_MEAN_BOUND catches what spreads over the image."""
FOMM_PREDICTION_MEAN_BOUND = 1e-4
"""Mean |diff| of predicted images. Worst 7.9e-6 (prediction_absolute, torch) / 7.5e-6 (ONNX Runtime chain): 12x.
A 5 % error in the generator's last batch-norm variance moves the mean 15x this (see the sensitivity test)."""

FOMM_ONNX_BOUND = 5e-4
"""Each FOMM graph on ONNX Runtime CPU vs the same torch module, per output (keypoints, features up to 6,
predictions). Worst 4.5e-5 (frame generator prediction on random inputs), 1.3e-5 on keypoints: 11x."""

# ---------------------------------------------------------------- FOMM's lossy CPU modes vs the exact port (fomm_fast)
# Not float noise: bf16 / int8 rounding is the price of the speed, so these are quality bars with measured values,
# and each test also shows that a wrong answer (the next frame's picture) lands far outside them. Predictions in
# [0, 1]; PSNR against the exact float32 port. Measured on an AMD EPYC (avx512_bf16, avx512_vnni), torch 2.13.

FOMM_BF16_MAX_ABS = 0.08
"""bf16 frame generator. Measured: tiny fixture 0.035-0.038; vox-256 shapes (calibrated batch norms) 0.015-0.016."""
FOMM_BF16_MIN_PSNR_DB = 42.0
"""bf16 frame generator. Measured: tiny 50.1-50.2 dB; vox-256 shapes 55.4-58.4 dB."""
FOMM_INT8_MAX_ABS = 0.25
"""int8 bottleneck + bf16 rest, vox-256 shapes (tools/bench_fomm.py's calibrated weights). Max |diff| is a few
isolated pixels, so it is loose and FOMM_INT8_MIN_PSNR_DB is the quality bar. Measured 0.023-0.028 on avatars and
drivers not used for the calibration (lp_s42 + d9, lp_s7 + d19, 7 frames each), 0.132 over bench_fomm's 10 frames
(astronaut + d12)."""
FOMM_INT8_MIN_PSNR_DB = 40.0
"""int8, vox-256 shapes: the bar is "no visible difference" (40 dB). Measured 46.0-47.0 dB on those frames, 45.0 dB
over bench_fomm's 10 frames."""
FOMM_INT8_TINY_MAX_ABS = 0.25
"""int8 on the tiny fixture (32-channel bottleneck: fewer products per sum average less rounding away than vox-256's
256). Measured 0.092-0.116."""
FOMM_INT8_TINY_MIN_PSNR_DB = 36.0
"""int8 on the tiny fixture. Measured 39.2-39.8 dB."""

# ---------------------------------------------------------------- the mesh warp graph (images in [0, 255])

MESH_ONNX_BOUND = 1e-3 * 255.0
"""MeshWarp on ONNX Runtime vs torch, grey levels. Worst 0.011 on the random verification inputs (folded fields),
0.0033 on the portrait poses: 23x. Under half a level, so uint8 frames can differ only where a value sits on a
rounding tie."""

# ---------------------------------------------------------------- the backends contract (tests/test_backends.py)

BACKEND_ONNX_BOUND = 1e-4
"""The conv + grid_sample contract module on ONNX Runtime vs torch (values in [-1, 1]). Worst 7.2e-6: 14x."""
BACKEND_TORCH_BOUND = 1e-6
"""TorchRunner vs calling the same module in the same process and thread settings: the same kernels run, so any
difference is a runner bug, not float noise."""


# ---------------------------------------------------------------- the browser mode (tests/test_web.py)

WEB_AVATAR_REST_DIFF = 3.0
"""Mean |grey change| (0..255, 128x128 sample) of the avatar video between samples 0.2 s apart while the avatar
is at rest (before calibration): VP8 compression noise of a still picture, measured 0.012-0.024 (one run on the
loaded 2-core machine): over 100x headroom, yet far below a moving avatar."""
WEB_AVATAR_MOTION_RATIO = 10.0
"""The largest change once calibrated (the avatar follows the driver, d12.mp4) over the largest change at rest
(floored at 0.1): measured 21-46 against at most 0.024, a ratio over 800."""


def scaled(bound: float, reference: np.ndarray) -> float:
    """bound x max(1, max |reference|): the same relative headroom for arrays whose values exceed 1."""
    return bound * max(1.0, float(np.abs(np.asarray(reference, dtype=np.float64)).max()))


def max_abs(a, b) -> float:
    """max |a - b| in float64."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def mean_abs(a, b) -> float:
    """mean |a - b| in float64."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


# ---------------------------------------------------------------- face swap (generators/swap)

SWAP_COLOUR_STEP_BOUND = 2.0
"""Largest frame-to-frame change of the swap's colour transform at a skin tone, in 8-bit Lab levels (2.55 L levels
are 1 CIE Delta E, about one just-noticeable difference), over d12 frames 0-59 with the default 0.3 s moving
average. A perceptual bound, not a float-noise one: flicker starts to show at about 1 Delta E per frame. Measured
on the fixture: see tests/test_swap.py's assertion message (smoothed and unsmoothed maxima)."""


# ---------------------------------------------------------------- Triton (tests/test_triton.py)

TRITON_REMOTE_BOUND = 5e-4
"""A graph on the Triton test server (ONNX Runtime CPU, 1 thread, inside PyTriton) vs the same ONNX file on the local
ONNX Runtime runner (default threads). Measured 0.0 on every output of all 8 graphs (both sides ONNX Runtime 1.32);
the bound allows the server's environment another ONNX Runtime build or thread split: the FOMM float-noise study's
worst across runtimes and 1/2/4 threads (4.5e-5, FOMM_ONNX_BOUND) with 11x headroom. A wrong tensor order, dtype or
a stale graph on the server gives errors of order 0.1 to 1."""
