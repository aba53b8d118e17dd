"""torch module -> ONNX file + sidecar JSON, checked by onnx.checker, verified against torch on ONNX Runtime CPU."""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.base import ModelIO, TensorSpec
from avatarcam.backends.sidecar import read_sidecar, sha256_file, sidecar_path, write_sidecar
from avatarcam.errors import EngineError, ModelFileError

ONNX_IR_VERSION = 10
"""IR version written into every exported file. onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses
(it loads up to IR 13); IR 10 is loaded by onnxruntime >= 1.18 and by the TensorRT 10 ONNX parser, and opset 17
needs only IR 8, so pinning 10 costs nothing."""
DEFAULT_OPSET = 17
SIDECAR_FORMAT = "facemimic-onnx/1"
METADATA_SOURCE_HASH = "facemimic.source_hash"


@dataclass(frozen=True)
class ExportedModel:
    """An exported ONNX file whose sidecar JSON has been written or checked."""

    name: str
    onnx_path: Path
    sidecar_path: Path
    io: ModelIO
    onnx_sha256: str
    source_hash: str
    opset: int
    ir_version: int
    example_shapes: Mapping[str, tuple[int, ...]]
    """Concrete input shapes used at export; TensorRT engines are built for these unless told otherwise."""
    created: str


def export_fix(onnx_path: Path) -> str:
    """The command that (re)creates an exported model, for error messages."""
    onnx_path = Path(onnx_path)
    out = "" if onnx_path.parent.name == "engines" else f" --out {onnx_path.parent}"
    return f"re-export it with `python tools/export_onnx.py --model {onnx_path.stem}{out}`"


def source_hash(module: Any) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes, bytes) and the source of its non-torch classes."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        # View as bytes so every dtype (bf16 included) hashes without a numpy conversion.
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    classes = sorted({type(m) for m in module.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}")
    for cls in classes:
        digest.update(f"class {cls.__module__}.{cls.__qualname__}|".encode())
        if cls.__module__.startswith("torch."):
            continue  # torch's own layers are identified by the torch version recorded in the sidecar
        try:
            digest.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            pass  # classes defined in a REPL have no source; their name still counts
    return digest.hexdigest()


def _to_tensor(value: Any, name: str) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise EngineError(
        f"example input {name!r} is a {type(value).__name__} but export needs a numpy array or torch tensor: "
        f"pass np.asarray(value) or torch.as_tensor(value)"
    )


def ordered_inputs(example_inputs: Mapping[str, Any], input_names: Sequence[str]) -> tuple[Any, ...]:
    if set(example_inputs) != set(input_names):
        raise EngineError(
            f"example inputs are named {sorted(example_inputs)} but input_names are {list(input_names)}: "
            f"give one example input per input name"
        )
    return tuple(_to_tensor(example_inputs[n], n) for n in input_names)


def module_device_args(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Move inputs to the module's device so CUDA-resident modules export and verify too."""
    parameter = next(iter(module.parameters()), None)
    return args if parameter is None else tuple(a.to(parameter.device) for a in args)


def _io_from_onnx(model: Any) -> ModelIO:
    from onnx import helper

    initializers = {init.name for init in model.graph.initializer}

    def spec(value_info: Any) -> TensorSpec:
        tensor_type = value_info.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        return TensorSpec(name=value_info.name, shape=dims, dtype=dtype)

    return ModelIO(
        inputs=tuple(spec(v) for v in model.graph.input if v.name not in initializers),
        outputs=tuple(spec(v) for v in model.graph.output),
    )


def _torch_export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Any] | None,
    opset: int,
) -> None:
    import torch

    # The exporter puts the top module back into *its* mode recursively when it finishes, which would flip an eval
    # child of a train-mode wrapper into training; remember every submodule's mode so export leaves the module as is.
    modes = [(m, m.training) for m in module.modules()]
    try:
        with warnings.catch_warnings():
            # The legacy exporter announces its own deprecation on every call; other warnings (tracer) stay visible.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*", category=DeprecationWarning)
            with torch.no_grad():
                # dynamo=False: the torch.export-based exporter needs onnxscript, which is not a dependency, and the
                # TorchScript exporter handles grid_sample and dynamic_axes well.
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=None if dynamic_axes is None else dict(dynamic_axes),
                    opset_version=opset,
                    do_constant_folding=True,
                )
    finally:
        for submodule, training in modes:
            submodule.training = training


def export_onnx(
    module: Any,
    example_inputs: Mapping[str, Any],
    out_path: Path | str,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportedModel:
    """Export module to out_path (IR pinned to ONNX_IR_VERSION, checked) and write the sidecar JSON beside it."""
    import onnx
    import torch

    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise EngineError(f"export path {out_path} ends in {out_path.suffix!r} but '.onnx' was expected: rename it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    args = module_device_args(module, ordered_inputs(example_inputs, input_names))
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    try:
        _torch_export(
            module,
            args,
            tmp_path,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset=opset,
        )
        model = onnx.load(str(tmp_path))
        written_ir = model.ir_version
        model.ir_version = ONNX_IR_VERSION
        src_hash = source_hash(module)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_SOURCE_HASH, src_hash
        onnx.save(model, str(tmp_path))
        try:
            onnx.checker.check_model(str(tmp_path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise EngineError(
                f"exported {out_path.name} fails onnx.checker with IR version {ONNX_IR_VERSION} "
                f"(exporter wrote IR {written_ir}, opset {opset}): {exc}: check the module's ops against opset {opset}"
            ) from exc
        io = _io_from_onnx(model)
        if io.output_names != tuple(output_names):
            raise EngineError(
                f"exporting {out_path.name} gave outputs {list(io.output_names)} but output_names are "
                f"{list(output_names)}: give one name per tensor the module returns"
            )
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    example_shapes = {n: tuple(int(d) for d in a.shape) for n, a in zip(input_names, args)}
    onnx_sha = sha256_file(out_path)
    side = sidecar_path(out_path)
    write_sidecar(
        side,
        {
            "format": SIDECAR_FORMAT,
            "model": out_path.stem,
            "onnx_file": out_path.name,
            "onnx_sha256": onnx_sha,
            "source_hash": src_hash,
            "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
            "opset": opset,
            "ir_version": ONNX_IR_VERSION,
            "dynamic_axes": None if dynamic_axes is None else {k: _axes_json(v) for k, v in dynamic_axes.items()},
            "example_shapes": {n: list(s) for n, s in example_shapes.items()},
            **io.to_json(),
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "created": created,
        },
    )
    return ExportedModel(
        name=out_path.stem,
        onnx_path=out_path,
        sidecar_path=side,
        io=io,
        onnx_sha256=onnx_sha,
        source_hash=src_hash,
        opset=opset,
        ir_version=ONNX_IR_VERSION,
        example_shapes=example_shapes,
        created=created,
    )


def _axes_json(axes: Any) -> Any:
    if isinstance(axes, Mapping):
        return {str(k): str(v) for k, v in axes.items()}
    return [int(a) for a in axes]


def load_exported(onnx_path: Path | str, *, expected_source_hash: str | None = None) -> ExportedModel:
    """Check an exported file against its sidecar (present, same bytes, same source if given) before it is used."""
    onnx_path = Path(onnx_path)
    fix = export_fix(onnx_path)
    if not onnx_path.is_file():
        raise ModelFileError(f"{onnx_path} does not exist: {fix}")
    side = sidecar_path(onnx_path)
    data = read_sidecar(side, fix=fix)
    if data.get("format") != SIDECAR_FORMAT:
        raise ModelFileError(f"{side} has format {data.get('format')!r} but {SIDECAR_FORMAT!r} was expected: {fix}")
    actual_sha = sha256_file(onnx_path)
    if data.get("onnx_sha256") != actual_sha:
        raise ModelFileError(
            f"{onnx_path} changed after export: its sha256 is {actual_sha[:16]}... but {side.name} says "
            f"{str(data.get('onnx_sha256'))[:16]}...: {fix}"
        )
    if expected_source_hash is not None and data.get("source_hash") != expected_source_hash:
        raise ModelFileError(
            f"{onnx_path} was exported from other weights or code (source hash {str(data.get('source_hash'))[:16]}...) "
            f"than the current module ({expected_source_hash[:16]}...): {fix}"
        )
    try:
        return ExportedModel(
            name=onnx_path.stem,
            onnx_path=onnx_path,
            sidecar_path=side,
            io=ModelIO.from_json(data),
            onnx_sha256=actual_sha,
            source_hash=str(data["source_hash"]),
            opset=int(data["opset"]),
            ir_version=int(data["ir_version"]),
            example_shapes={n: tuple(int(d) for d in s) for n, s in data["example_shapes"].items()},
            created=str(data["created"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{side} lacks or garbles field {exc}: {fix}") from exc


def onnxruntime_max_ir_version() -> int:
    """The highest ONNX IR version the installed onnxruntime loads, found by loading a one-node model."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    for ir_version in range(onnx.IR_VERSION, 2, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = ir_version
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - onnxruntime raises its own Fail type; any failure means "not loadable"
            continue
        return ir_version
    raise EngineError(f"onnxruntime {ort.__version__} loads no IR version from 3 to {onnx.IR_VERSION}: reinstall it")


def export_mismatch(onnx_path: Path, io: ModelIO) -> str | None:
    """Why an existing export cannot serve a model with inputs `io` (None: it can): a bad sidecar or other shapes."""
    try:
        exported = load_exported(onnx_path)
    except ModelFileError as exc:
        return str(exc)
    expected = {spec.name: tuple(spec.shape or ()) for spec in io.inputs}
    if dict(exported.example_shapes) != expected:
        return f"{onnx_path.name} was exported for shapes {dict(exported.example_shapes)}, not {expected}"
    return None
