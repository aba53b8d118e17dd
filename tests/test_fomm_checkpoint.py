"""FOMM checkpoint loading: tensors-only reads, strict key/shape checks with useful errors, config inference."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from avatarcam.errors import ModelFileError
from avatarcam.generators.fomm.checkpoint import (
    build_fomm_modules,
    infer_fomm_config,
    load_fomm_checkpoint,
    read_fomm_state_dicts,
)
from avatarcam.generators.fomm.model import FommConfig, FommGenerator, FommKeypointDetector

FIXTURES = Path(__file__).parent / "fixtures" / "fomm"
TINY = FIXTURES / "tiny-checkpoint.pth.tar"


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    return torch.load(TINY, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_config() -> FommConfig:
    return FommConfig.from_model_params(json.loads((FIXTURES / "tiny-config.json").read_text())["model_params"])


def test_fixture_files_match_origin_hashes():
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (FIXTURES / "ORIGIN.md").read_text(), flags=re.M)
    assert len(listed) == 5
    for digest, name in listed:
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name


def test_tiny_checkpoint_loads_strictly_in_eval_mode(tiny_state, tiny_config):
    kp_detector, generator = load_fomm_checkpoint(TINY, tiny_config)
    for module, name in ((kp_detector, "kp_detector"), (generator, "generator")):
        assert not module.training and all(not m.training for m in module.modules())
        assert not any(p.requires_grad for p in module.parameters())
        state = module.state_dict()
        assert list(state) == list(tiny_state[name])
        assert all(torch.equal(state[k], v) for k, v in tiny_state[name].items())


def _layout(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def test_config_inferred_from_tiny_shapes_builds_the_same_model(tiny_state, tiny_config):
    inferred = infer_fomm_config(tiny_state["kp_detector"], tiny_state["generator"])
    assert inferred.num_kp == 10 and inferred.kp_detector.block_expansion == 4
    assert inferred.kp_detector.scale_factor == 0.25 and inferred.generator.dense_motion.scale_factor == 0.25
    # max_features above the widest layer is invisible in shapes, so compare the layouts, not the numbers.
    assert _layout(FommKeypointDetector(inferred)) == _layout(FommKeypointDetector(tiny_config))
    assert _layout(FommGenerator(inferred)) == _layout(FommGenerator(tiny_config))
    kp_detector, _ = load_fomm_checkpoint(TINY)  # config=None infers
    assert kp_detector.config == inferred


def _random_vox_state_dicts() -> tuple[dict, dict]:
    """A random vox-256 checkpoint built from the original code's key list (the real weights are not ours)."""
    keys = json.loads((FIXTURES / "keys-vox256.json").read_text())
    gen = torch.Generator().manual_seed(0)

    def tensor(entry):
        if entry["dtype"] == "int64":
            return torch.zeros(entry["shape"], dtype=torch.int64)
        return torch.rand(entry["shape"], generator=gen)

    return tuple({e["key"]: tensor(e) for e in keys[part]["keys"]} for part in ("kp_detector", "generator"))


def test_vox256_shapes_infer_the_vox256_config_and_load():
    kp_state, generator_state = _random_vox_state_dicts()
    config = infer_fomm_config(kp_state, generator_state)
    assert config == FommConfig.vox256()
    kp_detector, generator = build_fomm_modules(kp_state, generator_state, config)
    assert torch.equal(generator.state_dict()["final.weight"], generator_state["final.weight"])
    assert torch.equal(kp_detector.state_dict()["jacobian.bias"], kp_state["jacobian.bias"])


def test_missing_file_explains_where_the_weights_are(tmp_path):
    with pytest.raises(ModelFileError) as error:
        load_fomm_checkpoint(tmp_path / "vox-adv-cpk.pth.tar")
    message = str(error.value)
    assert "does not exist" in message and "vox-adv-cpk.pth.tar" in message
    assert "avatarify folder" in message and "CC BY-NC" in message and "never ships" in message
    with pytest.raises(ModelFileError, match="is a directory"):
        load_fomm_checkpoint(tmp_path)


def test_junk_file_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(ModelFileError, match="not a PyTorch checkpoint"):
        load_fomm_checkpoint(junk)
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(TINY.read_bytes()[:4096])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_fomm_checkpoint(truncated)


def test_legacy_pickle_with_objects_is_refused_with_a_conversion_recipe(tmp_path, tiny_state):
    legacy = tmp_path / "old.pth.tar"
    checkpoint = dict(tiny_state, options=argparse.Namespace(epochs=100))
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError) as error:
        load_fomm_checkpoint(legacy)
    message = str(error.value)
    assert "argparse.Namespace" in message and "weights_only=True" in message
    assert "weights_only=False" in message and "torch.save" in message and "trust" in message


def test_training_checkpoint_with_extra_keys_loads(tmp_path, tiny_state, tiny_config):
    """FOMM training checkpoints (legacy pickle, like the released ones) carry optimizers and the epoch too."""
    training = dict(
        tiny_state,
        discriminator={"down_blocks.0.conv.weight": torch.zeros(4, 3, 4, 4)},
        optimizer_generator={"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0, 1]}]},
        optimizer_kp_detector={"state": {}, "param_groups": []},
        optimizer_discriminator={"state": {}, "param_groups": []},
        epoch=99,
    )
    for zip_container in (True, False):
        path = tmp_path / f"train-{zip_container}.pth.tar"
        torch.save(training, path, _use_new_zipfile_serialization=zip_container)
        kp_detector, generator = load_fomm_checkpoint(path, tiny_config)
        assert torch.equal(generator.state_dict()["final.bias"], tiny_state["generator"]["final.bias"])


@pytest.mark.parametrize(
    "content, expected",
    [
        ([1, 2, 3], "holds a list"),
        ({"generator": {}}, r"keys \['generator'\]"),
        ({"kp_detector": [], "generator": {}}, r"checkpoint\['kp_detector'\] should be a state dict"),
        ({"kp_detector": {"kp.weight": 3.0}, "generator": {}}, r"\['kp.weight'\] should be a tensor"),
    ],
)
def test_wrong_structure_is_named(tmp_path, content, expected):
    path = tmp_path / "odd.pth.tar"
    torch.save(content, path)
    with pytest.raises(ModelFileError, match=expected):
        load_fomm_checkpoint(path)


def _save_edited(tmp_path, tiny_state, part, edit) -> Path:
    state = {name: dict(sd) for name, sd in tiny_state.items()}
    edit(state[part])
    path = tmp_path / "edited.pth.tar"
    torch.save(state, path)
    return path


def test_renamed_key_is_named_with_shapes(tmp_path, tiny_state, tiny_config):
    def rename(sd):
        sd["final.wieght"] = sd.pop("final.weight")

    path = _save_edited(tmp_path, tiny_state, "generator", rename)
    with pytest.raises(ModelFileError) as error:
        load_fomm_checkpoint(path, tiny_config)
    message = str(error.value)
    assert "generator state dict" in message and "2 differences" in message
    assert "missing 'final.weight' (expected shape (3, 8, 7, 7))" in message
    assert "unexpected 'final.wieght' (shape (3, 8, 7, 7))" in message


def test_wrong_shape_is_named_with_expected_and_seen(tmp_path, tiny_state, tiny_config):
    def widen(sd):
        sd["kp.bias"] = torch.zeros(11)

    path = _save_edited(tmp_path, tiny_state, "kp_detector", widen)
    with pytest.raises(ModelFileError, match=r"'kp\.bias' has shape \(11,\), expected \(10,\)"):
        load_fomm_checkpoint(path, tiny_config)


def test_many_differences_list_only_the_first_few(tiny_state):
    # The tiny weights against the vox-256 config: every layer but the fixed-size ones differs.
    with pytest.raises(ModelFileError) as error:
        build_fomm_modules(tiny_state["kp_detector"], tiny_state["generator"], FommConfig.vox256())
    message = str(error.value)
    assert message.count("has shape") == 5 and re.search(r"and \d+ more", message)
    assert "predictor.encoder.down_blocks.0.conv.weight' has shape (8, 3, 3, 3), expected (64, 3, 3, 3)" in message


def test_inference_names_a_missing_key(tiny_state):
    generator_state = {k: v for k, v in tiny_state["generator"].items() if k != "first.conv.weight"}
    with pytest.raises(ModelFileError, match="no key 'first.conv.weight'"):
        infer_fomm_config(tiny_state["kp_detector"], generator_state)


def test_read_returns_both_state_dicts(tiny_state):
    kp_state, generator_state = read_fomm_state_dicts(TINY)
    assert len(kp_state) == 75 and len(generator_state) == 196
    assert list(kp_state) == list(tiny_state["kp_detector"])
