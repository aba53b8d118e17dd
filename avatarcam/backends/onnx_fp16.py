"""fp32 ONNX graph -> fp16 ONNX graph with fp32 inputs and outputs, for strongly typed TensorRT engines.

TensorRT 11 removed the weakly typed precision controls (BuilderFlag.FP16 and the other precision flags,
IBuilder.platform_has_fast_fp16): an engine's precision is the precision of the network it is built from
(NVIDIA, "Migrating from TensorRT 10.x to 11.x", "Strongly Typed Networks Are Now Required"). So an fp16 engine
needs an fp16 graph. convert_to_fp16() writes that graph from our fp32 export:

- every float32 initializer, Constant and ConstantOfShape value becomes float16, every Cast to float becomes a
  Cast to float16, so every float tensor computed inside the graph is float16;
- each float32 graph input gets one Cast to float16 and each graph output one Cast back to float32, so callers and
  the staging buffers keep feeding and reading float32 (the runner's ModelIO does not change);
- inputs that an operator's schema requires in float32 (Resize roi/scales, Upsample scales) stay float32;
- op types named in keep_fp32_ops run in float32 between Casts (none by default: see the measured bounds in
  tests/test_backends_onnx_fp16.py).

ensure_fp16_onnx() keeps the converted file beside the export (NAME.fp16.onnx + sidecar) and rewrites it only when
the source graph or FP16_CONVERTER changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.export import SIDECAR_FORMAT, ExportedModel, load_exported
from avatarcam.backends.sidecar import read_sidecar, sha256_file, sidecar_path, write_bytes_atomic, write_sidecar
from avatarcam.errors import EngineError, ModelFileError

FP16_CONVERTER = "facemimic-fp16/1"
"""Version of the conversion rules; part of every fp16 engine's cache key (bump it when the rules change)."""
FP16_MAX = 65504.0
"""Largest finite float16 (IEEE 754 binary16)."""
METADATA_PRECISION = "facemimic.precision"

# (op type, input index) that the ONNX operator schemas (opset 17) type as float32 whatever the data type is.
_FLOAT32_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
# Ops whose inputs may be of any type and whose float output type comes from an attribute, handled below.
_TYPE_FROM_ATTRIBUTE = frozenset({"Cast", "Constant", "ConstantOfShape"})
# Ops that create float tensors from an attribute dtype we do not rewrite: refuse rather than mix types silently.
_UNSUPPORTED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
                          "Bernoulli", "Multinomial", "CastLike"})


def _fp16_array(array: np.ndarray, what: str) -> np.ndarray:
    finite = array[np.isfinite(array)]
    if finite.size and float(np.abs(finite).max()) > FP16_MAX:
        raise EngineError(
            f"{what} holds {float(np.abs(finite).max()):.6g}, beyond float16's largest value {FP16_MAX:g}: "
            f"build this model with precision fp32, or keep the ops that use it in float32 (keep_fp32_ops)"
        )
    return array.astype(np.float16)


def _tensor_to_fp16(tensor: Any, what: str) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(_fp16_array(numpy_helper.to_array(tensor), what), tensor.name)


def _float_types(model: Any) -> dict[str, int]:
    """Element type of every tensor name the graph mentions, from ONNX shape inference (strict)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and checker errors alike
        raise EngineError(f"ONNX type inference failed on the fp32 graph ({exc}): re-export the model") from exc
    graph = inferred.graph
    types: dict[str, int] = {}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def convert_to_fp16(model: Any, *, keep_fp32_ops: Collection[str] = ()) -> Any:
    """A new onnx.ModelProto computing model in float16 with its float32 inputs and outputs kept (see module doc).

    keep_fp32_ops: op types computed in float32 (their float inputs and outputs are cast around them).
    Raises EngineError for graphs with subgraphs (If/Loop/Scan), ops that make floats from a dtype attribute other
    than Cast/Constant/ConstantOfShape, or float constants beyond float16's range.
    """
    import onnx
    from onnx import TensorProto, helper

    float32, float16 = TensorProto.FLOAT, TensorProto.FLOAT16
    source = model
    types = _float_types(source)  # the element type of every tensor, before conversion
    graph = source.graph
    keep = frozenset(keep_fp32_ops)
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise EngineError(
                f"node {node.name!r} ({node.op_type}) has a subgraph, which the fp16 conversion does not handle: "
                f"build this model with precision fp32"
            )
        if node.op_type in _UNSUPPORTED:
            raise EngineError(
                f"node {node.name!r} is a {node.op_type}, whose output type the fp16 conversion does not rewrite: "
                f"build this model with precision fp32"
            )

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) == float32

    # Where each float tensor lives at each precision: name -> {elem type: tensor name holding it}.
    held: dict[str, dict[int, str]] = {}
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    counter = iter(range(1 << 30))

    def fresh(base: str, suffix: str) -> str:
        return f"{base}__{suffix}{next(counter)}"

    def get(name: str, want: int) -> str:
        places = held[name]
        if want not in places:
            source_name = next(iter(places.values()))
            out = fresh(name, "fp16_" if want == float16 else "fp32_")
            new_nodes.append(helper.make_node("Cast", [source_name], [out], to=want, name=fresh("cast", "")))
            places[want] = out
        return places[want]

    # Initializers: an fp16 copy under the same name; an fp32 copy (original bytes) only for float32-only inputs.
    needs32: set[str] = set()
    needs16: set[str] = {o.name for o in graph.output}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if (node.op_type, index) in _FLOAT32_INPUTS or node.op_type in keep:
                needs32.add(name)
            else:
                needs16.add(name)  # Cast inputs too: they read the fp16 copy
    for init in graph.initializer:
        if init.data_type != float32:
            new_inits.append(init)
            continue
        places: dict[int, str] = {}
        if init.name in needs32:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = init.name + "__fp32"
            new_inits.append(copy)
            places[float32] = copy.name
        if init.name in needs16 or not places:
            new_inits.append(_tensor_to_fp16(init, f"initializer {init.name!r}"))
            places[float16] = init.name
        held[init.name] = places
    for value in graph.input:
        if is_float(value.name) and value.name not in held:
            held[value.name] = {float32: value.name}

    # Graph outputs are renamed inside the graph so that the final Cast can give the caller the original name.
    output_names = {o.name for o in graph.output}
    internal = {name: name + "__graph_output" for name in output_names}

    def inner(name: str) -> str:
        return internal.get(name, name)

    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        del new.output[:]
        mode = float32 if node.op_type in keep else float16
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            out = node.output[0]
            if value is None or value.t.data_type != float32:
                if any(a.name.startswith("value_float") for a in node.attribute):
                    raise EngineError(
                        f"Constant {node.name!r} uses value_float(s), which the fp16 conversion does not rewrite: "
                        f"re-export the model (torch.onnx writes tensor constants)"
                    )
                new.output.extend([inner(out)])
                new_nodes.append(new)
                continue
            places = {}
            if out in needs32:
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                del copy.output[:]
                copy.output.extend([fresh(out, "fp32_")])
                copy.name = fresh(node.name or "constant", "fp32_")
                new_nodes.append(copy)
                places[float32] = copy.output[0]
            if out in needs16 or not places:
                for attribute in new.attribute:
                    if attribute.name == "value":
                        attribute.t.CopyFrom(_tensor_to_fp16(attribute.t, f"Constant {node.name!r}"))
                new.output.extend([inner(out)])
                new_nodes.append(new)
                places[float16] = inner(out)
            held[out] = places
            continue
        for index, name in enumerate(node.input):
            if not is_float(name):
                new.input.append(inner(name) if name else name)
                continue
            if node.op_type == "Cast":
                new.input.append(next(iter(held[name].values())))  # Cast reads any type
                continue
            want = float32 if mode == float32 or (node.op_type, index) in _FLOAT32_INPUTS else float16
            new.input.append(get(name, want))
        if node.op_type == "Cast" and mode == float16:
            for attribute in new.attribute:
                if attribute.name == "to" and attribute.i == float32:
                    attribute.i = float16
        if node.op_type == "ConstantOfShape" and mode == float16:
            for attribute in new.attribute:
                if attribute.name == "value" and attribute.t.data_type == float32:
                    attribute.t.CopyFrom(_tensor_to_fp16(attribute.t, f"ConstantOfShape {node.name!r}"))
        if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
            new.attribute.extend([helper.make_attribute("value", helper.make_tensor("value", mode, [1], [0.0]))])
        for out in node.output:
            new.output.append(inner(out))
            if is_float(out):
                held[out] = {mode: inner(out)}
        new_nodes.append(new)

    for output in graph.output:
        if is_float(output.name):
            if output.name not in held:
                raise EngineError(f"graph output {output.name!r} is produced by no node: re-export the model")
            source_name = get(output.name, float32)
            new_nodes.append(helper.make_node("Identity", [source_name], [output.name], name=fresh("output", "")))
        else:
            new_nodes.append(helper.make_node("Identity", [inner(output.name)], [output.name],
                                              name=fresh("output", "")))

    converted = helper.make_model(
        helper.make_graph(
            new_nodes,
            graph.name,
            list(graph.input),
            list(graph.output),
            initializer=new_inits,
        ),
        opset_imports=list(source.opset_import),
        producer_name=source.producer_name,
        producer_version=source.producer_version,
    )
    converted.ir_version = source.ir_version
    for entry in source.metadata_props:
        converted.metadata_props.add().CopyFrom(entry)
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

    types = _float_types(model)
    produced: Iterable[str] = (out for node in model.graph.node for out in node.output)
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
