"""FOMM port: parity with the original code (tests/fixtures/fomm/parity.npz), export split, normalize_kp, config."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from avatarcam.errors import ConfigError
from avatarcam.generators.fomm.checkpoint import load_fomm_checkpoint
from avatarcam.generators.fomm.model import (
    FommConfig,
    FommFrameGenerator,
    FommGenerator,
    FommKeypointDetector,
    FommKeypoints,
    FommSourceEncoder,
    GaussianDownsampler,
    convex_hull_area,
    coordinate_grid,
    movement_scale,
    normalize_kp,
    relative_keypoints,
)
from tests.tolerances import (
    FOMM_KP_BOUND,
    FOMM_MAP_BOUND,
    FOMM_ONNX_BOUND,
    FOMM_PREDICTION_BOUND,
    FOMM_PREDICTION_MEAN_BOUND,
    FOMM_SCALE_REL_BOUND,
    max_abs,
    mean_abs,
    scaled,
)

FIXTURES = Path(__file__).parent / "fixtures" / "fomm"

# Bounds and their measured noise: tests/tolerances.py. Keypoint and map bounds apply per unit of magnitude.
KP_BOUND = FOMM_KP_BOUND
SCALE_REL_BOUND = FOMM_SCALE_REL_BOUND
MAP_BOUND = FOMM_MAP_BOUND
PREDICTION_BOUND = FOMM_PREDICTION_BOUND
# A comparison only proves something if a wrong answer would fail it by a wide margin.
SENSITIVITY = 100


def assert_close(name: str, got, want, bound: float) -> None:
    err, limit = max_abs(got, want), scaled(bound, want)
    assert err <= limit, f"{name}: max |diff| {err:.3g} > bound {limit:.3g}"


@pytest.fixture(scope="module")
def tiny_config() -> FommConfig:
    return FommConfig.from_model_params(json.loads((FIXTURES / "tiny-config.json").read_text())["model_params"])


def run_fixture_sequence(kp_detector, generator, parity) -> dict[str, np.ndarray]:
    """The fixture README's call sequence (FOMM demo.make_animation): batch 1, frame by frame, relative + absolute."""
    source = torch.from_numpy(parity["source"])
    driving = torch.from_numpy(parity["driving"])
    out: dict[str, list] = {}

    def keep(name, tensor):
        out.setdefault(name, []).append(tensor.numpy())

    with torch.no_grad():
        kp_source = kp_detector.detect(source)
        kp_initial = kp_detector.detect(driving[0:1])
        features = generator.encode_source(source)  # once per avatar
        keep("kp_source_value", kp_source.value)
        keep("kp_source_jacobian", kp_source.jacobian)
        keep("adapt_movement_scale", torch.tensor([movement_scale(kp_source.value, kp_initial.value)]))
        for i in range(driving.shape[0]):
            kp_driving = kp_detector.detect(driving[i : i + 1])
            keep("kp_driving_value", kp_driving.value)
            keep("kp_driving_jacobian", kp_driving.jacobian)
            kp_norm = normalize_kp(kp_source, kp_driving, kp_initial)
            keep("kp_norm_value", kp_norm.value)
            keep("kp_norm_jacobian", kp_norm.jacobian)
            prediction, occlusion, mask, deformation = generator(
                source, features, kp_source.value, kp_source.jacobian, kp_norm.value, kp_norm.jacobian
            )
            keep("prediction_relative", prediction)
            keep("occlusion_map_relative", occlusion)
            keep("mask_relative", mask)
            keep("deformation_relative", deformation)
            kp_abs = normalize_kp(kp_source, kp_driving, kp_initial, use_relative_movement=False)
            keep("prediction_absolute", generator(source, features, kp_source.value, kp_source.jacobian,
                                                  kp_abs.value, kp_abs.jacobian)[0])
    return {name: np.concatenate(parts) for name, parts in out.items()}


@pytest.fixture(scope="module")
def ours(tiny_config, parity) -> dict[str, np.ndarray]:
    kp_detector, generator = load_fomm_checkpoint(FIXTURES / "tiny-checkpoint.pth.tar", tiny_config)
    return run_fixture_sequence(kp_detector, generator, parity)


@pytest.fixture(scope="module")
def ours_align_corners_true(tiny_config, parity) -> dict[str, np.ndarray]:
    config = FommConfig.from_model_params(tiny_config.to_model_params(), align_corners=True)
    kp_detector, generator = load_fomm_checkpoint(FIXTURES / "tiny-checkpoint.pth.tar", config)
    return run_fixture_sequence(kp_detector, generator, parity)


# --------------------------------------------------------------------------------------------------------------------
# Parity with the original code.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["kp_source_value", "kp_source_jacobian", "kp_driving_value", "kp_driving_jacobian",
     "kp_norm_value", "kp_norm_jacobian"],
)
def test_keypoints_match_original(ours, parity, name):
    assert ours[name].shape == parity[name].shape
    assert_close(name, ours[name], parity[name], KP_BOUND)


def test_adapt_movement_scale_matches_original(ours, parity):
    got, want = float(ours["adapt_movement_scale"][0]), float(parity["adapt_movement_scale"][0])
    assert abs(got / want - 1) <= SCALE_REL_BOUND
    assert abs(want - 1) > SENSITIVITY * SCALE_REL_BOUND  # a scale of 1 (adaptation skipped) would fail


@pytest.mark.parametrize(
    "name, bound",
    [("deformation_relative", MAP_BOUND), ("occlusion_map_relative", MAP_BOUND), ("mask_relative", MAP_BOUND),
     ("prediction_relative", PREDICTION_BOUND), ("prediction_absolute", PREDICTION_BOUND)],
)
def test_generator_matches_original(ours, parity, name, bound):
    assert ours[name].shape == parity[name].shape
    assert_close(name, ours[name], parity[name], bound)
    if name.startswith("prediction"):
        assert mean_abs(ours[name], parity[name]) <= FOMM_PREDICTION_MEAN_BOUND, name


@pytest.mark.parametrize(
    "name, bound",
    [("deformation_relative", MAP_BOUND), ("occlusion_map_relative", MAP_BOUND),
     ("prediction_relative", PREDICTION_BOUND)],
)
def test_align_corners_true_matches_original(ours_align_corners_true, parity, name, bound):
    want = parity[f"{name}_align_corners_true"]
    assert_close(f"{name} (align_corners=True)", ours_align_corners_true[name], want, bound)
    if name.startswith("prediction"):
        assert mean_abs(ours_align_corners_true[name], want) <= FOMM_PREDICTION_MEAN_BOUND, name


def test_parity_bounds_are_not_vacuous(parity, ours, ours_align_corners_true):
    """Every array the tests compare differs from a plausible wrong answer by far more than its bound."""
    p = parity
    frames = range(p["driving"].shape[0] - 1)
    for i in range(p["driving"].shape[0]):
        assert max_abs(p["prediction_relative"][i], p["prediction_absolute"][i]) > SENSITIVITY * PREDICTION_BOUND
    for name, bound in [("prediction_relative", PREDICTION_BOUND), ("deformation_relative", MAP_BOUND),
                        ("occlusion_map_relative", MAP_BOUND), ("mask_relative", MAP_BOUND),
                        ("kp_driving_value", KP_BOUND), ("kp_driving_jacobian", KP_BOUND)]:
        assert min(max_abs(p[name][i], p[name][i + 1]) for i in frames) > SENSITIVITY * bound, name
    for name, bound in [("prediction_relative", PREDICTION_BOUND), ("deformation_relative", MAP_BOUND),
                        ("occlusion_map_relative", MAP_BOUND)]:
        assert max_abs(ours[name], ours_align_corners_true[name]) > SENSITIVITY * bound, name
    # Jacobians far from identity, and kp_norm far from the raw driving keypoints, so both code paths count.
    assert max_abs(p["kp_source_jacobian"], np.eye(2)) > SENSITIVITY * KP_BOUND
    assert max_abs(p["kp_norm_value"], p["kp_driving_value"]) > SENSITIVITY * KP_BOUND
    assert max_abs(p["kp_norm_jacobian"], p["kp_driving_jacobian"]) > SENSITIVITY * KP_BOUND


def _defect_kp_head_weight(kp_detector, generator, parity):
    kp_detector.kp.weight.mul_(1.01)  # the heatmap conv's weights 1 % off
    return parity


def _defect_generator_batch_norm(kp_detector, generator, parity):
    generator.bottleneck.r5.norm2.running_var.mul_(1.05)  # the last batch norm's variance 5 % off
    return parity


def _defect_driving_shifted_one_pixel(kp_detector, generator, parity):
    return {**parity, "driving": np.roll(parity["driving"], 1, axis=3)}


class _SwappedKeypoints(torch.nn.Module):
    """The generator fed driving keypoints 0 and 1 in swapped order (a wrong keypoint order)."""

    def __init__(self, generator):
        super().__init__()
        self.inner = generator

    def encode_source(self, source):
        return self.inner.encode_source(source)

    def forward(self, source, features, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian):
        order = [1, 0, *range(2, kp_driving_value.shape[1])]
        return self.inner(source, features, kp_source_value, kp_source_jacobian,
                          kp_driving_value[:, order], kp_driving_jacobian[:, order])


# defect -> (array it shows in, bound, whether the bound is on the mean, smallest error / bound ratio accepted)
DEFECTS = {
    "kp_head_weight_1pct": (_defect_kp_head_weight, "kp_driving_value", KP_BOUND, False, 10),
    "generator_batch_norm_5pct": (_defect_generator_batch_norm, "prediction_relative", FOMM_PREDICTION_MEAN_BOUND,
                                  True, 10),
    "driving_shifted_one_pixel": (_defect_driving_shifted_one_pixel, "kp_driving_value", KP_BOUND, False, 100),
    "keypoints_swapped": (None, "prediction_relative", PREDICTION_BOUND, False, 100),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_a_wrong_model_fails_the_parity_bounds_by_a_wide_margin(tiny_config, parity, ours, defect):
    """Plausible bugs land far outside the bounds the parity tests use, while the correct port is inside them.

    Measured error / bound: heatmap weights 1 % off 23x (keypoints), last generator batch-norm variance 5 % off
    15x (mean |diff| of predictions; 1 % off is 3x), driving frame one pixel off 1000x, two keypoints swapped 190x.
    """
    make_defect, name, bound, on_mean, margin = DEFECTS[defect]
    kp_detector, generator = load_fomm_checkpoint(FIXTURES / "tiny-checkpoint.pth.tar", tiny_config)
    inputs = parity
    with torch.no_grad():
        if make_defect is None:
            generator = _SwappedKeypoints(generator)
        else:
            inputs = make_defect(kp_detector, generator, parity)
    wrong = run_fixture_sequence(kp_detector, generator, inputs)
    measure = mean_abs if on_mean else max_abs
    limit = bound if on_mean else scaled(bound, parity[name])
    assert measure(ours[name], parity[name]) <= limit  # the port itself passes
    ratio = measure(wrong[name], parity[name]) / limit
    assert ratio >= margin, f"{defect}: {name} error is only {ratio:.1f}x its bound"


def test_output_contracts(ours, tiny_config):
    assert all(a.dtype == np.float32 for a in ours.values())
    assert 0 <= ours["prediction_relative"].min() and ours["prediction_relative"].max() <= 1
    assert 0 < ours["occlusion_map_relative"].min() and ours["occlusion_map_relative"].max() < 1
    # A float32 softmax over 11 channels: measured |sum - 1| up to 2.5e-7 over torch configurations, 12x below this.
    np.testing.assert_allclose(ours["mask_relative"].sum(axis=1), 1.0, atol=3e-6)
    assert ours["mask_relative"].shape[1] == tiny_config.num_kp + 1
    # Frame 0 is the reference frame, so relative motion puts the source keypoints back where they were.
    np.testing.assert_array_equal(ours["kp_norm_value"][0], ours["kp_source_value"][0])


def test_downsampler_kernel_equals_saved_buffers():
    state = torch.load(FIXTURES / "tiny-checkpoint.pth.tar", map_location="cpu", weights_only=True)
    ours = GaussianDownsampler(3, 0.25).weight
    for saved in (state["kp_detector"]["down.weight"], state["generator"]["dense_motion_network.down.weight"]):
        assert saved.shape == ours.shape == (3, 1, 13, 13)
        torch.testing.assert_close(ours, saved, rtol=0, atol=1e-7)


def test_strided_downsampling_equals_blur_then_nearest():
    """The strided shortcut must equal what upstream computes: full-resolution blur, then nearest resize."""
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    down = GaussianDownsampler(3, 0.25)
    assert down.stride == 4
    blurred = torch.nn.functional.conv2d(image, down.weight, padding=down.padding, groups=3)
    upstream = torch.nn.functional.interpolate(blurred, scale_factor=(0.25, 0.25), mode="nearest")
    torch.testing.assert_close(down(image), upstream, rtol=0, atol=1e-6)


def test_coordinate_grid_convention():
    grid = coordinate_grid(3, 5)
    assert grid.shape == (3, 5, 2)
    assert grid[0, 0].tolist() == [-1.0, -1.0] and grid[2, 4].tolist() == [1.0, 1.0]
    assert grid[1, 2].tolist() == [0.0, 0.0]  # x varies along columns, y along rows


# --------------------------------------------------------------------------------------------------------------------
# The per-avatar / per-frame split.
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tiny_config):
    return load_fomm_checkpoint(FIXTURES / "tiny-checkpoint.pth.tar", tiny_config)


def test_split_generator_equals_monolithic(tiny_models, parity):
    kp_detector, generator = tiny_models
    source = torch.from_numpy(parity["source"])
    kp_source = kp_detector.detect(source)
    kp_driving = kp_detector.detect(torch.from_numpy(parity["driving"]))
    with torch.no_grad():
        features = generator.encode_source(source)
        cached = features.clone()
        # Frames in a scrambled order, reusing one encoding: nothing may leak from frame to frame.
        split = {}
        for i in (2, 0, 3, 1):
            outputs = generator(source, features, kp_source.value, kp_source.jacobian,
                                kp_driving.value[i : i + 1], kp_driving.jacobian[i : i + 1])
            split[i] = outputs
    assert torch.equal(features, cached), "a per-frame call modified the cached source encoding"
    for i in range(4):
        one_shot = generator.generate(source, kp_source, FommKeypoints(kp_driving.value[i : i + 1],
                                                                       kp_driving.jacobian[i : i + 1]))
        for got, want in zip(split[i], (one_shot.prediction, one_shot.occlusion_map, one_shot.mask,
                                        one_shot.deformation)):
            assert torch.equal(got, want)


def test_batched_frames_match_single_frames(tiny_models, parity, ours):
    """A batch of frames with a repeated source gives the per-frame results (for batched export)."""
    kp_detector, generator = tiny_models
    source = torch.from_numpy(parity["source"]).expand(4, -1, -1, -1)
    kp_norm = (torch.from_numpy(ours["kp_norm_value"]), torch.from_numpy(ours["kp_norm_jacobian"]))
    kp_source = (torch.from_numpy(ours["kp_source_value"]).expand(4, -1, -1),
                 torch.from_numpy(ours["kp_source_jacobian"]).expand(4, -1, -1, -1))
    with torch.no_grad():
        prediction = generator(source, generator.encode_source(source), *kp_source, *kp_norm)[0]
    assert_close("batched prediction", prediction.numpy(), ours["prediction_relative"], PREDICTION_BOUND)


def test_both_halves_export_to_onnx_and_match(tiny_models, parity):
    """The traced graphs (legacy TorchScript exporter) run in onnxruntime with the same results."""
    onnxruntime = pytest.importorskip("onnxruntime")
    kp_detector, generator = tiny_models
    source = torch.from_numpy(parity["source"])
    driving = torch.from_numpy(parity["driving"][1:2])
    with torch.no_grad():
        kp_source, kp_driving = kp_detector(source), kp_detector(driving)
        features = generator.encode_source(source)
    # onnxruntime's conv kernels differ from torch's oneDNN ones, and the keypoint softmax (temperature 0.1) scales
    # logit noise by 10: one bound for every graph's outputs (tests/tolerances.py).
    cases = [
        (kp_detector, (driving,), FOMM_ONNX_BOUND),
        (FommSourceEncoder(generator), (source,), FOMM_ONNX_BOUND),
        (generator, (source, features, *kp_source, *kp_driving), FOMM_ONNX_BOUND),
        (FommFrameGenerator(generator), (source, features, *kp_source, *kp_driving), FOMM_ONNX_BOUND),
    ]
    for module, inputs, bound in cases:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=17)
        assert not generator.training and not kp_detector.training, "export must leave the modules in eval mode"
        session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        feeds = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs)}
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for got, want in zip(session.run(None, feeds), expected, strict=True):
            error = max_abs(got, want.numpy())
            assert error <= bound, f"{type(module).__name__}: max |diff| {error:.3g} > bound {bound:g}"


# --------------------------------------------------------------------------------------------------------------------
# normalize_kp and the hull.
# --------------------------------------------------------------------------------------------------------------------


def test_convex_hull_area():
    square_with_inside_points = [[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [0.5, 1.5], [2, 1], [0, 0]]
    assert convex_hull_area(np.array(square_with_inside_points)) == pytest.approx(4.0)
    assert convex_hull_area(np.array([[0, 0], [3, 0], [0, 4]])) == pytest.approx(6.0)
    assert convex_hull_area(np.array([[0, 0], [1, 1], [2, 2], [3, 3]])) == 0.0
    rng = np.random.default_rng(0)
    points = rng.normal(size=(10, 2))
    rotated = points @ np.array([[0.6, -0.8], [0.8, 0.6]])  # a rotation keeps the area
    assert convex_hull_area(rotated) == pytest.approx(convex_hull_area(points), rel=1e-12)
    with pytest.raises(ValueError, match="expected shape"):
        convex_hull_area(np.zeros((4, 3)))


def _keypoints(seed: int, batch: int = 1) -> FommKeypoints:
    gen = torch.Generator().manual_seed(seed)
    value = torch.rand(batch, 10, 2, generator=gen) * 2 - 1
    jacobian = torch.eye(2) + 0.2 * torch.randn(batch, 10, 2, 2, generator=gen)
    return FommKeypoints(value=value, jacobian=jacobian)


def test_normalize_kp_modes():
    source, driving, initial = _keypoints(1), _keypoints(2, batch=3), _keypoints(3)
    assert normalize_kp(source, driving, initial, use_relative_movement=False) is driving
    plain = normalize_kp(source, driving, initial, adapt_movement_scale=False)
    torch.testing.assert_close(plain.value, driving.value - initial.value + source.value)
    expected_jacobian = driving.jacobian @ torch.linalg.inv(initial.jacobian) @ source.jacobian
    # Closed-form 2x2 inverses against LAPACK's: measured 3.6e-7 apart, 14x below atol.
    torch.testing.assert_close(plain.jacobian, expected_jacobian, rtol=1e-5, atol=5e-6)
    no_jacobian = normalize_kp(source, driving, initial, use_relative_jacobian=False)
    assert no_jacobian.jacobian is driving.jacobian
    scale = movement_scale(source.value, initial.value)
    adapted = normalize_kp(source, driving, initial)
    torch.testing.assert_close(adapted.value, (driving.value - initial.value) * scale + source.value)
    torch.testing.assert_close(
        relative_keypoints(source, driving, initial, scale=scale).value, adapted.value, rtol=0, atol=0
    )


def test_movement_scale_refuses_collinear_keypoints():
    line = torch.stack([torch.linspace(-1, 1, 10), torch.zeros(10)], dim=-1).unsqueeze(0)
    with pytest.raises(ValueError, match="collinear"):
        movement_scale(_keypoints(1).value, line)


# --------------------------------------------------------------------------------------------------------------------
# Config and the vox-256 layout.
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vox_keys() -> dict:
    return json.loads((FIXTURES / "keys-vox256.json").read_text())


def test_vox256_config_equals_fomm_yaml(vox_keys):
    assert FommConfig.from_model_params(vox_keys["model_params"]) == FommConfig.vox256()
    assert FommConfig.vox256().align_corners is False


def test_vox256_modules_have_the_checkpoint_layout(vox_keys):
    """Key names, order, shapes and dtypes of a vox-256 model equal the original code's, exactly."""
    config = FommConfig.vox256()
    for name, module in (("kp_detector", FommKeypointDetector(config)), ("generator", FommGenerator(config))):
        want = [(k["key"], tuple(k["shape"]), k["dtype"]) for k in vox_keys[name]["keys"]]
        got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]
        assert got == want, name
        assert sum(p.numel() for p in module.parameters()) == vox_keys[name]["summary"]["parameter_count"]


def test_tiny_model_has_the_vox_key_order(vox_keys, tiny_config):
    for name, module in (("kp_detector", FommKeypointDetector(tiny_config)), ("generator", FommGenerator(tiny_config))):
        assert list(module.state_dict()) == [k["key"] for k in vox_keys[name]["keys"]], name


def test_config_round_trip(tiny_config):
    assert FommConfig.from_model_params(tiny_config.to_model_params()) == tiny_config
    assert FommConfig.vox256().image_size_multiple == 128
    FommConfig.vox256().check_image_size(256, 256)
    with pytest.raises(ConfigError, match="multiples of 128"):
        FommConfig.vox256().check_image_size(200, 256)


def _vox_params() -> dict:
    return FommConfig.vox256().to_model_params()


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda p: p["kp_detector_params"].update(temperature=-0.1), "kp_detector_params.temperature"),
        (lambda p: p["kp_detector_params"].update(scale_factor=2), "kp_detector_params.scale_factor"),
        (lambda p: p["kp_detector_params"].pop("num_blocks"), "kp_detector_params.num_blocks"),
        (lambda p: p["kp_detector_params"].update(num_blocks=True), "kp_detector_params.num_blocks"),
        (lambda p: p["common_params"].update(num_kp="10"), "common_params.num_kp"),
        (lambda p: p["common_params"].update(estimate_jacobian=False), "common_params.estimate_jacobian"),
        (lambda p: p["common_params"].update(colour=True), "common_params.colour"),
        (lambda p: p["generator_params"].update(estimate_occlusion_map=False),
         "generator_params.estimate_occlusion_map"),
        (lambda p: p["generator_params"]["dense_motion_params"].update(kp_variance=0),
         "dense_motion_params.kp_variance"),
        (lambda p: p["generator_params"].update(num_down_blocks=0), "generator_params.num_down_blocks"),
        (lambda p: p.pop("generator_params"), "model_params.generator_params"),
    ],
)
def test_config_errors_name_the_key(edit, key):
    params = _vox_params()
    edit(params)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FommConfig.from_model_params(params)


# --------------------------------------------------------------------------------------------------------------------
# Optional: a full-size vox-256 forward (slow on CPU: several seconds per frame on 2 cores).
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.heavy
@pytest.mark.skipif(not os.environ.get("FACEMIMIC_HEAVY_TESTS"), reason="set FACEMIMIC_HEAVY_TESTS=1 to run")
def test_vox256_forward_shapes():
    config = FommConfig.vox256()
    kp_detector, generator = FommKeypointDetector(config).eval(), FommGenerator(config).eval()
    image = torch.rand(1, 3, 256, 256)
    kp = kp_detector.detect(image)
    assert kp.value.shape == (1, 10, 2) and kp.jacobian.shape == (1, 10, 2, 2)
    out = generator.generate(image, kp, kp)
    assert out.prediction.shape == (1, 3, 256, 256)
    assert out.occlusion_map.shape == (1, 1, 64, 64) and out.mask.shape == (1, 11, 64, 64)
    assert out.deformation.shape == (1, 64, 64, 2)
