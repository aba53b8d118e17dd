"""fp32 ONNX graph -> fp16 ONNX graph with fp32 inputs and outputs, for strongly typed TensorRT engines.

TensorRT 11 removed the weakly typed precision controls (BuilderFlag.FP16 and the other precision flags,
IBuilder.platform_has_fast_fp16): an engine's precision is the precision of the network it is built from
(NVIDIA, "Migrating from TensorRT 10.x to 11.x", "Strongly Typed Networks Are Now Required"). So an fp16 engine
needs an fp16 graph. convert_to_fp16() derives it from our fp32 export with ONNX Runtime's converter,
onnxruntime.transformers.float16.convert_float_to_float16 (a maintained fork of onnxconverter-common's float16.py):

- every float32 initializer, Constant/ConstantOfShape value and Cast to float becomes float16, so every float
  tensor computed inside the graph is float16;
- keep_io_types=True: each float32 graph input gets one Cast to float16 and each graph output one Cast back to
  float32, so callers and the staging buffers keep feeding and reading float32 (the runner's ModelIO does not
  change);
- Resize scales stay float32 as its schema requires (the library's ALWAYS_FLOAT_INPUTS; its roi input may be float16
  by the schema). Before the call, a scales input read from a Constant is pointed at a float32 initializer
  NAME__fp32, which the library keeps as it is: it would otherwise round the Constant to float16 and cast it back,
  and a scale such as 1/3 rounded can change the output size. Upsample (opset <= 9, whose scales must be float32)
  runs in float32 between Casts, as in the library's default op_block_list;
- op types named in keep_fp32_ops run in float32 between Casts (none by default: see the measured bounds in
  tests/test_backends_onnx_fp16.py);
- float constants beyond float16's range are refused (EngineError) before the call: the library would clamp them
  to +-65504 silently.

ensure_fp16_onnx() keeps the converted file beside the export (NAME.fp16.onnx + sidecar) and rewrites it only when
the source graph or FP16_CONVERTER changes.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.export import SIDECAR_FORMAT, ExportedModel, load_exported
from avatarcam.backends.sidecar import read_sidecar, sha256_file, sidecar_path, write_bytes_atomic, write_sidecar
from avatarcam.errors import EngineError, ModelFileError

FP16_CONVERTER = "facemimic-fp16/2 (onnxruntime float16)"
"""Version of the conversion rules; part of every fp16 engine's cache key (bump it when the rules change)."""
FP16_MAX = 65504.0
"""Largest finite float16 (IEEE 754 binary16)."""
METADATA_PRECISION = "facemimic.precision"
_ALWAYS_FP32_OPS = frozenset({"Upsample"})


def _scales_index(op_type: str, opset: int) -> int | None:
    """Input index of the float32-only scales of a Resize or Upsample node (ONNX operator schemas), else None."""
    if op_type == "Resize":
        return 2 if opset >= 11 else 1
    return 1 if op_type == "Upsample" else None


def _refuse_subgraphs(model: Any) -> None:
    """EngineError for a node with a subgraph: the library puts the Casts it adds into the main graph only."""
    for node in model.graph.node:
        if any(attribute.HasField("g") or attribute.graphs for attribute in node.attribute):
            raise EngineError(
                f"node {node.name!r} ({node.op_type}) has a subgraph, which the fp16 conversion does not handle: "
                f"build this model with precision fp32"
            )


def _pin_constant_scales(model: Any, opset: int) -> None:
    """Point each Resize/Upsample scales input read from a float Constant at a float32 initializer NAME__fp32."""
    from onnx import TensorProto

    constants = {node.output[0]: node for node in model.graph.node if node.op_type == "Constant"}
    names = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        index = _scales_index(node.op_type, opset)
        if index is None or index >= len(node.input) or node.input[index] not in constants:
            continue
        value = next((a.t for a in constants[node.input[index]].attribute if a.name == "value"), None)
        if value is None or value.data_type != TensorProto.FLOAT:
            continue
        name = node.input[index] + "__fp32"
        if name not in names:
            copy = model.graph.initializer.add()
            copy.CopyFrom(value)
            copy.name = name
            names.add(name)
        node.input[index] = name


def _refuse_out_of_range(model: Any, blocked_ops: Collection[str], opset: int) -> None:
    """EngineError for a float32 initializer or node attribute tensor beyond float16's range that becomes float16."""
    from onnx import TensorProto, numpy_helper

    nodes = [node for node in model.graph.node if node.op_type not in blocked_ops]
    read_in_fp16 = {name for node in nodes for index, name in enumerate(node.input)
                    if index != _scales_index(node.op_type, opset)}
    tensors = [(f"initializer {init.name!r}", init) for init in model.graph.initializer if init.name in read_in_fp16]
    tensors += [(f"{node.op_type} {node.name!r}", tensor) for node in nodes for attribute in node.attribute
                for tensor in [attribute.t, *attribute.tensors]]
    for what, tensor in tensors:
        if tensor.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(tensor)
        largest = float(np.abs(array[np.isfinite(array)]).max(initial=0.0))
        if largest > FP16_MAX:
            also = ", or keep the ops that use it in float32 (keep_fp32_ops)" if what.startswith("initializer") else ""
            raise EngineError(
                f"{what} holds {largest:.6g}, beyond float16's largest value {FP16_MAX:g}: build this model with "
                f"precision fp32{also}"
            )


def _skip_fp16_round_trips(graph: Any) -> None:
    """Point each Cast to float32 of a Cast to float16 of a float32 tensor at that tensor (in place).

    The library casts the float32 output of every blocked op to float16, and back to float32 for the next blocked op
    or graph output; the round trip would round (or overflow) values that keep_fp32_ops keeps in float32.
    """
    from onnx import TensorProto

    types = {info.name: info.type.tensor_type.elem_type for info in [*graph.input, *graph.value_info]}
    casts = {node.output[0]: node for node in graph.node if node.op_type == "Cast"}
    to = {name: next(a.i for a in node.attribute if a.name == "to") for name, node in casts.items()}
    for name, node in casts.items():
        source = node.input[0]
        if to[name] == TensorProto.FLOAT and to.get(source) == TensorProto.FLOAT16:
            if types.get(casts[source].input[0]) == TensorProto.FLOAT:
                node.input[0] = casts[source].input[0]


def _inferred(model: Any) -> Any:
    """model with the element type of every tensor from ONNX shape inference (strict)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and checker errors alike
        raise EngineError(f"ONNX type inference failed on the fp32 graph ({exc}): re-export the model") from exc


def convert_to_fp16(model: Any, *, keep_fp32_ops: Collection[str] = ()) -> Any:
    """A new onnx.ModelProto computing model in float16 with its float32 inputs and outputs kept (see module doc).

    keep_fp32_ops: op types computed in float32 (their float inputs and outputs are cast around them).
    Raises EngineError for graphs with subgraphs (If/Loop/Scan), float constants beyond float16's range read by ops
    not kept in float32, a graph that fails type inference, or a converted graph that fails onnx.checker. model is
    not modified.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    blocked = _ALWAYS_FP32_OPS | frozenset(keep_fp32_ops)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _refuse_subgraphs(work)
    _pin_constant_scales(work, opset)
    _refuse_out_of_range(work, blocked, opset)
    converted = convert_float_to_float16(
        _inferred(work), keep_io_types=True, op_block_list=sorted(blocked), disable_shape_infer=True
    )
    _skip_fp16_round_trips(converted.graph)
    tidy = OnnxModel(converted)
    tidy.prune_graph(allow_remove_graph_inputs=False)  # Casts and Constants that nothing reads any more
    tidy.topological_sort()  # the library appends its Casts after the nodes that read them
    produced = {name for node in converted.graph.node for name in node.output}
    stale = [info for info in converted.graph.value_info if info.name not in produced]
    for info in stale:
        converted.graph.value_info.remove(info)
    tag = converted.metadata_props.add()
    tag.key, tag.value = METADATA_PRECISION, f"fp16 ({FP16_CONVERTER})"
    try:
        onnx.checker.check_model(converted, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"the fp16 graph fails onnx.checker ({exc}): build this model with precision fp32") from exc
    return converted


def float_tensor_types(model: Any) -> dict[str, int]:
    """elem type of every float tensor (float16 or float32) computed by a node, from shape inference (tests)."""
    from onnx import TensorProto

    graph = _inferred(model).graph
    types = {info.name: info.type.tensor_type.elem_type for info in [*graph.input, *graph.output, *graph.value_info]}
    produced = (out for node in model.graph.node for out in node.output)
    return {n: types[n] for n in produced if types.get(n) in (TensorProto.FLOAT, TensorProto.FLOAT16)}


def fp16_path(onnx_path: Path) -> Path:
    """engines/NAME.onnx -> engines/NAME.fp16.onnx."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".fp16.onnx")


def ensure_fp16_onnx(exported: ExportedModel, *, keep_fp32_ops: Collection[str] = ()) -> Path:
    """The fp16 graph of an exported fp32 model, converted now unless an up-to-date one is beside it already.

    Its sidecar has the export's format (so load_exported checks it) plus the source graph's sha256 and the
    converter version, which decide whether it is up to date. Returns NAME.fp16.onnx.
    """
    import onnx

    if exported.onnx_path.name.endswith(".fp16.onnx"):
        raise EngineError(
            f"{exported.onnx_path} is already an fp16 graph derived from an export: build from "
            f"{exported.onnx_path.name.removesuffix('.fp16.onnx')}.onnx instead"
        )
    target = fp16_path(exported.onnx_path)
    recipe = {"source_onnx_sha256": exported.onnx_sha256, "converter": FP16_CONVERTER,
              "keep_fp32_ops": sorted(keep_fp32_ops)}
    try:
        load_exported(target)
        data = read_sidecar(sidecar_path(target), fix="")
        if all(data.get(k) == v for k, v in recipe.items()):
            return target
    except ModelFileError:
        pass  # missing, damaged or stale: convert again
    converted = convert_to_fp16(onnx.load(str(exported.onnx_path)), keep_fp32_ops=keep_fp32_ops)
    write_bytes_atomic(target, converted.SerializeToString())
    source_side = read_sidecar(exported.sidecar_path, fix="")
    write_sidecar(
        sidecar_path(target),
        {
            **source_side,
            **recipe,
            "format": SIDECAR_FORMAT,
            "model": target.stem,
            "onnx_file": target.name,
            "onnx_sha256": sha256_file(target),
            "precision": "fp16",
        },
    )
    return target
