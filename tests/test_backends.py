"""Inference backends: one contract over every runtime here, export parity, input checks, selection, lazy imports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avatarcam.backends import (
    BACKEND_CHOICES,
    ONNX_IR_VERSION,
    ExportRecipe,
    HardwareFacts,
    ModelSpec,
    OnnxRuntimeRunner,
    TensorRTRunner,
    TorchRunner,
    detect_hardware,
    export_onnx,
    load_exported,
    open_backend,
    runtime_class,
    select_backend,
    source_hash,
    time_cpu_runtimes,
    verify_onnx,
)
from avatarcam.backends.export import onnxruntime_max_ir_version
from avatarcam.backends.sidecar import sha256_file, sidecar_path, write_sidecar
from avatarcam.errors import ConfigError, EngineError, ModelFileError
from avatarcam.generators import EXPORTABLE_MODELS, model_spec
from tests.tolerances import BACKEND_ONNX_BOUND, BACKEND_TORCH_BOUND

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
HARDWARE = detect_hardware()
TENSORRT_USABLE = HARDWARE.tensorrt_version is not None and HARDWARE.torch_cuda
requires_tensorrt = pytest.mark.skipif(not TENSORRT_USABLE, reason="tensorrt not installed / no CUDA GPU")


class TinyWarp(torch.nn.Module):
    """A conv predicts a flow that offsets the driving grid; grid_sample warps the source (the generators' core op)."""

    def __init__(self) -> None:
        super().__init__()
        self.flow = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)
        self.pool = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)

    def forward(self, source: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flow = torch.tanh(self.flow(source)).permute(0, 2, 3, 1)
        warped = torch.nn.functional.grid_sample(source, torch.clamp(grid + 0.1 * flow, -1.0, 1.0), align_corners=False)
        return warped, self.pool(source).mean(dim=(2, 3))


def make_module(seed: int = 0) -> TinyWarp:
    torch.manual_seed(seed)
    return TinyWarp().eval()


def example_inputs(batch: int = 1) -> dict[str, np.ndarray]:
    return {
        "source": np.zeros((batch, 3, SIZE, SIZE), np.float32),
        "grid": np.zeros((batch, SIZE, SIZE, 2), np.float32),
    }


def random_inputs(rng: np.random.Generator, batch: int = 1) -> dict[str, np.ndarray]:
    return {name: rng.uniform(-1.0, 1.0, a.shape).astype(np.float32) for name, a in example_inputs(batch).items()}


def torch_reference(module: TinyWarp, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        warped, pooled = module(torch.from_numpy(inputs["source"]), torch.from_numpy(inputs["grid"]))
    return {"warped": warped.numpy(), "pooled": pooled.numpy()}


def tiny_recipe() -> ExportRecipe:
    return ExportRecipe(
        module=make_module(),
        example_inputs=example_inputs(),
        output_names=("warped", "pooled"),
        make_inputs=random_inputs,
    )


@pytest.fixture(scope="module")
def module() -> TinyWarp:
    return make_module()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, module: TinyWarp):
    out = tmp_path_factory.mktemp("engines") / "tiny_warp.onnx"
    return export_onnx(module, example_inputs(), out, input_names=["source", "grid"], output_names=["warped", "pooled"])


# ---------------------------------------------------------------- contract, shared by every runtime on this machine

RUNTIME_PARAMS = [
    pytest.param("onnxruntime", id="onnxruntime"),
    pytest.param("torch", id="torch"),
    pytest.param("tensorrt", id="tensorrt", marks=[pytest.mark.gpu, requires_tensorrt]),
]
# Measured noise and headroom: tests/tolerances.py. TensorRT fp32 may use TF32 kernels (not measured: no GPU).
TOLERANCE = {"onnxruntime": BACKEND_ONNX_BOUND, "torch": BACKEND_TORCH_BOUND, "tensorrt": 1e-2}


def make_runner(runtime: str, exported, module: TinyWarp, tmp_path: Path):
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(onnx_path=exported.onnx_path, intra_op_threads=1)
    if runtime == "torch":
        return TorchRunner(module=module, io=exported.io, name="tiny_warp")
    return TensorRTRunner(onnx_path=exported.onnx_path, hardware=HARDWARE, precision="fp32", engines_dir=tmp_path)


@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_runner_contract(runtime: str, exported, module: TinyWarp, tmp_path: Path) -> None:
    runner = make_runner(runtime, exported, module, tmp_path)
    assert runner.runtime == runtime and isinstance(runner, runtime_class(runtime))
    assert not runner.is_open
    with pytest.raises(EngineError, match="not open"):
        runner.run(random_inputs(np.random.default_rng(0)))

    with runner as opened:
        assert opened is runner and runner.is_open
        assert runner.open() is runner  # a second open is a no-op
        assert runner.io.input_names == ("source", "grid")
        assert runner.io.output_names == ("warped", "pooled")
        rng = np.random.default_rng(1)
        for _ in range(3):  # several frames: reused output buffers must not leak between them
            inputs = random_inputs(rng)
            outputs = {k: v.copy() for k, v in runner.run(inputs).items()}
            expected = torch_reference(module, inputs)
            assert list(outputs) == ["warped", "pooled"]
            for name, want in expected.items():
                assert outputs[name].shape == want.shape and outputs[name].dtype == np.float32
                assert np.abs(outputs[name] - want).max() <= TOLERANCE[runtime], name
        with pytest.raises(EngineError, match=r"input 'source' has shape \(1, 3, 63, 64\) but .* expects \(1, 3, 64, 64\)"):
            runner.run({"source": np.zeros((1, 3, SIZE - 1, SIZE), np.float32), "grid": inputs["grid"]})
    assert not runner.is_open
    runner.close()  # idempotent
    with pytest.raises(EngineError, match="not open"):
        runner.run(inputs)


@pytest.mark.parametrize("defect", ["weights_1pct_off", "grid_shifted_one_pixel"])
def test_a_wrong_answer_fails_the_contract_bounds_by_a_wide_margin(exported, module: TinyWarp, defect: str) -> None:
    """The contract's bounds are far below the error of a wrong module or input (measured error / bound: 1 % off
    flow weights 380x the ONNX Runtime bound, a one-pixel grid shift 17000x; the right module 0.07x)."""
    inputs = random_inputs(np.random.default_rng(1))
    with OnnxRuntimeRunner(onnx_path=exported.onnx_path, intra_op_threads=1) as runner:
        got = runner.run(inputs)["warped"].copy()
    if defect == "weights_1pct_off":
        wrong = make_module()
        with torch.no_grad():
            wrong.flow.weight.mul_(1.01)
        want = torch_reference(wrong, inputs)["warped"]
    else:
        want = torch_reference(module, {**inputs, "grid": inputs["grid"] + np.float32(2 / SIZE)})["warped"]
    ratio = float(np.abs(got - want).max()) / TOLERANCE["onnxruntime"]
    assert ratio >= {"weights_1pct_off": 100, "grid_shifted_one_pixel": 1000}[defect], f"{defect}: only {ratio:.0f}x"


# ---------------------------------------------------------------- input validation (before anything runs)


@pytest.fixture(scope="module")
def ort_runner(exported):
    with OnnxRuntimeRunner(onnx_path=exported.onnx_path, intra_op_threads=1) as runner:
        yield runner


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: {"source": i["source"]}, r"input 'grid' is missing: .* expects inputs \['source', 'grid'\]"),
        (lambda i: {**i, "extra": i["grid"]}, r"input 'extra' is not an input of .*: expected only \['source', 'grid'\]"),
        (lambda i: {**i, "grid": i["grid"].astype(np.float64)}, r"input 'grid' has dtype float64 but .* expects float32: convert it with \.astype\(np\.float32\)"),
        (lambda i: {**i, "grid": i["grid"].tolist()}, r"input 'grid' is a list but runners take numpy\.ndarray"),
        (lambda i: {**i, "source": i["source"][0]}, r"input 'source' has shape \(3, 64, 64\) but .* expects \(1, 3, 64, 64\)"),
    ],
    ids=["missing", "unexpected", "dtype", "not-an-array", "rank"],
)
def test_inputs_are_checked_before_running(ort_runner, change, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        ort_runner.run(change(random_inputs(np.random.default_rng(0))))


# ---------------------------------------------------------------- export


def test_export_parity_with_torch_on_fresh_inputs(exported, module: TinyWarp) -> None:
    errors = verify_onnx(exported, module, random_inputs(np.random.default_rng(123)), atol=BACKEND_ONNX_BOUND)
    assert set(errors) == {"warped", "pooled"}
    assert max(errors.values()) <= BACKEND_ONNX_BOUND
    print(f"max abs error vs torch: {errors}")


def test_export_writes_checked_file_and_sidecar(exported, module: TinyWarp) -> None:
    model = onnx.load(str(exported.onnx_path))
    onnx.checker.check_model(model)
    assert model.ir_version == ONNX_IR_VERSION
    side = json.loads(sidecar_path(exported.onnx_path).read_text())
    assert side["source_hash"] == source_hash(module)
    assert side["onnx_sha256"] == sha256_file(exported.onnx_path)
    assert side["opset"] == 17 and side["ir_version"] == ONNX_IR_VERSION
    assert [i["name"] for i in side["inputs"]] == ["source", "grid"]
    assert side["outputs"][0] == {"name": "warped", "shape": [1, 3, SIZE, SIZE], "dtype": "float32"}
    assert side["torch_version"] == torch.__version__ and side["onnx_version"] == onnx.__version__
    assert "created" in side
    assert load_exported(exported.onnx_path, expected_source_hash=source_hash(module)) == exported


def test_exported_ir_version_is_loadable_by_installed_onnxruntime(exported) -> None:
    max_ir = onnxruntime_max_ir_version()
    assert onnx.load(str(exported.onnx_path)).ir_version == ONNX_IR_VERSION <= max_ir
    print(f"onnx {onnx.__version__} writes IR {onnx.IR_VERSION}; onnxruntime loads up to IR {max_ir}")


def test_unpinned_ir_version_gets_a_clear_error(exported, tmp_path: Path) -> None:
    if onnx.IR_VERSION <= onnxruntime_max_ir_version():
        pytest.skip(f"onnxruntime loads onnx's default IR {onnx.IR_VERSION}; nothing to demonstrate")
    model = onnx.load(str(exported.onnx_path))
    model.ir_version = onnx.IR_VERSION
    path = tmp_path / "too_new.onnx"
    onnx.save(model, str(path))
    side = json.loads(exported.sidecar_path.read_text())
    write_sidecar(sidecar_path(path), {**side, "onnx_sha256": sha256_file(path)})
    with pytest.raises(EngineError, match=r"cannot load .*too_new\.onnx \(it loads IR versions up to \d+\).*export_onnx\.py"):
        OnnxRuntimeRunner(onnx_path=path).open()


def test_dynamic_batch_export_runs_other_batch_sizes(module: TinyWarp, tmp_path: Path) -> None:
    axes = {"source": {0: "batch"}, "grid": {0: "batch"}, "warped": {0: "batch"}, "pooled": {0: "batch"}}
    dynamic = export_onnx(
        module, example_inputs(), tmp_path / "dyn.onnx", input_names=["source", "grid"],
        output_names=["warped", "pooled"], dynamic_axes=axes,
    )
    assert dynamic.io.inputs[0].shape == (None, 3, SIZE, SIZE)
    errors = verify_onnx(dynamic, module, random_inputs(np.random.default_rng(5), batch=3))
    assert max(errors.values()) <= BACKEND_ONNX_BOUND
    with OnnxRuntimeRunner(onnx_path=dynamic.onnx_path) as runner:
        assert runner.staging is None  # dynamic shapes cannot use preallocated slots
        with pytest.raises(EngineError, match=r"expects \(\*, 3, 64, 64\) \(\* = any size\)"):
            runner.run({"source": np.zeros((2, 3, 8, 8), np.float32), "grid": np.zeros((2, SIZE, SIZE, 2), np.float32)})


def test_export_refuses_names_that_do_not_match_the_module(module: TinyWarp, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"gave outputs \['warped', '\w+'\] but output_names are \['warped'\]"):
        export_onnx(module, example_inputs(), tmp_path / "x.onnx", input_names=["source", "grid"], output_names=["warped"])
    with pytest.raises(EngineError, match=r"example inputs are named \['grid', 'source'\] but input_names are \['source'\]"):
        export_onnx(module, example_inputs(), tmp_path / "x.onnx", input_names=["source"], output_names=["warped"])
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_source_hash_tracks_weights_and_code(module: TinyWarp) -> None:
    assert source_hash(module) == source_hash(make_module())
    assert source_hash(module) != source_hash(make_module(seed=1))

    class OtherWarp(TinyWarp):
        pass

    torch.manual_seed(0)
    assert source_hash(module) != source_hash(OtherWarp().eval())


def test_loader_rejects_missing_or_mismatched_sidecar(exported, module: TinyWarp, tmp_path: Path) -> None:
    copy = tmp_path / "tiny_warp.onnx"
    copy.write_bytes(exported.onnx_path.read_bytes())
    with pytest.raises(ModelFileError, match=r"tiny_warp\.json is missing.*python tools/export_onnx\.py --model tiny_warp"):
        load_exported(copy)
    sidecar_path(copy).write_text(exported.sidecar_path.read_text())
    assert load_exported(copy).onnx_sha256 == exported.onnx_sha256
    with pytest.raises(ModelFileError, match="exported from other weights or code"):
        load_exported(copy, expected_source_hash=source_hash(make_module(seed=1)))
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match=r"changed after export: its sha256 is .*export_onnx\.py"):
        load_exported(copy)
    with pytest.raises(ModelFileError, match=r"does not exist: .*export_onnx\.py"):
        load_exported(tmp_path / "absent.onnx")


# ---------------------------------------------------------------- backend selection with injected hardware

NO_GPU_CPU_ONLY = HardwareFacts(onnxruntime_providers=("CPUExecutionProvider",), torch_available=True)
TRT_GPU = HardwareFacts(
    tensorrt_version="10.8.0",
    cuda_available=True,
    gpu_name="NVIDIA GeForce RTX 3060",
    compute_capability=(8, 6),
    onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    torch_available=True,
    torch_cuda=True,
)
ORT_CUDA = dataclasses.replace(TRT_GPU, tensorrt_version=None)
TORCH_ONLY = HardwareFacts(torch_available=True)


@pytest.fixture()
def spec(exported, module: TinyWarp) -> ModelSpec:
    return ModelSpec(name="tiny_warp", onnx_path=exported.onnx_path, torch_module=lambda: module)


def test_auto_without_tensorrt_or_gpu_logs_each_skip_and_takes_the_cpu_path(spec: ModelSpec) -> None:
    log: list[str] = []
    runner = select_backend("auto", spec, hardware=NO_GPU_CPU_ONLY, log=log.append)
    assert runner.label == "onnxruntime-cpu"
    assert log == [
        "tensorrt: not installed",
        "onnxruntime-cuda: no CUDA device",
        "torch-cuda: no CUDA device",
        "tiny_warp: using onnxruntime-cpu",
    ]


def test_auto_on_cpu_follows_the_models_measured_preference(spec: ModelSpec) -> None:
    log: list[str] = []
    runner = select_backend("auto", dataclasses.replace(spec, cpu_runtime="torch"), hardware=NO_GPU_CPU_ONLY, log=log.append)
    assert isinstance(runner, TorchRunner) and runner.label == "torch-cpu"
    assert log[-1] == "tiny_warp: using torch-cpu"


def test_auto_with_tensorrt_and_gpu_picks_tensorrt(spec: ModelSpec) -> None:
    log: list[str] = []
    runner = select_backend("auto", spec, hardware=TRT_GPU, log=log.append)
    assert isinstance(runner, TensorRTRunner) and not runner.is_open  # opening builds the engine, on a GPU
    assert log == ["tiny_warp: using tensorrt"]


def test_auto_with_onnxruntime_cuda_provider_picks_it(spec: ModelSpec) -> None:
    log: list[str] = []
    runner = select_backend("auto", spec, hardware=ORT_CUDA, log=log.append)
    assert isinstance(runner, OnnxRuntimeRunner) and runner.label == "onnxruntime-cuda"
    assert log == ["tensorrt: not installed", "tiny_warp: using onnxruntime-cuda"]


def test_auto_with_nothing_but_torch(spec: ModelSpec) -> None:
    log: list[str] = []
    runner = select_backend("auto", spec, hardware=TORCH_ONLY, log=log.append)
    assert runner.label == "torch-cpu"
    assert log == [
        "tensorrt: not installed",
        "onnxruntime-cuda: not installed",
        "torch-cuda: no CUDA device",
        "onnxruntime-cpu: not installed",
        "tiny_warp: using torch-cpu",
    ]


def test_auto_skips_onnx_runtimes_when_the_model_is_not_exported(spec: ModelSpec, tmp_path: Path) -> None:
    log: list[str] = []
    missing = dataclasses.replace(spec, onnx_path=tmp_path / "never.onnx", io=spec_io(spec))
    runner = select_backend("auto", missing, hardware=NO_GPU_CPU_ONLY, log=log.append)
    assert runner.label == "torch-cpu"
    assert any(line.startswith("onnxruntime-cpu: ") and "never.onnx is not exported" in line for line in log)


def spec_io(spec: ModelSpec):
    return load_exported(spec.onnx_path).io


def test_auto_with_nothing_usable_lists_every_runtime_and_its_fix(spec: ModelSpec) -> None:
    with pytest.raises(EngineError) as info:
        select_backend("auto", spec, hardware=HardwareFacts(), log=lambda _: None)
    text = str(info.value)
    for option in ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu"):
        assert f"\n  {option}: " in text
    assert "pip install onnxruntime" in text and "pip install torch" in text


@pytest.mark.parametrize(
    ("requested", "hardware", "message"),
    [
        ("tensorrt", NO_GPU_CPU_ONLY, r"backend 'tensorrt' was requested .* not installed: .*pip install -r requirements-gpu.txt"),
        ("tensorrt", dataclasses.replace(NO_GPU_CPU_ONLY, tensorrt_version="10.8.0"), r"tensorrt cannot run here: no CUDA device"),
        ("tensorrt", dataclasses.replace(TRT_GPU, torch_cuda=False), r"needs a CUDA build of torch"),
        ("onnxruntime", TORCH_ONLY, r"backend 'onnxruntime' .* not installed: install it with `pip install onnxruntime`"),
        ("torch", HardwareFacts(onnxruntime_providers=("CPUExecutionProvider",)), r"backend 'torch' .* not installed: .*pip install torch"),
    ],
    ids=["tensorrt-missing", "tensorrt-no-gpu", "tensorrt-cpu-torch", "onnxruntime-missing", "torch-missing"],
)
def test_explicit_request_that_cannot_run_raises_with_the_fix(spec, requested, hardware, message) -> None:
    log: list[str] = []
    with pytest.raises(EngineError, match=message):
        select_backend(requested, spec, hardware=hardware, log=log.append)
    assert not any("using" in line for line in log)  # never a silent fallback to another runtime


def test_explicit_onnxruntime_uses_cuda_when_present_else_cpu(spec: ModelSpec) -> None:
    assert select_backend("onnxruntime", spec, hardware=ORT_CUDA, log=lambda _: None).label == "onnxruntime-cuda"
    log: list[str] = []
    assert select_backend("onnxruntime", spec, hardware=NO_GPU_CPU_ONLY, log=log.append).label == "onnxruntime-cpu"
    assert log[0] == "onnxruntime-cuda: no CUDA device; using onnxruntime-cpu"


def test_unknown_names_list_the_valid_ones(spec: ModelSpec) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow': valid backends are auto, onnxruntime, tensorrt, torch"):
        select_backend("tensorflow", spec, hardware=NO_GPU_CPU_ONLY)
    with pytest.raises(ConfigError, match="valid runtimes are onnxruntime, tensorrt, torch"):
        runtime_class("openvino")
    with pytest.raises(ConfigError, match="cpu_runtime 'tensorrt' is not a CPU runtime"):
        ModelSpec(name="x", cpu_runtime="tensorrt")
    assert BACKEND_CHOICES == ("auto", "onnxruntime", "tensorrt", "torch")


def test_auto_on_this_machine_runs_end_to_end(spec: ModelSpec, module: TinyWarp) -> None:
    inputs = random_inputs(np.random.default_rng(9))
    with select_backend("auto", spec, log=lambda _: None) as runner:
        outputs = runner.run(inputs)
        assert np.abs(outputs["warped"] - torch_reference(module, inputs)["warped"]).max() <= 1e-2


def test_cpu_preference_can_be_measured(spec: ModelSpec) -> None:
    timings = time_cpu_runtimes(spec, random_inputs(np.random.default_rng(2)), repeats=3, hardware=NO_GPU_CPU_ONLY)
    assert set(timings) == {"onnxruntime", "torch"} and all(ms > 0 for ms in timings.values())
    faster = min(timings, key=timings.__getitem__)
    assert select_backend("auto", dataclasses.replace(spec, cpu_runtime=faster), hardware=NO_GPU_CPU_ONLY, log=lambda _: None).runtime == faster


def test_open_backend_auto_moves_on_when_a_runtime_fails_to_open(spec: ModelSpec, exported, tmp_path: Path) -> None:
    damaged = tmp_path / "tiny_warp.onnx"
    damaged.write_bytes(exported.onnx_path.read_bytes() + b"\0")  # sidecar hash no longer matches
    sidecar_path(damaged).write_text(exported.sidecar_path.read_text())
    log: list[str] = []
    broken = dataclasses.replace(spec, onnx_path=damaged, io=exported.io)
    with open_backend("auto", broken, hardware=NO_GPU_CPU_ONLY, log=log.append) as runner:
        assert runner.is_open and runner.label == "torch-cpu"
    assert any(line.startswith("onnxruntime-cpu: failed to open: ") and "changed after export" in line for line in log)
    with pytest.raises(ModelFileError, match="changed after export"):
        open_backend("onnxruntime", broken, hardware=NO_GPU_CPU_ONLY, log=log.append)  # named: no fallback


# ---------------------------------------------------------------- steady state allocates nothing


def test_onnxruntime_steady_state_reuses_two_preallocated_slots(ort_runner) -> None:
    staging = ort_runner.staging
    assert staging is not None
    allocations = staging.allocations
    slot_outputs = [slot.host_outputs["warped"] for slot in staging.slots]
    rng = np.random.default_rng(3)
    frames = [random_inputs(rng) for _ in range(4)]
    outputs = [ort_runner.run(frame)["warped"] for frame in frames * 2]
    # ONNX Runtime wrote straight into the two bound slot arrays, frame after frame, in turn.
    first = next(i for i, slot_output in enumerate(slot_outputs) if slot_output is outputs[0])
    assert all(out is slot_outputs[(first + i) % 2] for i, out in enumerate(outputs))
    assert staging.allocations == allocations


# ---------------------------------------------------------------- registry and tools


def test_export_registry_and_tool_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import export_onnx as tool
    finally:
        sys.path.remove(str(ROOT / "tools"))
    monkeypatch.setitem(EXPORTABLE_MODELS, "tiny_warp", tiny_recipe)
    assert tool.main(["--model", "tiny_warp", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out
    assert "tiny_warp: wrote" in line and "max abs error vs torch on ONNX Runtime CPU" in line
    assert (tmp_path / "tiny_warp.onnx").is_file() and (tmp_path / "tiny_warp.json").is_file()
    assert load_exported(tmp_path / "tiny_warp.onnx").io.input_names == ("source", "grid")
    spec = model_spec("tiny_warp", engines_dir=tmp_path, cpu_runtime="torch")
    with select_backend("auto", spec, hardware=NO_GPU_CPU_ONLY, log=lambda _: None) as runner:
        assert runner.label == "torch-cpu" and runner.io.output_names == ("warped", "pooled")
    assert tool.main(["--model", "nope", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'nope': registered models are" in err and "tiny_warp" in err


def test_build_engines_without_tensorrt_exits_with_install_hint() -> None:
    blocked = "import sys; sys.modules['tensorrt'] = None; sys.argv[0] = 'build_engines.py'; "
    script = ROOT / "tools" / "build_engines.py"
    code = blocked + f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "TensorRT is not installed" in result.stderr and "pip install" in result.stderr


def test_import_works_without_any_heavy_framework() -> None:
    code = """
import sys
for name in ("tensorrt", "torch", "onnxruntime", "onnx", "cuda", "pycuda"):
    sys.modules[name] = None
import avatarcam.backends as backends
from avatarcam.errors import EngineError
facts = backends.detect_hardware()
assert facts == backends.HardwareFacts(), facts
spec = backends.ModelSpec(name="m", onnx_path="engines/m.onnx")
try:
    backends.select_backend("auto", spec, log=lambda line: None)
except EngineError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "no runtime can run 'm'" in result.stdout and "tensorrt: not installed" in result.stdout


def test_import_does_not_load_heavy_frameworks() -> None:
    code = "import sys, avatarcam.backends; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
