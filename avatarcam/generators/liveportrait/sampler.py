"""Trilinear sampling of a 3-D feature volume: torch's 5-D grid_sample, and the same sample from 4-D ones.

LivePortrait's warping module samples its (B, C, D, H, W) feature volume twice per frame with a 5-D
`F.grid_sample(input, grid, mode='bilinear', padding_mode='zeros', align_corners=False)`. TensorRT's built-in
GridSample layer takes 4-D inputs only, so an engine with the 5-D op needs a custom plugin. `grid_sample_3d_slices`
computes the identical quantity from one 4-D grid_sample over the depth slices, blended along depth with the
trilinear hat weights:

    out[b, c, d, h, w] = sum_z  bilinear(input[b, c, z], grid[b, d, h, w, :2]) * max(0, 1 - |p_z - z|),
    p_z = ((grid[b, d, h, w, 2] + 1) * D - 1) / 2      (the align_corners=False un-normalisation along depth).

A depth tap outside 0..D-1 gets no slice, and a hat weight outside [p_z - 1, p_z + 1] is 0, which is exactly what
zeros padding does; the in-plane zeros padding is grid_sample's own. All D slices go through one 4-D grid_sample as
channels (C*D channels, the grid's D*H rows), so the graph has a single GridSample node of rank 4, then a multiply
and a reduce-sum over depth. It costs D/2 times the taps of the trilinear op (16 slices instead of the 2 that a
point touches); in exchange every op is a built-in TensorRT layer (GridSample, ElementWise, Reduce, Shuffle).

Bound (tests/test_liveportrait_sampler.py): equal to torch's 5-D op within 2e-6 * max|input| on random inputs and on
the fixture's tensors, in torch and on ONNX Runtime (the two only differ in the order of the float32 sums).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLERS", "grid_sample_3d", "grid_sample_3d_slices", "grid_sample_3d_torch"]

SAMPLERS = ("torch", "slices")
"""'torch': the original 5-D grid_sample (torch runtime); 'slices': 4-D GridSample + depth blend (ONNX/TensorRT)."""


def grid_sample_3d_torch(volume: Any, grid: Any) -> Any:
    """torch's 5-D trilinear grid_sample as LivePortrait calls it (zeros padding, align_corners=False).

    volume: (B, C, D, H, W) float; grid: (B, Do, Ho, Wo, 3) float, (x, y, z) in [-1, 1] (may leave it).
    Returns (B, C, Do, Ho, Wo).
    """
    import torch.nn.functional as F

    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def grid_sample_3d_slices(volume: Any, grid: Any) -> Any:
    """The same trilinear sample as `grid_sample_3d_torch`, from one 4-D grid_sample and a blend along depth.

    volume: (B, C, D, H, W) float; grid: (B, Do, Ho, Wo, 3) float. Returns (B, C, Do, Ho, Wo).
    Formula: see the module docstring (the align_corners=False un-normalisation of torch's grid_sample).
    """
    import torch
    import torch.nn.functional as F

    b, c, d, h, w = volume.shape
    _, do, ho, wo, _ = grid.shape
    slices = volume.reshape(b, c * d, h, w)  # every depth slice of every channel, side by side as channels
    plane = grid[..., :2].reshape(b, do * ho, wo, 2)
    sampled = F.grid_sample(slices, plane, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(b, c, d, do, ho, wo)
    p_z = ((grid[..., 2] + 1.0) * d - 1.0) * 0.5  # (B, Do, Ho, Wo), depth in voxel units
    z = torch.arange(d, dtype=volume.dtype, device=volume.device).reshape(1, d, 1, 1, 1)
    weight = torch.relu(1.0 - torch.abs(p_z.unsqueeze(1) - z))  # (B, D, Do, Ho, Wo): the trilinear hat
    return (sampled * weight.unsqueeze(1)).sum(dim=2)


def grid_sample_3d(volume: Any, grid: Any, sampler: str) -> Any:
    """Dispatch to one of SAMPLERS; ValueError naming the choices otherwise."""
    if sampler == "torch":
        return grid_sample_3d_torch(volume, grid)
    if sampler == "slices":
        return grid_sample_3d_slices(volume, grid)
    raise ValueError(f"volumetric sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
