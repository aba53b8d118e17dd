"""Every LivePortrait ONNX graph equals its torch module on ONNX Runtime CPU (tiny weights; full size is heavy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatarcam.backends.export import DEFAULT_OPSET, ONNX_IR_VERSION, load_exported
from avatarcam.generators.liveportrait import export as lx
from avatarcam.generators.liveportrait.checkpoint import load_liveportrait

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "liveportrait"


@pytest.fixture(scope="module")
def lp(one_torch_thread):
    return load_liveportrait(FIXTURE / "tiny-weights")


@pytest.fixture(scope="module")
def exported(lp, tmp_path_factory):
    """Every graph exported as the reenactor exports it (plugin-free sampler), not yet verified."""
    from avatarcam.backends.export import export_onnx

    folder = tmp_path_factory.mktemp("graphs")
    paths = {}
    for name in lx.GRAPH_NAMES:
        io = lx.graph_io(lp, name)
        paths[name] = export_onnx(lx.graph_module(lp, name, sampler="slices"),
                                  lx.sample_inputs(lp, name, np.random.default_rng(0)), folder / f"{name}.onnx",
                                  input_names=io.input_names, output_names=io.output_names).onnx_path
    lx.graph_module(lp, lx.WARP_GENERATE, sampler="torch")
    return paths


def test_graphs_are_pinned_and_named(lp, exported):
    for name, path in exported.items():
        info = load_exported(path)
        assert info.opset == DEFAULT_OPSET and info.ir_version == ONNX_IR_VERSION, name
        assert info.io.input_names == lx.graph_io(lp, name).input_names
        assert info.io.output_names == lx.graph_io(lp, name).output_names


def test_ensure_exported_verifies_then_reuses(lp, tmp_path):
    cheap = (lx.STITCHING, lx.RETARGETING, lx.MOTION)
    lines: list[str] = []
    paths = lx.ensure_exported(lp, engines_dir=tmp_path, names=cheap, log_line=lines.append)
    assert all(p.parent == lx.export_folder(lp, engines_dir=tmp_path) and p.is_file() for p in paths.values())
    assert sum("exported; max abs error vs torch" in line for line in lines) == len(cheap)
    again: list[str] = []
    assert lx.ensure_exported(lp, engines_dir=tmp_path, names=cheap, log_line=again.append) == paths and again == []
    assert lp.warping.sampler == "torch"


def test_warp_generate_graph_has_no_5d_grid_sample(exported):
    assert lx.onnx_grid_sample_ranks(exported[lx.WARP_GENERATE]) == [4, 4]


@pytest.mark.parametrize("name", lx.GRAPH_NAMES)
def test_graph_equals_torch_on_onnx_runtime(lp, exported, name):
    """Fresh inputs (seed 2); the torch side runs the original 5-D sampler, so this also covers the sampler swap."""
    from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner

    paths = exported
    feed = lx.sample_inputs(lp, name, np.random.default_rng(2))
    module = lx.graph_module(lp, name, sampler="torch")
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feed.values()))
    want = (want,) if isinstance(want, torch.Tensor) else want
    with OnnxRuntimeRunner(onnx_path=paths[name], device="cpu") as runner:
        got = {k: np.array(v) for k, v in runner.run(feed).items()}
    for spec, w in zip(lx.graph_io(lp, name).outputs, want):
        err = float(np.abs(got[spec.name].astype(np.float64) - w.numpy()).max())
        assert got[spec.name].shape == tuple(w.shape)
        assert err < lx.VERIFY_ATOL[name], f"{name}.{spec.name}: {err:.3g}"


@pytest.mark.heavy
def test_full_size_graphs_equal_torch(tmp_path):
    """Random weights of the published widths: export, then ONNX Runtime vs torch for every graph."""
    from avatarcam.generators.liveportrait.reenactor import random_full_size_models

    models = random_full_size_models(seed=0)
    lines: list[str] = []
    paths = lx.ensure_exported(models, engines_dir=tmp_path, log_line=lines.append)  # EngineError past VERIFY_ATOL
    assert set(paths) == set(lx.GRAPH_NAMES) and all(p.is_file() for p in paths.values())
    assert sum("exported; max abs error vs torch" in line for line in lines) == len(lx.GRAPH_NAMES)
    assert lx.onnx_grid_sample_ranks(paths[lx.WARP_GENERATE]) == [4, 4]


def test_registry_recipe_exports_through_the_backends_registry(tmp_path, monkeypatch, lp):
    """The factories the generator registry will list: tiny weights by default, the export verified by the tool."""
    from avatarcam.generators import EXPORTABLE_MODELS, export_registered

    monkeypatch.delenv(lx.CHECKPOINT_ENV, raising=False)
    monkeypatch.setitem(EXPORTABLE_MODELS, lx.STITCHING, lx.stitching_recipe)
    exported, errors = export_registered(lx.STITCHING, out_dir=tmp_path)
    assert exported.onnx_path == tmp_path / "lp_stitching.onnx" and max(errors.values()) < lx.VERIFY_ATOL[lx.STITCHING]
