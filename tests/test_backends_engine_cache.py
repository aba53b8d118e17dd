"""TensorRT engine cache: keys, sidecar checks, rebuild decisions; the TensorRT build/run itself only on a GPU."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from avatarcam.backends import (
    EngineKey,
    HardwareFacts,
    OnnxRuntimeRunner,
    TensorRTRunner,
    detect_hardware,
    engine_key,
    engine_path,
    ensure_engine,
    export_onnx,
)
from avatarcam.backends.engine_cache import check_engine, timing_cache_path, write_engine_sidecar
from avatarcam.backends.sidecar import sidecar_path
from avatarcam.errors import EngineError, ModelFileError

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

HARDWARE = detect_hardware()
requires_tensorrt = pytest.mark.skipif(
    not (HARDWARE.tensorrt_version is not None and HARDWARE.torch_cuda), reason="tensorrt not installed / no CUDA GPU"
)
GPU = HardwareFacts(
    tensorrt_version="10.5.0",
    cuda_available=True,
    gpu_name="NVIDIA GeForce RTX 3060",
    compute_capability=(8, 6),
    torch_available=True,
    torch_cuda=True,
)
SHAPES = {"image": (1, 3, 32, 32)}


class TinyConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(image))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("engines") / "tiny_conv.onnx"
    return export_onnx(
        TinyConv().eval(), {"image": np.zeros(SHAPES["image"], np.float32)}, out, input_names=["image"], output_names=["features"]
    )


@pytest.fixture()
def engines(exported, tmp_path: Path) -> Path:
    """A fresh engines/ dir holding a copy of the exported model and its sidecar."""
    for path in (exported.onnx_path, exported.sidecar_path):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def key_for(exported, hardware: HardwareFacts = GPU, precision: str = "fp16", shapes=SHAPES) -> EngineKey:
    return engine_key(onnx_sha256=exported.onnx_sha256, precision=precision, hardware=hardware, input_shapes=shapes)


def fake_build(engines: Path, key: EngineKey, name: str = "tiny_conv") -> Path:
    """Place a plan + sidecar as a finished build would (the bytes are not a real engine; nothing here runs them)."""
    plan = engine_path(name=name, key=key, engines_dir=engines)
    plan.write_bytes(b"serialized engine for " + key.digest().encode())
    write_engine_sidecar(plan, key, build_seconds=1.0)
    return plan


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "0" * 64},
        {"tensorrt_version": "10.6.0"},
        {"gpu_name": "NVIDIA GeForce RTX 4090"},
        {"compute_capability": (8, 9)},
        {"precision": "fp32"},
        {"input_shapes": (("image", (1, 3, 64, 64)),)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_key_changes_when_any_component_changes(exported, change: dict) -> None:
    key = key_for(exported)
    changed = dataclasses.replace(key, **change)
    assert changed.digest() != key.digest()
    assert engine_path(name="m", key=changed, engines_dir=Path("engines")) != engine_path(name="m", key=key, engines_dir=Path("engines"))
    assert len(changed.differences(key)) == 1


def test_key_is_stable_and_names_the_plan(exported) -> None:
    assert key_for(exported) == key_for(exported) and key_for(exported).digest() == key_for(exported).digest()
    assert EngineKey.from_json(key_for(exported).to_json()) == key_for(exported)
    path = engine_path(name="tiny_conv", key=key_for(exported), engines_dir=Path("engines"))
    assert re.fullmatch(r"engines/tiny_conv\.[0-9a-f]{16}\.plan", path.as_posix())


def test_key_needs_tensorrt_and_a_gpu(exported) -> None:
    with pytest.raises(EngineError, match=r"TensorRT but it is not installed: .*pip install"):
        key_for(exported, hardware=HardwareFacts())
    with pytest.raises(EngineError, match="needs an NVIDIA CUDA GPU but none was found"):
        key_for(exported, hardware=HardwareFacts(tensorrt_version="10.5.0"))
    with pytest.raises(EngineError, match=r"precision 'int8' is not supported"):
        key_for(exported, precision="int8")


def test_sidecar_check_detects_every_mismatch(exported, engines: Path) -> None:
    key = key_for(exported)
    plan = fake_build(engines, key)
    check_engine(plan, key, fix="FIX")  # matches
    newer = dataclasses.replace(key, tensorrt_version="10.6.0")
    with pytest.raises(ModelFileError, match=r"was built for TensorRT 10\.5\.0 but 10\.6\.0 is installed: FIX"):
        check_engine(plan, newer, fix="FIX")
    other_gpu = dataclasses.replace(key, gpu_name="NVIDIA RTX A2000", compute_capability=(8, 6))
    with pytest.raises(ModelFileError, match=r"was built for GPU NVIDIA GeForce RTX 3060 \(sm_86\) but this machine has NVIDIA RTX A2000"):
        check_engine(plan, other_gpu, fix="FIX")
    plan.write_bytes(plan.read_bytes()[:-1])
    with pytest.raises(ModelFileError, match="is damaged or was replaced"):
        check_engine(plan, key, fix="FIX")
    sidecar_path(plan).unlink()
    with pytest.raises(ModelFileError, match=r"\.json is missing .*: FIX"):
        check_engine(plan, key, fix="FIX")


def test_ensure_engine_reuses_a_matching_plan_without_building(exported, engines: Path) -> None:
    plan = fake_build(engines, key_for(exported))
    log: list[str] = []
    assert ensure_engine(engines / "tiny_conv.onnx", "fp16", GPU, log.append) == plan
    assert log == []


def test_ensure_engine_explains_a_stale_plan_and_how_to_rebuild(exported, engines: Path) -> None:
    old = fake_build(engines, key_for(exported, hardware=dataclasses.replace(GPU, tensorrt_version="10.3.0")))
    log: list[str] = []
    with pytest.raises(EngineError) as info:
        ensure_engine(engines / "tiny_conv.onnx", "fp16", GPU, log.append, build=False)
    message = str(info.value)
    assert "was built for TensorRT 10.3.0 but 10.5.0 is installed" in message
    assert "python tools/build_engines.py --model tiny_conv --precision fp16" in message
    assert log == [f"{old} was built for TensorRT 10.3.0 but 10.5.0 is installed: building a new engine (the old file can be deleted)"]


def test_other_precision_is_a_sibling_not_a_stale_engine(exported, engines: Path) -> None:
    fake_build(engines, key_for(exported, precision="fp32"))
    log: list[str] = []
    with pytest.raises(EngineError, match=r"no engine was built on this machine yet\): build it with"):
        ensure_engine(engines / "tiny_conv.onnx", "fp16", GPU, log.append, build=False)
    assert log == []


def test_ensure_engine_rebuilds_a_damaged_plan(exported, engines: Path) -> None:
    plan = fake_build(engines, key_for(exported))
    plan.write_bytes(b"truncated")
    log: list[str] = []
    with pytest.raises(EngineError, match="damaged or was replaced"):
        ensure_engine(engines / "tiny_conv.onnx", "fp16", GPU, log.append, build=False)
    assert "rebuilding it" in log[0]


def test_ensure_engine_checks_the_onnx_sidecar_first(engines: Path) -> None:
    (engines / "tiny_conv.json").unlink()
    with pytest.raises(ModelFileError, match=r"python tools/export_onnx\.py --model tiny_conv"):
        ensure_engine(engines / "tiny_conv.onnx", "fp16", GPU, lambda _: None)


@pytest.mark.skipif(HARDWARE.tensorrt_version is not None, reason="checks the message shown when tensorrt is absent")
def test_building_without_tensorrt_says_how_to_install_it(engines: Path) -> None:
    log: list[str] = []
    with pytest.raises(EngineError, match=r"needs TensorRT but it is not installed: .*pip install"):
        ensure_engine(engines / "tiny_conv.onnx", "fp16", GPU, log.append)
    assert log[-1].startswith("Building TensorRT engine for 'tiny_conv' (fp16, NVIDIA GeForce RTX 3060, TensorRT 10.5.0)")


def test_timing_cache_is_per_tensorrt_version_and_gpu(tmp_path: Path) -> None:
    path = timing_cache_path(hardware=GPU, engines_dir=tmp_path)
    assert path.name == "timing-trt10.5.0-nvidia-geforce-rtx-3060-sm86.cache"
    assert timing_cache_path(hardware=dataclasses.replace(GPU, tensorrt_version="10.6.0"), engines_dir=tmp_path) != path


def test_build_engines_tool_needs_a_gpu(capsys) -> None:
    import runpy

    tool = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "build_engines.py"))
    assert tool["main"]([], hardware=HardwareFacts(tensorrt_version="10.5.0")) == 2
    assert "no CUDA GPU was found" in capsys.readouterr().err
    assert tool["main"]([], hardware=HardwareFacts()) == 2
    assert "pip install" in capsys.readouterr().err


# ---------------------------------------------------------------- on a GPU with TensorRT only


@pytest.mark.gpu
@requires_tensorrt
@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-2), ("fp16", 5e-2)])
def test_tensorrt_builds_caches_and_matches_onnxruntime(exported, engines: Path, precision: str, atol: float) -> None:
    log: list[str] = []
    runner = TensorRTRunner(onnx_path=engines / "tiny_conv.onnx", hardware=HARDWARE, precision=precision, log=log.append)
    image = np.random.default_rng(0).uniform(-1, 1, SHAPES["image"]).astype(np.float32)
    with runner:
        got = runner.run({"image": image})["features"].copy()
        assert runner.staging is not None and runner.staging.device == "cuda"
        allocations = runner.staging.allocations
        for _ in range(5):
            runner.run({"image": image})
        assert runner.staging.allocations == allocations
    assert any(line.startswith("Building TensorRT engine") for line in log)
    assert timing_cache_path(hardware=HARDWARE, engines_dir=engines).is_file()
    with OnnxRuntimeRunner(onnx_path=engines / "tiny_conv.onnx") as reference:
        want = reference.run({"image": image})["features"]
    assert np.abs(got - want).max() <= atol
    log.clear()
    plan = ensure_engine(engines / "tiny_conv.onnx", precision, HARDWARE, log.append)
    assert plan == runner.plan_path and log == []  # second start: cache hit, no build
