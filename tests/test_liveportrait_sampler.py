"""The plugin-free volumetric sampler equals torch's 5-D grid_sample, in torch and on ONNX Runtime.

Stated bound: max |slices - torch 5-D| <= 2e-6 * max|input| (both are fp32 trilinear interpolations; only the
summation order differs). Measured on these inputs: see the assertion messages (about 1e-7 relative).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatarcam.generators.liveportrait.sampler import grid_sample_3d, grid_sample_3d_slices, grid_sample_3d_torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "liveportrait"
RELATIVE_BOUND = 2e-6


def _random_case(seed: int, b=2, c=3, d=5, h=7, w=6, do=4, ho=9, wo=8, spread=1.3):
    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(b, c, d, h, w, generator=g) * 5
    # Grid points reach past [-1, 1] on every axis, so the zeros padding is exercised too.
    grid = (torch.rand(b, do, ho, wo, 3, generator=g) * 2 - 1) * spread
    return volume, grid


def _bound(volume: torch.Tensor) -> float:
    return RELATIVE_BOUND * float(volume.abs().max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slices_equal_torch_5d_on_random_volumes(seed):
    volume, grid = _random_case(seed)
    want = grid_sample_3d_torch(volume, grid)
    got = grid_sample_3d_slices(volume, grid)
    err = float((got - want).abs().max())
    assert got.shape == want.shape
    assert err <= _bound(volume), f"max |diff| {err:.3g}"
    # Points on voxel centres and exactly on the borders of the padding.
    d, h, w = volume.shape[2:]
    centres = torch.stack(torch.meshgrid(*(((2 * torch.arange(n) + 1) / n - 1) for n in (d, h, w)), indexing="ij"), -1)
    centres = centres.flip(-1).unsqueeze(0).expand(volume.shape[0], -1, -1, -1, -1).contiguous()
    assert float((grid_sample_3d_slices(volume, centres) - volume).abs().max()) <= _bound(volume)


def test_slices_equal_torch_5d_on_the_fixture_warp():
    """Call 2 of the warping module with the stored f_s and frame-40 deformation (19 % of it outside [-1, 1])."""
    with np.load(FIXTURE / "parity.npz") as data:
        volume, grid = torch.from_numpy(data["f_s"]), torch.from_numpy(data["warp_deformation"])
    want = grid_sample_3d_torch(volume, grid)
    got = grid_sample_3d_slices(volume, grid)
    err = float((got - want).abs().max())
    assert err <= _bound(volume), f"max |diff| {err:.3g} for values up to {float(volume.abs().max()):.3g}"
    # Sensitivity: align_corners=True (the convention of the identity grid, not of the samplers) misses widely.
    other = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    assert float((other - want).abs().max()) > 1000 * _bound(volume)


def test_unknown_sampler_is_refused():
    volume, grid = _random_case(0)
    with pytest.raises(ValueError, match="not one of torch, slices"):
        grid_sample_3d(volume, grid, "cuda-plugin")


class _Slices(torch.nn.Module):
    def forward(self, volume, grid):
        return grid_sample_3d_slices(volume, grid)


def test_slices_on_onnx_runtime_use_only_4d_gridsample(tmp_path):
    from avatarcam.backends.export import DEFAULT_OPSET, ONNX_IR_VERSION, export_onnx
    from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner
    from avatarcam.generators.liveportrait.export import onnx_grid_sample_ranks

    volume, grid = _random_case(3)
    exported = export_onnx(_Slices(), {"volume": volume.numpy(), "grid": grid.numpy()}, tmp_path / "slices.onnx",
                           input_names=("volume", "grid"), output_names=("sampled",))
    assert exported.opset == DEFAULT_OPSET and exported.ir_version == ONNX_IR_VERSION
    assert onnx_grid_sample_ranks(exported.onnx_path) == [4]
    volume2, grid2 = _random_case(4)
    with OnnxRuntimeRunner(onnx_path=exported.onnx_path, device="cpu") as runner:
        got = np.array(runner.run({"volume": volume2.numpy(), "grid": grid2.numpy()})["sampled"])
    want = grid_sample_3d_torch(volume2, grid2).numpy()
    err = float(np.abs(got - want).max())
    assert err <= _bound(volume2), f"ONNX Runtime vs torch 5-D: max |diff| {err:.3g}"
