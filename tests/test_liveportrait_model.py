"""LivePortrait networks and loader: published key layout, widths from shapes, strict loading, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatarcam.errors import ModelFileError
from avatarcam.generators.liveportrait import model as m
from avatarcam.generators.liveportrait.checkpoint import RETARGETING_ENTRIES, load_liveportrait

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "liveportrait"
TINY = FIXTURE / "tiny-weights"
KEYS = json.loads((FIXTURE / "keys-full.json").read_text())

FULL = {
    "appearance_feature_extractor": (m.AppearanceFeatureExtractor, m.AppearanceConfig()),
    "motion_extractor": (m.MotionExtractor, m.MotionConfig()),
    "warping_module": (m.WarpingNetwork, m.WarpingConfig()),
    "spade_generator": (m.SPADEDecoder, m.GeneratorConfig()),
}


def _layout(state) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in state.items()]


def _published(name: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(e["key"], tuple(e["shape"])) for e in KEYS["networks"][name]["keys"]]


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_base_networks_have_the_published_keys_shapes_and_order(name):
    cls, config = FULL[name]
    with torch.device("meta"):  # no memory: only the layout is compared
        module = cls(config)
    state = module.state_dict()
    assert _layout(state) == _published(name)
    kinds = {e["key"]: e["kind"] for e in KEYS["networks"][name]["keys"]}
    buffers = {k for k, _ in module.named_buffers()}
    assert {k for k in state if k in buffers} == {k for k, v in kinds.items() if v == "buffer"}
    assert sum(p.numel() for p in module.parameters()) == KEYS["parameter_totals"][name]


@pytest.mark.parametrize("part", ["stitching", "lip", "eye"])
def test_full_size_retargeting_mlps_have_the_published_keys(part):
    spec = KEYS["model_params"]["stitching_retargeting_module_params"][part]
    config = m.MlpConfig(spec["input_size"], tuple(spec["hidden_sizes"]), spec["output_size"])
    entry = KEYS["networks"]["stitching_retargeting_module"]["sub_networks"][part]
    assert entry["checkpoint_entry"] == RETARGETING_ENTRIES[part]
    state = m.StitchingRetargetingNetwork(config).state_dict()
    assert _layout(state) == [(e["key"], tuple(e["shape"])) for e in entry["keys"]]


@pytest.fixture(scope="module")
def tiny():
    return load_liveportrait(TINY)


def test_tiny_fixture_loads_with_widths_from_its_shapes(tiny):
    assert tiny.appearance.config.reshape_channel == 2 and tiny.appearance.config.reshape_depth == 16
    assert tiny.motion.config.dims == (8, 12, 16, 24) and tiny.motion.config.depths == (3, 3, 9, 3)
    assert tiny.warping.config.compress == 1 and tiny.warping.config.out_channels == 4
    assert tiny.generator.config.input_channels == 4 and tiny.generator.config.out_channels == 64
    assert tiny.eye.mlp[0].in_features == 66 and tiny.lip.mlp[0].in_features == 65
    # Same key names in the same order as the published files (only widths differ).
    for name, module in [("appearance_feature_extractor", tiny.appearance), ("motion_extractor", tiny.motion),
                         ("warping_module", tiny.warping), ("spade_generator", tiny.generator)]:
        assert [k for k, _ in _layout(module.state_dict())] == [k for k, _ in _published(name)]
        saved = torch.load(TINY / "base_models" / f"{name}.pth", map_location="cpu", weights_only=True)
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved[key]), key
    assert not any(p.requires_grad for p in tiny.generator.parameters()) and not tiny.generator.training


def test_up_1_middle_width_is_min_of_in_and_out(tiny):
    # In the tiny G, up_1 goes 4 -> 64, so its middle width is fin = 4 (fout in the published 256 -> 64).
    assert tuple(tiny.generator.up_1.conv_0.weight_orig.shape) == (4, 4, 3, 3)
    with torch.device("meta"):
        full = m.SPADEDecoder(m.GeneratorConfig())
    assert tuple(full.up_1.conv_0.weight_orig.shape) == (64, 256, 3, 3)


def _copy_tiny(tmp_path: Path) -> Path:
    folder = tmp_path / "liveportrait"
    shutil.copytree(TINY, folder)
    for path in folder.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return folder


def test_parent_folder_with_liveportrait_inside_is_accepted(tmp_path):
    folder = _copy_tiny(tmp_path)
    assert load_liveportrait(tmp_path).folder == folder


def test_safetensors_files_load_to_the_same_networks(tiny, tmp_path):
    from safetensors.torch import save_file

    folder = _copy_tiny(tmp_path)
    for name in ("warping_module", "spade_generator"):
        path = folder / "base_models" / f"{name}.pth"
        state = torch.load(path, map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path.with_suffix(".safetensors")))
        path.unlink()
    retarget = folder / "retargeting_models" / "stitching_retargeting_module.pth"
    nested = torch.load(retarget, map_location="cpu", weights_only=True)
    # The community conversion's flat layout: <entry>_<key>, keys still carrying DDP's module.
    flat = {f"{entry}_{key}": v.contiguous() for entry, sd in nested.items() for key, v in sd.items()}
    save_file(flat, str(retarget.with_suffix(".safetensors")))
    retarget.unlink()
    loaded = load_liveportrait(folder)
    assert loaded.files["spade_generator"].suffix == ".safetensors"
    for a, b in [(loaded.generator, tiny.generator), (loaded.warping, tiny.warping), (loaded.eye, tiny.eye)]:
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert loaded.key == tiny.key
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 126)).astype(np.float32))
    assert torch.equal(loaded.stitching(x), tiny.stitching(x))


def test_retargeting_file_without_ddp_prefix_loads(tmp_path):
    folder = _copy_tiny(tmp_path)
    path = folder / "retargeting_models" / "stitching_retargeting_module.pth"
    nested = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for sd in nested.values() for k in sd)  # the fixture has the DDP form
    torch.save({e: {k.removeprefix("module."): v for k, v in sd.items()} for e, sd in nested.items()}, path)
    assert load_liveportrait(folder).lip.mlp[0].in_features == 65


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    folder = _copy_tiny(tmp_path)
    (folder / "base_models" / "warping_module.pth").unlink()
    with pytest.raises(ModelFileError, match=r"warping_module\.pth.*install\.py --liveportrait"):
        load_liveportrait(folder)


def test_unset_or_absent_folder_says_how_to_get_the_weights(tmp_path):
    with pytest.raises(ModelFileError, match="checkpoint is not set.*install.py --liveportrait"):
        load_liveportrait("")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_liveportrait(tmp_path / "nowhere")


def test_damaged_file_is_named(tmp_path):
    folder = _copy_tiny(tmp_path)
    path = folder / "base_models" / "spade_generator.pth"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=r"spade_generator\.pth is damaged"):
        load_liveportrait(folder)


def test_wrong_keys_are_listed(tmp_path):
    folder = _copy_tiny(tmp_path)
    path = folder / "base_models" / "appearance_feature_extractor.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["first.conv.extra"] = state.pop("second.bias")
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=r"appearance_feature_extractor\.pth.*missing keys, "
                                             r"first \['second\.bias'\].*unexpected keys, "
                                             r"first \['first\.conv\.extra'\]"):
        load_liveportrait(folder)


def test_wrong_shape_is_listed(tmp_path):
    folder = _copy_tiny(tmp_path)
    path = folder / "base_models" / "motion_extractor.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["detector.fc_t.bias"] = torch.zeros(4)
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=r"motion_extractor\.pth.*wrong shape.*detector\.fc_t\.bias \(4,\) "
                                             r"\(expected \(3,\)\)"):
        load_liveportrait(folder)


def test_file_of_another_network_is_refused(tmp_path):
    folder = _copy_tiny(tmp_path)
    shutil.copy(folder / "base_models" / "appearance_feature_extractor.pth",
                folder / "base_models" / "spade_generator.pth")
    with pytest.raises(ModelFileError, match=r"spade_generator\.pth does not hold LivePortrait's spade_generator"):
        load_liveportrait(folder)


def test_networks_of_different_widths_are_refused(tmp_path):
    folder = _copy_tiny(tmp_path)
    generator = m.SPADEDecoder(m.GeneratorConfig(input_channels=8, out_channels=8, hidden=4))
    torch.save(generator.state_dict(), folder / "base_models" / "spade_generator.pth")
    with pytest.raises(ModelFileError, match=r"spade_generator has input channels 8, expected 4 \(warping module\)"):
        load_liveportrait(folder)


def test_pickled_objects_are_refused(tmp_path):
    folder = _copy_tiny(tmp_path)
    torch.save({"stitching": m.StitchingRetargetingNetwork(m.MlpConfig(126, (16,), 65))},
               folder / "retargeting_models" / "stitching_retargeting_module.pth")
    with pytest.raises(ModelFileError, match="weights_only=True"):
        load_liveportrait(folder)
