"""FOMM input size: 256 for every checkpoint unless the user says otherwise (flag, config key, FOMM's own YAML).

tests/fixtures/fomm/parity-256.npz holds the original code's animation with the tiny checkpoint (narrower layers than
vox-256) at 256x256, as FOMM's demo and Avatarify run it. The real CLI renders the same frames through lossless files
and must match it to uint8 rounding; the same checkpoint at 128 (the size formerly inferred from its widths) must not.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from avatarcam.cli import build_parser, overrides_from_args
from avatarcam.config import load_config
from avatarcam.errors import ConfigError
from avatarcam.generators.fomm.checkpoint import read_fomm_yaml
from avatarcam.generators.fomm.export import DEFAULT_IMAGE_SIZE, choose_image_size, load_fomm_models
from avatarcam.generators.fomm.model import FommConfig
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = ROOT / "tests" / "fixtures" / "fomm"
TINY = FIXTURES / "tiny-checkpoint.pth.tar"
# The fixture README's bound for an fp32 port's predictions, in [0, 1]; the uint8 video adds its rounding.
PREDICTION_BOUND = 5e-4
UINT8_BOUND = 1 / 255 + PREDICTION_BOUND

# FOMM's config/vox-adv-256.yaml as Avatarify users have it (training sections shortened, all kept as sections).
VOX_ADV_YAML = """\
dataset_params:
  root_dir: data/vox-png
  frame_shape: [256, 256, 3]
  id_sampling: True
  augmentation_params:
    flip_param: {horizontal_flip: True, time_flip: True}
model_params:
  common_params: {num_kp: 10, num_channels: 3, estimate_jacobian: True}
  kp_detector_params: {temperature: 0.1, block_expansion: 32, max_features: 1024, scale_factor: 0.25, num_blocks: 5}
  generator_params:
    block_expansion: 64
    max_features: 512
    num_down_blocks: 2
    num_bottleneck_blocks: 6
    estimate_occlusion_map: True
    dense_motion_params: {block_expansion: 64, max_features: 1024, num_blocks: 5, scale_factor: 0.25}
  discriminator_params: {scales: [1], block_expansion: 32, max_features: 512, num_blocks: 4, use_kp: True}
train_params:
  num_epochs: 150
  scales: [1, 0.5, 0.25, 0.125]
"""


@pytest.fixture(scope="module")
def parity256() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "parity-256.npz") as data:
        return {name: data[name] for name in data.files}


def tiny_yaml(tmp_path, frame_shape: str = "[128, 128, 3]"):
    """FOMM YAML of the tiny checkpoint (tiny-config.json's model_params) with the given frame_shape."""
    import json

    import yaml

    tree = {"dataset_params": {"frame_shape": yaml.safe_load(frame_shape)},
            "model_params": json.loads((FIXTURES / "tiny-config.json").read_text())["model_params"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_every_checkpoint_defaults_to_256_whatever_its_widths(tmp_path):
    tiny = load_fomm_models(TINY)
    assert tiny.config.generator.block_expansion == 8  # far narrower than vox-256's 64
    assert tiny.image_size == DEFAULT_IMAGE_SIZE == 256
    assert choose_image_size(FommConfig.vox256()) == 256
    assert load_fomm_models(TINY, image_size=384).image_size == 384


def test_an_impossible_size_names_the_value_its_origin_and_the_allowed_sizes(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_fomm_models(TINY, image_size=200)
    message = str(caught.value)
    assert "200" in message and "--fomm-size" in message and "128, 256, 384" in message
    with pytest.raises(ConfigError, match="frame_shape of .*tiny.yaml.*128, 256"):
        load_fomm_models(TINY, fomm_config=tiny_yaml(tmp_path, "[192, 192, 3]"))


def test_fomm_yaml_sets_model_params_and_size_and_the_flag_wins(tmp_path):
    vox = tmp_path / "vox-adv-256.yaml"
    vox.write_text(VOX_ADV_YAML)
    read = read_fomm_yaml(vox)
    assert read.config == FommConfig.vox256() and read.frame_size == 256
    path = tiny_yaml(tmp_path)
    models = load_fomm_models(TINY, fomm_config=path)
    assert models.image_size == 128  # the YAML's frame_shape, because nothing more explicit was given
    assert load_fomm_models(TINY, fomm_config=path, image_size=256).image_size == 256
    # The YAML's model_params must describe the checkpoint: vox-256's do not describe the tiny one.
    with pytest.raises(Exception, match="does not match the FOMM config"):
        load_fomm_models(TINY, fomm_config=vox)


@pytest.mark.parametrize("text, match", [
    (VOX_ADV_YAML.replace("[256, 256, 3]", "[256, 128, 3]"), "frame_shape is \\[256, 128, 3\\]"),
    ("train_params: {num_epochs: 1}\n", "has no model_params"),
    ("model_params: [1, 2\n", "not valid YAML"),
])
def test_bad_fomm_yaml_is_an_error_that_says_what_is_expected(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_fomm_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_fomm_yaml(tmp_path / "missing.yaml")


def test_flags_and_config_keys(tmp_path):
    args = build_parser().parse_args(["--fomm-size", "384", "--fomm-config", "vox-adv-256.yaml"])
    overrides = overrides_from_args(args)
    assert overrides["generator.fomm_size"] == 384 and overrides["generator.fomm_config"] == "vox-adv-256.yaml"
    config = load_config(None, overrides)
    assert (config.generator.fomm_size, config.generator.fomm_config) == (384, "vox-adv-256.yaml")
    assert load_config(None).generator.fomm_size is None  # null: the FOMM YAML's frame_shape, else 256
    with pytest.raises(ConfigError, match="generator.fomm_size"):
        load_config(None, {"generator.fomm_size": 8})


def test_no_crop_cli_render_of_a_narrow_checkpoint_matches_the_original_at_256(parity256, tmp_path, capsys):
    from tests.test_fomm_render import read_video, write_ffv1

    source = tmp_path / "source.png"
    cv2.imwrite(str(source), parity256["source_bgr"])
    driver = write_ffv1(tmp_path / "driving.mkv", list(parity256["driving_bgr"]))
    assert all(np.array_equal(a, b) for a, b in zip(read_video(driver), parity256["driving_bgr"]))
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import render as render_tool
    finally:
        sys.path.remove(str(ROOT / "tools"))

    def render(size_flags: list[str], out_name: str) -> list[np.ndarray]:
        out = tmp_path / out_name
        code = render_tool.main([
            "--model", "fomm", "--checkpoint", str(TINY), "--no-crop", "--backend", "torch", *size_flags,
            "--driver", str(driver), "--avatar", str(source), "--out", str(out), "--quiet",
            "--set", "generator.canvas_size=256",
        ])
        assert code == 0, capsys.readouterr().err
        return read_video(out)

    frames = render([], "default.mkv")  # no size given: 256
    assert len(frames) == 3
    for i, (frame, want) in enumerate(zip(frames, parity256["prediction_relative"])):
        reference = want.transpose(1, 2, 0)[..., ::-1]
        error = float(np.abs(frame / 255.0 - reference).max())
        assert error <= UINT8_BOUND, f"frame {i}: max |diff| {error:.3g} > {UINT8_BOUND:.3g}"
    # Not vacuous: at 128 the same checkpoint animates differently (about 13 dB PSNR, max |diff| over 0.8).
    small = render(["--fomm-size", "128"], "small.mkv")
    for i, (frame, want) in enumerate(zip(small, parity256["prediction_relative"])):
        wrong = np.abs(frame / 255.0 - want.transpose(1, 2, 0)[..., ::-1])
        psnr = 10 * np.log10(1 / float(np.mean(wrong**2)))
        assert wrong.max() > 100 * UINT8_BOUND and psnr < 20, (i, float(wrong.max()), psnr)


def test_the_live_reenactor_feeds_256_square_inputs_to_every_model(tmp_path):
    from avatarcam.generators.fomm.reenactor import FommReenactor, FommSettings

    settings = FommSettings(checkpoint=TINY, backend="torch", crop=False, canvas_size=256, engines_dir=tmp_path)
    with FommReenactor(settings=settings) as reenactor:
        assert reenactor.image_size == 256
        shapes = {name: {spec.name: spec.shape for spec in runner.runner.io.inputs}
                  for name, runner in (("kp", reenactor.runners.kp_detector),
                                       ("encoder", reenactor.runners.source_encoder),
                                       ("generator", reenactor.runners.frame_generator))}
    assert shapes["kp"]["image"] == (1, 3, 256, 256)
    assert shapes["encoder"]["source_image"] == (1, 3, 256, 256)
    assert shapes["generator"]["source_image"] == (1, 3, 256, 256)
    assert shapes["generator"]["source_features"][2:] == (64, 64)


def test_config_keys_reach_the_reenactor(tmp_path):
    from avatarcam.generators.fomm.reenactor import build_fomm_reenactor

    base = {"generator.model": "fomm", "generator.checkpoint": str(TINY), "generator.backend": "torch",
            "generator.canvas_size": 256}
    with build_fomm_reenactor(load_config(None, {**base, "generator.fomm_config": str(tiny_yaml(tmp_path))})) as built:
        assert built.image_size == 128 and built.models.config.kp_detector.block_expansion == 4
    with build_fomm_reenactor(load_config(None, {**base, "generator.fomm_size": 384})) as built:
        assert built.image_size == 384
    with pytest.raises(ConfigError, match="FOMM input size 320 .*--fomm-size.*128, 256, 384"):
        build_fomm_reenactor(load_config(None, {**base, "generator.fomm_size": 320}))
