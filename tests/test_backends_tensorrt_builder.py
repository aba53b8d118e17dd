"""The TensorRT builder on TensorRT 10 and 11 through one code path, checked against fakes of both bindings' APIs.

No GPU exists here, so tests/fake_tensorrt.py stands in for `tensorrt` (members as in the 10.13 and 11.1 bindings,
the ones 11 removed genuinely absent). The ONNX files, their fp16 conversion and the engine cache are real.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from avatarcam.backends import HardwareFacts, export_onnx, load_exported
from avatarcam.backends.engine_cache import engine_key, ensure_engine, network_recipe, read_engine_key
from avatarcam.backends.onnx_fp16 import FP16_CONVERTER, fp16_path
from avatarcam.backends.tensorrt_builder import build_engine, network_flags, tensorrt_major
from avatarcam.errors import EngineError
from tests.fake_tensorrt import make_tensorrt, read_fake_plan

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

VERSIONS = {10: "10.13.3.9", 11: "11.1.0.106"}
SHAPES = {"image": (1, 3, 16, 16)}


class TinyNet(torch.nn.Module):
    """Conv + BatchNorm + upsample: Resize keeps float32 scales in the fp16 graph, so its conversion is exercised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.conv(image)))
        return torch.nn.functional.interpolate(features, scale_factor=2.0, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def exported_once(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export") / "tiny_net.onnx"
    return export_onnx(TinyNet().eval(), {"image": np.zeros(SHAPES["image"], np.float32)}, out,
                       input_names=["image"], output_names=["features"])


@pytest.fixture()
def onnx_path(exported_once, tmp_path: Path) -> Path:
    for path in (exported_once.onnx_path, exported_once.sidecar_path):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path / "tiny_net.onnx"


def install(monkeypatch: pytest.MonkeyPatch, major: int):
    trt = make_tensorrt(VERSIONS[major])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def build(onnx_path: Path, precision: str, log: list[str] | None = None) -> Path:
    plan = onnx_path.with_name(f"tiny_net.{precision}.plan")
    build_engine(onnx_path=onnx_path, plan_path=plan, precision=precision, input_shapes=SHAPES,
                 timing_cache=onnx_path.parent / "timing.cache", workspace_bytes=1 << 20,
                 log=(log if log is not None else []).append, progress=lambda _: None)
    return plan


def calls_named(trt, name: str) -> list[tuple]:
    return [args for call, args in trt.calls if call == name]


def test_fake_11_lacks_what_tensorrt_11_removed() -> None:
    """The fake must fail where TensorRT 11 fails, or the tests below would prove nothing."""
    trt10, trt11 = make_tensorrt(VERSIONS[10]), make_tensorrt(VERSIONS[11])
    builder10, builder11 = trt10.Builder(trt10.Logger()), trt11.Builder(trt11.Logger())
    assert trt10.BuilderFlag.FP16 is not None and builder10.platform_has_fast_fp16
    for removed in ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS"):
        with pytest.raises(AttributeError):
            getattr(trt11.BuilderFlag, removed)
    with pytest.raises(AttributeError):
        builder11.platform_has_fast_fp16
    with pytest.raises(AttributeError):
        trt11.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    assert int(trt10.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    assert int(trt11.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0


def test_version_decides_the_network_flags() -> None:
    assert network_flags(make_tensorrt(VERSIONS[10])) == 1 << 1  # 1 << STRONGLY_TYPED (= 1 in 10.x)
    assert network_flags(make_tensorrt(VERSIONS[11])) == 0  # strongly typed is the default and only mode
    assert tensorrt_major("10.0.1.6") == 10 and tensorrt_major("11.1.0.106") == 11
    for unsupported in ("8.6.1", "9.3.0", "12.0.0", "garbage"):
        with pytest.raises(EngineError, match=rf"TensorRT {unsupported} is installed but .* 10 or 11: .*>=10,<12"):
            tensorrt_major(unsupported)


@pytest.mark.parametrize("major", [10, 11])
def test_fp16_builds_a_strongly_typed_network_from_the_fp16_graph(monkeypatch, onnx_path: Path, major: int) -> None:
    trt = install(monkeypatch, major)
    log: list[str] = []
    plan = read_fake_plan(build(onnx_path, "fp16", log))
    assert calls_named(trt, "Builder.create_network") == [(network_flags(trt),)]
    assert plan["strongly_typed"] is True
    assert plan["builder_flags"] == []  # no precision flag on either version (11 has none to set)
    assert calls_named(trt, "IBuilderConfig.set_flag") == []
    assert plan["parsed"] == str(fp16_path(onnx_path))
    assert plan["tensor_types"] == ["FLOAT", "HALF"]  # float32 only at the Casts of the I/O and Resize's scales
    network = calls_named(trt, "OnnxParser")[0][0]
    assert [(t.name, t.dtype.name) for t in network.inputs] == [("image", "FLOAT")]  # callers still feed float32
    assert [(t.name, t.dtype.name) for t in network.outputs] == [("features", "FLOAT")]
    assert sum(t.name == "HALF" for t in network.tensor_types.values()) > sum(
        t.name == "FLOAT" for t in network.tensor_types.values())
    graph = fp16_path(onnx_path).name
    assert log == [f"building tiny_net.fp16.plan from the fp16 graph {graph} (float32 inputs and outputs)"]
    assert load_exported(fp16_path(onnx_path)).io == load_exported(onnx_path).io


@pytest.mark.parametrize("major", [10, 11])
def test_fp32_builds_a_strongly_typed_network_from_the_exported_graph(monkeypatch, onnx_path: Path, major: int) -> None:
    trt = install(monkeypatch, major)
    plan = read_fake_plan(build(onnx_path, "fp32"))
    assert plan["strongly_typed"] is True and plan["builder_flags"] == []
    assert plan["parsed"] == str(onnx_path) and plan["tensor_types"] == ["FLOAT"]
    assert not fp16_path(onnx_path).exists()
    assert calls_named(trt, "IBuilderConfig.set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 1 << 20)]
    assert calls_named(trt, "IBuilderConfig.set_timing_cache") == [(False,)]
    assert (onnx_path.parent / "timing.cache").read_bytes() == b"fake timing cache+"


@pytest.mark.parametrize("major", [10, 11])
def test_parser_errors_name_the_node_and_the_fp32_way_out(monkeypatch, onnx_path: Path, major: int) -> None:
    trt = install(monkeypatch, major)
    trt.OnnxParser.unsupported_ops = frozenset({"Resize"})
    with pytest.raises(EngineError, match=rf"TensorRT {VERSIONS[major]} could not parse .*tiny_net\.fp16\.onnx: "
                                          r"node \d+ '.*' \(Resize\): no importer .*or build with precision fp32"):
        build(onnx_path, "fp16")


def test_unknown_precision_is_refused_before_building(monkeypatch, onnx_path: Path) -> None:
    trt = install(monkeypatch, 11)
    with pytest.raises(EngineError, match="precision 'int8' is not supported: use 'fp16' or 'fp32'"):
        build(onnx_path, "int8")
    assert calls_named(trt, "Builder") == []


@pytest.mark.parametrize("major", [10, 11])
def test_ensure_engine_builds_once_per_tensorrt_version_and_records_the_recipe(monkeypatch, onnx_path, major) -> None:
    install(monkeypatch, major)
    gpu = HardwareFacts(tensorrt_version=VERSIONS[major], cuda_available=True, gpu_name="NVIDIA H200",
                        compute_capability=(9, 0), torch_available=True, torch_cuda=True)
    log: list[str] = []
    plan = ensure_engine(onnx_path, "fp16", gpu, log.append, progress=lambda _: None)
    key = read_engine_key(plan, fix="")
    assert key.network == network_recipe("fp16") and FP16_CONVERTER in key.network
    assert key.tensorrt_version == VERSIONS[major]
    assert read_fake_plan(plan)["fake_tensorrt"] == VERSIONS[major]
    log.clear()
    assert ensure_engine(onnx_path, "fp16", gpu, log.append) == plan and log == []  # cached: no rebuild
    other = dataclasses.replace(gpu, tensorrt_version=VERSIONS[21 - major])
    exported = load_exported(onnx_path)
    assert engine_key(onnx_sha256=exported.onnx_sha256, precision="fp16", hardware=other,
                      input_shapes=SHAPES).digest() != key.digest()


def test_the_old_fp16_flag_path_fails_on_tensorrt_11(monkeypatch) -> None:
    """What the builder did before (BuilderFlag.FP16, platform_has_fast_fp16) is an AttributeError on 11."""
    trt = install(monkeypatch, 11)
    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    with pytest.raises(AttributeError):
        config.set_flag(trt.BuilderFlag.FP16)
    with pytest.raises(TypeError, match="unknown network creation flag bits"):
        builder.create_network(1 << 3)  # a 10.x-style hard-coded bit that 11 does not define


def test_build_engines_tool_builds_exports_not_their_fp16_graphs(monkeypatch, onnx_path: Path, capsys) -> None:
    import runpy

    install(monkeypatch, 11)
    gpu = HardwareFacts(tensorrt_version=VERSIONS[11], cuda_available=True, gpu_name="NVIDIA H200",
                        compute_capability=(9, 0), torch_available=True, torch_cuda=True)
    tool = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "build_engines.py"))
    engines = onnx_path.parent
    assert tool["main"](["--engines", str(engines)], hardware=gpu) == 0
    assert fp16_path(onnx_path).is_file()  # the first build derived the fp16 graph beside the export
    assert tool["main"](["--engines", str(engines)], hardware=gpu) == 0  # it is not taken for an export to build
    plans = sorted(p.name.split(".")[0] for p in engines.glob("*.plan"))
    assert plans == ["tiny_net"], plans
    with pytest.raises(EngineError, match=r"already an fp16 graph .*build from tiny_net\.onnx instead"):
        build_engine(onnx_path=fp16_path(onnx_path), plan_path=engines / "x.plan", precision="fp16",
                     input_shapes=SHAPES, timing_cache=engines / "t.cache", workspace_bytes=1 << 20, log=print)
