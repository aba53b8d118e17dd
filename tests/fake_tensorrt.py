"""Fakes of the TensorRT 10.x and 11.x Python bindings' build API, installed as sys.modules["tensorrt"] in tests.

TensorRT needs an NVIDIA GPU to build anything, so on this machine the builder is checked against these fakes.
Members and enum values follow the bindings' sources in NVIDIA/TensorRT: python/src/infer/pyCore.cpp,
pyGraph.cpp, parsers/pyOnnx.cpp and include/NvInfer.h at release/10.13 (the 10.x fake) and the 11.1 release
(the 11.x fake). What 11 removed is absent from the 11 fake (BuilderFlag.FP16/BF16/INT8/FP8/INT4/FP4,
OBEY/PREFER_PRECISION_CONSTRAINTS, Builder.platform_has_fast_fp16/platform_has_tf32/platform_has_fast_int8,
NetworkDefinitionCreationFlag.EXPLICIT_BATCH), so code that uses it fails with AttributeError as on the real
module. NetworkDefinitionCreationFlag values differ: 10.x EXPLICIT_BATCH=0, STRONGLY_TYPED=1; 11.x STRONGLY_TYPED=0
(deprecated, always on), PREFER_JIT_PYTHON_PLUGINS=1, PREFER_AOT_PYTHON_PLUGINS=2.

The fake parser reads the ONNX file with the real onnx package and records, per network, the element type of
every float tensor the graph computes, so tests can tell an fp16 network from an fp32 one. Every call is appended
to module.calls as (name, args).
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any

_BUILDER_FLAGS_10 = (
    "FP16 BF16 INT8 DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE EDITABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS "
    "SAFETY_SCOPE OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS DIRECT_IO REJECT_EMPTY_ALGORITHMS "
    "VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME FP8 ERROR_ON_TIMING_CACHE_MISS DISABLE_COMPILATION_CACHE WEIGHTLESS "
    "STRIP_PLAN REFIT_IDENTICAL WEIGHT_STREAMING INT4 REFIT_INDIVIDUAL STRICT_NANS MONITOR_MEMORY FP4 "
    "DISTRIBUTIVE_INDEPENDENCE"
).split()
_BUILDER_FLAGS_11 = (
    "DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE EDITABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE DIRECT_IO "
    "VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME ERROR_ON_TIMING_CACHE_MISS DISABLE_COMPILATION_CACHE STRIP_PLAN "
    "REFIT_IDENTICAL WEIGHT_STREAMING REFIT_INDIVIDUAL STRICT_NANS MONITOR_MEMORY DISTRIBUTIVE_INDEPENDENCE"
).split()
_NETWORK_FLAGS = {
    10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3},
    11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
}
# onnx TensorProto elem type -> DataType member name
_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8", 3: "INT8"}


def make_tensorrt(version: str) -> types.ModuleType:
    """A fresh fake `tensorrt` module of that version ('10.13.0.35' or '11.1.0.106'); major 10 or 11 only."""
    major = int(version.split(".")[0])
    if major not in (10, 11):
        raise ValueError(f"no fake for TensorRT {version}: 10.x and 11.x only")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: list[tuple[str, tuple[Any, ...]]] = []
    trt.calls = calls

    def record(name: str, *args: Any) -> None:
        calls.append((name, args))

    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {n: i for i, n in enumerate(
        _BUILDER_FLAGS_10 if major == 10 else _BUILDER_FLAGS_11)})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", _NETWORK_FLAGS[major])
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1,
                                                         "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3, "TACTIC_DRAM": 4})
    trt.DataType = enum.IntEnum("DataType", {n: i for i, n in enumerate(
        ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4", "FP4"))})

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity: int = 1) -> None:
            record("Logger", min_severity)

    class IProgressMonitor:
        def __init__(self) -> None:
            record("IProgressMonitor.__init__")

    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, shape, dtype

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.tensor_types: dict[str, Any] = {}
            """Fake-only: element type of every float tensor the parsed graph computes."""
            self.parsed_path: str | None = None
            """Fake-only: the file the parser read."""

        @property
        def flags(self) -> int:
            return self._flags

        def get_flag(self, flag: Any) -> bool:
            if major >= 11 and flag == trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED:
                return True  # always on in 11
            return bool(self._flags & (1 << int(flag)))

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_output(self, index: int) -> ITensor:
            return self.outputs[index]

    class ParserError:
        def __init__(self, node: int, name: str, op: str, desc: str) -> None:
            self._node, self._name, self._op, self._desc = node, name, op, desc

        def node(self) -> int:
            return self._node

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

        def desc(self) -> str:
            return self._desc

        def code(self) -> str:
            return "UNSUPPORTED_NODE"

    class OnnxParser:
        unsupported_ops: frozenset[str] = frozenset()
        """Fake-only: op types this parser reports as unsupported (tests set it)."""

        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            record("OnnxParser", network)
            self._network = network
            self._errors: list[ParserError] = []

        def parse_from_file(self, model: str) -> bool:
            import onnx

            record("OnnxParser.parse_from_file", model)
            proto = onnx.load(model)
            for index, node in enumerate(proto.graph.node):
                if node.op_type in self.unsupported_ops:
                    self._errors.append(ParserError(index, node.name, node.op_type, "no importer"))
            inferred = onnx.shape_inference.infer_shapes(proto)
            net = self._network
            net.parsed_path = model

            def tensor(info: Any) -> ITensor:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim)
                return ITensor(info.name, dims, getattr(trt.DataType, _ONNX_TYPES[info.type.tensor_type.elem_type]))

            initializers = {i.name for i in proto.graph.initializer}
            net.inputs = [tensor(v) for v in proto.graph.input if v.name not in initializers]
            net.outputs = [tensor(v) for v in proto.graph.output]
            known = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *proto.graph.output]}
            for node in proto.graph.node:
                for out in node.output:
                    if known.get(out) in (1, 10):
                        net.tensor_types[out] = getattr(trt.DataType, _ONNX_TYPES[known[out]])
            return not self._errors

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data) or b"fake timing cache"

        def serialize(self) -> bytes:
            return self.data + b"+"

    class IOptimizationProfile:
        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
            record("IOptimizationProfile.set_shape", name, tuple(min), tuple(opt), tuple(max))

    class IBuilderConfig:
        def __init__(self) -> None:
            self._flags = 0
            self._cache: ITimingCache | None = None
            self.progress_monitor: IProgressMonitor | None = None

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)

        def set_flag(self, flag: Any) -> None:
            record("IBuilderConfig.set_flag", flag)
            self._flags |= 1 << int(flag)

        def get_flag(self, flag: Any) -> bool:
            return bool(self._flags & (1 << int(flag)))

        @property
        def flags(self) -> int:
            return self._flags

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            record("IBuilderConfig.set_timing_cache", ignore_mismatch)
            self._cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._cache

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            record("IBuilderConfig.add_optimization_profile")
            return 0

    class Builder:
        def __init__(self, logger: Logger) -> None:
            record("Builder", logger)

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            record("Builder.create_network", flags)
            valid = sum(1 << int(f) for f in trt.NetworkDefinitionCreationFlag)
            if flags & ~valid:
                raise TypeError(f"fake TensorRT {version}: unknown network creation flag bits {flags:#x}")
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
            record("Builder.build_serialized_network", network, config)
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                for step in range(2):
                    if not monitor.step_complete("Building engine", step):
                        return None
                monitor.phase_finish("Building engine")
            strongly_typed = network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            plan = {
                "fake_tensorrt": version,
                "strongly_typed": strongly_typed,
                "builder_flags": [f.name for f in trt.BuilderFlag if config.get_flag(f)],
                "parsed": network.parsed_path,
                "tensor_types": sorted({t.name for t in network.tensor_types.values()}),
            }
            return json.dumps(plan).encode()

    if major == 10:
        Builder.platform_has_fast_fp16 = property(lambda self: True)  # type: ignore[attr-defined]
        Builder.platform_has_fast_int8 = property(lambda self: True)  # type: ignore[attr-defined]
        Builder.platform_has_tf32 = property(lambda self: True)  # type: ignore[attr-defined]

    trt.Logger = Logger
    trt.IProgressMonitor = IProgressMonitor
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.ITensor = ITensor
    return trt


def read_fake_plan(path: Path) -> dict[str, Any]:
    """What the fake builder wrote into a plan file."""
    return json.loads(Path(path).read_bytes())
