"""The mesh warp as a static graph: ONNX == torch, torch == the cv2 path, every CPU backend, the runner, the sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatarcam import landmarks as lm
from avatarcam.backends import (
    HardwareFacts,
    OnnxRuntimeRunner,
    detect_hardware,
    load_exported,
    select_backend,
    source_hash,
)
from avatarcam.backends.sidecar import sidecar_path, write_sidecar
from avatarcam.errors import ConfigError, EngineError, ModelFileError
from avatarcam.generators import EXPORTABLE_MODELS, export_registered, model_spec
from avatarcam.generators.mesh.model import MeshGenerator, MeshSettings
from avatarcam.motion import DrivenFace, neutral_driven
from tests.tolerances import MESH_ONNX_BOUND

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from avatarcam.generators.mesh import torch_warp as mesh_torch  # noqa: E402 - needs torch
from avatarcam.generators.mesh.torch_warp import (  # noqa: E402
    NUM_CONTROL_POINTS,
    MeshWarp,
    MeshWarpRunner,
    image_to_input,
    mesh_warp_backend,
    random_inputs,
)

HARDWARE = detect_hardware()
TENSORRT_USABLE = HARDWARE.tensorrt_version is not None and HARDWARE.torch_cuda
ONNX_ATOL = MESH_ONNX_BOUND
"""1e-3 of full scale (MeshWarp works on images in [0, 255]); measured noise in tests/tolerances.py."""


def rigid(prepared, *, shift=(0.0, 0.0), scale=1.0, yaw_deg=0.0) -> DrivenFace:
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], np.float32)
    base = neutral_driven(prepared.face)
    driven = DrivenFace(points=base.points, rotation=rot, scale=scale, shift_px=np.array(shift, np.float32),
                        pivot=prepared.face.pivot)
    return DrivenFace(**{**driven.__dict__, "points": driven.transform_rigid(prepared.face.points)})


def open_mouth(driven: DrivenFace, *, drop_px: float) -> DrivenFace:
    points = driven.points.copy()
    lower = [i for i in range(468) if points[i, 1] > points[lm.INNER_LIP_LOWER_MID, 1] - 1]
    points[lower, 1] += drop_px
    return DrivenFace(**{**driven.__dict__, "points": points})


POSES = {
    "turned": dict(shift=(14.0, -9.0), yaw_deg=12.0),
    "turned_open_mouth": dict(shift=(-10.0, 6.0), scale=1.05, yaw_deg=-15.0, mouth_px=35.0),
    "big_turn": dict(shift=(30.0, 0.0), scale=1.1, yaw_deg=30.0),  # ~300 coarse grid points fold: unfold works
}
EXTREME = dict(shift=(120.0, 80.0), scale=1.4, yaw_deg=60.0)
"""Far past what a driver can do: 2263 grid points fold and Newton does not converge there."""


def driven_pose(prepared, name: str) -> DrivenFace:
    pose = dict(EXTREME if name == "extreme" else POSES[name])
    mouth_px = pose.pop("mouth_px", 0.0)
    driven = rigid(prepared, **pose)
    return open_mouth(driven, drop_px=mouth_px) if mouth_px else driven


@pytest.fixture(scope="module")
def generator():
    return MeshGenerator(MeshSettings(mouth_interior=False))  # the mouth interior is drawn after the warp, in numpy


@pytest.fixture(scope="module")
def prepared(generator, portrait_avatar):
    return generator.prepare(portrait_avatar.canvas_bgr, portrait_avatar.points)


@pytest.fixture(scope="module")
def module():
    return MeshWarp()


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def exported(engines):
    """mesh_warp exported through the registry line, verified on fresh random inputs by export_registered."""
    return export_registered("mesh_warp", out_dir=engines, seed=0)


def fixture_inputs(generator, prepared, pose: str) -> dict[str, np.ndarray]:
    return {
        "image": image_to_input(prepared.image_bgr),
        "weights": prepared.weights,
        "displacements": generator.control_displacements(prepared, driven_pose(prepared, pose)),
    }


def torch_warp(module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        args = [torch.from_numpy(inputs[name]) for name in ("image", "weights", "displacements")]
        return module(*args).numpy()


def to_bgr(warped: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(warped[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- shapes and registry


def test_control_point_count_is_fixed_by_the_settings(prepared):
    assert prepared.weights.shape == (128 * 128, NUM_CONTROL_POINTS) == (16384, 582)


def test_registry_recipe_has_default_shapes_and_needs_no_landmarker():
    assert EXPORTABLE_MODELS["mesh_warp"] == "avatarcam.generators.mesh.torch_warp:export_recipe"
    recipe = mesh_torch.export_recipe()
    shapes = {name: a.shape for name, a in recipe.example_inputs.items()}
    assert shapes == {"image": (1, 3, 512, 512), "weights": (16384, 582), "displacements": (582, 2)}
    assert recipe.output_names == ("warped",) and recipe.dynamic_axes is None


def test_numpy_path_is_the_cpu_default_and_named_backends_are_kept():
    cpu = HardwareFacts(onnxruntime_providers=("CPUExecutionProvider",), torch_available=True)
    gpu = HardwareFacts(cuda_available=True, torch_available=True, torch_cuda=True,
                        onnxruntime_providers=("CPUExecutionProvider",))
    assert mesh_warp_backend("auto", hardware=cpu) is None
    assert mesh_warp_backend("auto", hardware=gpu) == "auto"
    assert mesh_warp_backend("onnxruntime", hardware=cpu) == "onnxruntime"
    with pytest.raises(ConfigError, match="valid backends are auto, onnxruntime, tensorrt, torch"):
        mesh_warp_backend("cuda", hardware=cpu)


# ---------------------------------------------------------------- (a) ONNX Runtime == torch


def test_onnx_matches_torch_on_fresh_random_inputs(exported, module):
    result, errors = exported
    assert errors["warped"] <= ONNX_ATOL  # export_registered verified seed 0; one more seed here
    inputs = random_inputs(np.random.default_rng(1))
    with OnnxRuntimeRunner(onnx_path=result.onnx_path) as runner:
        got = runner.run(inputs)["warped"]
    assert np.abs(got - torch_warp(module, inputs)).max() <= ONNX_ATOL


@pytest.mark.parametrize("pose", sorted(POSES))
def test_onnx_matches_torch_on_the_portrait(exported, module, generator, prepared, pose):
    inputs = fixture_inputs(generator, prepared, pose)
    with OnnxRuntimeRunner(onnx_path=exported[0].onnx_path) as runner:
        got = runner.run(inputs)["warped"]
    assert np.abs(got - torch_warp(module, inputs)).max() <= ONNX_ATOL


@pytest.mark.parametrize("defect", ["image_shifted_one_pixel", "displacements_off_by_a_tenth_pixel",
                                    "align_corners_true"])
def test_a_wrong_warp_fails_the_onnx_bound_by_a_wide_margin(exported, module, generator, prepared, defect):
    """What ONNX Runtime's warp is compared with, done wrong, lands far outside ONNX_ATOL (measured error / bound:
    one-pixel shift 400x, align_corners=True 170x, every displacement 0.1 px off 55x)."""
    inputs = fixture_inputs(generator, prepared, "turned")
    with OnnxRuntimeRunner(onnx_path=exported[0].onnx_path) as runner:
        got = np.array(runner.run(inputs)["warped"])
    assert np.abs(got - torch_warp(module, inputs)).max() <= ONNX_ATOL
    if defect == "align_corners_true":
        original = torch.nn.functional.grid_sample

        def corners_true(*args, **kwargs):
            return original(*args, **{**kwargs, "align_corners": True})

        try:
            torch.nn.functional.grid_sample = corners_true
            want = torch_warp(module, inputs)
        finally:
            torch.nn.functional.grid_sample = original
        margin = 100
    elif defect == "image_shifted_one_pixel":
        want = torch_warp(module, {**inputs, "image": np.roll(inputs["image"], 1, axis=3)})
        margin = 100
    else:
        want = torch_warp(module, {**inputs, "displacements": inputs["displacements"] + np.float32(0.1)})
        margin = 10
    ratio = np.abs(got - want).max() / ONNX_ATOL
    assert ratio >= margin, f"{defect}: only {ratio:.1f}x the bound"


def test_onnx_stays_close_to_torch_where_newton_cannot_converge(exported, module, generator, prepared):
    # In a folded region the inverse does not exist: Newton wanders and the residual mask decides per grid point, so
    # float32 rounding differences grow there (tools/measure_float_noise.py, every torch x ONNX Runtime
    # configuration: 0.04 % of values beyond 1e-4 of full scale, mean 1e-4 and 99.9th percentile 0.013 grey levels,
    # so each bound below has 20x or more).
    inputs = fixture_inputs(generator, prepared, "extreme")
    with OnnxRuntimeRunner(onnx_path=exported[0].onnx_path) as runner:
        diff = np.abs(runner.run(inputs)["warped"] - torch_warp(module, inputs))
    assert (diff > ONNX_ATOL).mean() < 0.01 and diff.mean() < 0.01 and np.percentile(diff, 99.9) < 0.5


# ---------------------------------------------------------------- (b) torch == the numpy/cv2 path


@pytest.mark.parametrize("pose", [*sorted(POSES), "extreme"])
def test_torch_matches_the_cv2_path(module, generator, prepared, pose):
    inputs = fixture_inputs(generator, prepared, pose)
    want = generator.generate(prepared, driven_pose(prepared, pose))
    diff = np.abs(to_bgr(torch_warp(module, inputs)).astype(int) - want.astype(int))
    # Measured: mean 0.00005 grey levels, 99th percentile 0, max 1 (a rounding tie) on the realistic poses;
    # extreme: mean 0.001, 99th percentile 0, up to 10 grey levels in ~100 values of the folded region.
    assert diff.mean() < 0.05 and np.percentile(diff, 99) <= 1
    if pose == "extreme":
        assert (diff > 1).mean() < 1e-3
    else:
        assert diff.max() <= 1


def test_torch_coarse_maps_match_backward_maps(module, generator, prepared):
    driven = driven_pose(prepared, "turned_open_mouth")
    map_x, map_y = generator.backward_maps(prepared, driven)
    with torch.inference_mode():
        maps = module.backward_maps(
            torch.from_numpy(prepared.weights), torch.from_numpy(generator.control_displacements(prepared, driven))
        )[0].numpy()
    # Pixel coordinates up to 512 in float32 (1 ulp = 6e-5 px): measured 1.2-1.8e-4 px apart (torch vs numpy's BLAS,
    # 1 or 2 threads, oneDNN on/off), 11x below this; a half-pixel convention error would be 250x.
    assert np.abs(maps[0] - map_x).max() < 2e-3 and np.abs(maps[1] - map_y).max() < 2e-3


# ---------------------------------------------------------------- (c) the backends layer


def test_torch_and_onnxruntime_backends_agree(exported, engines, generator, prepared):
    spec = model_spec("mesh_warp", engines_dir=engines)
    inputs = fixture_inputs(generator, prepared, "turned_open_mouth")
    outputs = {}
    for requested in ("torch", "onnxruntime"):
        with select_backend(requested, spec, HARDWARE, log=lambda _: None) as runner:
            assert runner.label == f"{requested}-cpu"
            outputs[requested] = np.array(runner.run(inputs)["warped"])
    assert np.abs(outputs["torch"] - outputs["onnxruntime"]).max() <= ONNX_ATOL


# ---------------------------------------------------------------- (d) sidecar


def test_export_sidecar_is_written_and_checked(exported, module):
    result = exported[0]
    side = json.loads(sidecar_path(result.onnx_path).read_text())
    assert side["model"] == "mesh_warp" and side["opset"] == 17
    assert side["example_shapes"] == {"image": [1, 3, 512, 512], "weights": [16384, 582], "displacements": [582, 2]}
    assert [i["name"] for i in side["inputs"]] == ["image", "weights", "displacements"]
    assert side["source_hash"] == source_hash(module)
    assert load_exported(result.onnx_path, expected_source_hash=source_hash(module)).io == result.io
    other = MeshWarp(settings=MeshSettings(newton_steps=2))
    with pytest.raises(ModelFileError, match="other weights or code"):
        load_exported(result.onnx_path, expected_source_hash=source_hash(other))


# ---------------------------------------------------------------- MeshWarpRunner


@pytest.mark.parametrize("requested", ["onnxruntime", "torch"])
def test_runner_warps_without_per_frame_allocations(exported, engines, module, generator, prepared, requested):
    poses = [driven_pose(prepared, name) for name in ("big_turn", "turned_open_mouth", "turned")]
    out = np.zeros((512, 512, 3), np.uint8)
    with MeshWarpRunner(requested=requested, engines_dir=engines, hardware=HARDWARE, log=lambda _: None) as runner:
        assert not runner.exported  # the registry export above is current: no re-export
        assert runner.label == f"{requested}-cpu"
        runner.warp(prepared=prepared, displacements=generator.control_displacements(prepared, poses[0]),
                    out_bgr_uint8=out)
        allocations = runner.allocations
        assert allocations > 0
        for driven in poses:  # the last one is "turned"
            displacements = generator.control_displacements(prepared, driven)
            got = runner.warp(prepared=prepared, displacements=displacements, out_bgr_uint8=out)
            assert got is out
        assert runner.allocations == allocations and runner.avatar_uploads == 1
        diff = np.abs(out.astype(int) - to_bgr(torch_warp(module, fixture_inputs(generator, prepared, "turned"))))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-4  # ONNX Runtime may round a tie the other way


def test_auto_without_a_gpu_lands_on_a_cpu_runtime_and_says_so(exported, engines):
    cpu_only = HardwareFacts(onnxruntime_providers=("CPUExecutionProvider",), torch_available=True)
    log: list[str] = []
    with MeshWarpRunner(requested="auto", engines_dir=engines, hardware=cpu_only, log=log.append) as runner:
        assert runner.device == "cpu" and runner.label == "torch-cpu"  # measured faster than ONNX Runtime on CPU
    assert "tensorrt: not installed" in log and "mesh_warp: using torch-cpu" in log


SMALL = MeshSettings(canvas_size=256, grid_size=64, mouth_interior=False)


@pytest.fixture(scope="module")
def small_avatars(portrait_avatar):
    """Two different avatars prepared for a 256 canvas with a 64 grid."""
    import cv2

    generator = MeshGenerator(SMALL)
    canvas = cv2.resize(portrait_avatar.canvas_bgr, (256, 256), interpolation=cv2.INTER_AREA)
    points = portrait_avatar.points * np.float32(0.5)
    flipped = np.ascontiguousarray(canvas[:, ::-1])  # other pixels under the same landmarks
    return generator, generator.prepare(canvas, points), generator.prepare(flipped, points)


def test_runner_reexports_a_stale_file_and_checks_its_inputs(tmp_path, small_avatars):
    generator, avatar, _ = small_avatars
    log: list[str] = []
    onnx_path = tmp_path / "mesh_warp_256px_g64_n3.onnx"
    with MeshWarpRunner(requested="onnxruntime", settings=SMALL, engines_dir=tmp_path, hardware=HARDWARE,
                        log=log.append) as runner:
        assert runner.exported and runner.onnx_path == onnx_path and sidecar_path(onnx_path).is_file()
    # A sidecar from other code (here: another source hash) makes the next open export again.
    side = json.loads(sidecar_path(onnx_path).read_text())
    write_sidecar(sidecar_path(onnx_path), {**side, "source_hash": "0" * 64})
    log.clear()
    runner = MeshWarpRunner(requested="onnxruntime", settings=SMALL, engines_dir=tmp_path, hardware=HARDWARE,
                            log=log.append)
    out = np.zeros((256, 256, 3), np.uint8)
    displacements = generator.control_displacements(avatar, rigid(avatar, shift=(5.0, 3.0), yaw_deg=8.0))
    with runner:
        assert runner.exported and any("other weights or code" in line for line in log)
        with pytest.raises(EngineError, match=r"unexpected canvas \(128, 128, 3\) uint8"):
            runner.warp(prepared=avatar, displacements=displacements, out_bgr_uint8=out[:128, :128])
        with pytest.raises(EngineError, match=r"float32: pass MeshGenerator.control_displacements"):
            runner.warp(prepared=avatar, displacements=displacements.astype(np.float64), out_bgr_uint8=out)
    runner.close()  # idempotent
    with pytest.raises(EngineError, match="not open"):
        runner.warp(prepared=avatar, displacements=displacements, out_bgr_uint8=out)


def test_runner_follows_avatar_switches_and_other_canvas_sizes(tmp_path, small_avatars, prepared):
    generator, first, second = small_avatars
    out = np.zeros((256, 256, 3), np.uint8)
    with MeshWarpRunner(requested="torch", settings=SMALL, engines_dir=tmp_path, hardware=HARDWARE,
                        log=lambda _: None) as runner:
        assert not list(tmp_path.iterdir())  # torch needs no export
        for avatar in (first, second, second, first):
            driven = rigid(avatar, shift=(6.0, -4.0), yaw_deg=10.0)
            runner.warp(prepared=avatar, displacements=generator.control_displacements(avatar, driven),
                        out_bgr_uint8=out)
            diff = np.abs(out.astype(int) - generator.generate(avatar, driven).astype(int))
            assert diff.mean() < 0.05 and diff.max() <= 1
        assert runner.avatar_uploads == 3
        with pytest.raises(EngineError, match="prepare the avatar with the same MeshSettings"):
            runner.warp(prepared=prepared, displacements=np.zeros((NUM_CONTROL_POINTS, 2), np.float32),
                        out_bgr_uint8=out)


# ---------------------------------------------------------------- on a GPU with TensorRT only


@pytest.mark.gpu
@pytest.mark.skipif(not TENSORRT_USABLE, reason="tensorrt not installed / no CUDA GPU")
def test_tensorrt_warp_matches_torch(tmp_path, module, generator, prepared):
    out = np.zeros((512, 512, 3), np.uint8)
    driven = driven_pose(prepared, "turned_open_mouth")
    with MeshWarpRunner(requested="tensorrt", engines_dir=tmp_path, hardware=HARDWARE) as runner:
        assert runner.label == "tensorrt-cuda"
        runner.warp(prepared=prepared, displacements=generator.control_displacements(prepared, driven),
                    out_bgr_uint8=out)
        allocations = runner.allocations
        for _ in range(5):
            runner.warp(prepared=prepared, displacements=generator.control_displacements(prepared, driven),
                        out_bgr_uint8=out)
        assert runner.allocations == allocations
    want = to_bgr(torch_warp(module, fixture_inputs(generator, prepared, "turned_open_mouth")))
    diff = np.abs(out.astype(int) - want.astype(int))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 3  # fp32 engine; TF32 kernels may round differently


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_live_generator_runs_through_a_named_backend(backend, portrait_avatar):
    """generator.backend picks the runtime for the whole generator; the frames match the CPU path."""
    from avatarcam.config import load_config
    from avatarcam.generators import build_reenactor

    default = load_config(None)
    reference = build_reenactor(default.generator, default.motion)
    assert reference.runtime == "numpy/cv2 (CPU)"  # auto on a machine without CUDA
    chosen = load_config(None, {"generator.backend": backend})
    named = build_reenactor(chosen.generator, chosen.motion)
    try:
        assert backend in named.runtime
        prepared = named.prepare(portrait_avatar)
        rest = neutral_driven(prepared.face)
        points = rest.points.copy()
        points[:, 0] += 6.0  # a small head shift
        driven = DrivenFace(**{**rest.__dict__, "points": points, "shift_px": np.array([6.0, 0.0], np.float32)})
        out_named = named.generator.generate(prepared, driven)
        out_cpu = reference.generator.generate(prepared, driven)
        diff = np.abs(out_named.astype(int) - out_cpu.astype(int))
        assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 3
    finally:
        named.close()
