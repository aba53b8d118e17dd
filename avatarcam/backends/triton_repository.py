"""A Triton model repository from exported graphs: REPO/<name>-<weights key>/1/model.onnx (or model.plan) and
REPO/<name>-<weights key>/config.pbtxt, in the layout and config schema of Triton's model repository documentation
(docs/user_guide/model_repository.md and model_configuration.md of triton-inference-server/server).

Each graph of each checkpoint is its own model, named after the checkpoint's weights key (backends.triton_runner.
model_name), so one server holds several checkpoints at once and a client can never run another checkpoint's graph
by mistake. Version 1 is the only version: a new checkpoint is a new model name, not a new version.

The exported graphs have static batch-1 shapes (the local runtimes bind preallocated buffers to them), so configs
use max_batch_size 0 and full dims, and dynamic batching is off (it needs a batch dim); several clients at once run
on `instances` concurrent instances of each model instead.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from avatarcam.backends.base import ModelIO, TensorSpec
from avatarcam.backends.sidecar import sidecar_path
from avatarcam.errors import ConfigError

VERSION = "1"
FORMATS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "plan": ("tensorrt_plan", "model.plan")}
"""Repository format -> (Triton platform, file name in the version folder)."""
KINDS = ("gpu", "cpu")
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
          "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class RepositoryModel:
    """One model written into a repository."""

    name: str
    """The model's name on the server, e.g. 'fomm_kp_detector-0123456789abcdef'."""
    folder: Path
    io: ModelIO
    file: Path
    """The graph Triton loads (VERSION/model.onnx or model.plan)."""


def _tensor_block(spec: TensorSpec) -> str:
    if spec.shape is None or not spec.is_static:
        raise ConfigError(f"tensor {spec.name!r} has shape {spec.shape}: Triton repositories here need static shapes")
    if spec.dtype not in _TYPES:
        raise ConfigError(f"tensor {spec.name!r} has dtype {spec.dtype}; Triton types are known for {sorted(_TYPES)}")
    dims = ", ".join(str(d) for d in spec.shape)
    return f'  {{\n    name: "{spec.name}"\n    data_type: {_TYPES[spec.dtype]}\n    dims: [ {dims} ]\n  }}'


def config_text(name: str, io: ModelIO, *, fmt: str = "onnx", kind: str = "gpu", instances: int = 1) -> str:
    """config.pbtxt of one model (protobuf text of Triton's ModelConfig): platform, static dims, instance group."""
    if fmt not in FORMATS:
        raise ConfigError(f"Triton repository format {fmt!r} is not one of {sorted(FORMATS)}")
    if kind not in KINDS:
        raise ConfigError(f"Triton instance kind {kind!r} is not one of {list(KINDS)}")
    if instances < 1:
        raise ConfigError(f"Triton instance count {instances} must be >= 1")
    platform, _ = FORMATS[fmt]
    inputs = ",\n".join(_tensor_block(s) for s in io.inputs)
    outputs = ",\n".join(_tensor_block(s) for s in io.outputs)
    return (
        f'name: "{name}"\n'
        f'platform: "{platform}"\n'
        "# Static batch-1 graphs: no batch dim, so no dynamic batching; clients run on concurrent instances instead.\n"
        "max_batch_size: 0\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_{kind.upper()}\n  }}\n]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


def write_model(repository: Path | str, name: str, graph: Path | str, io: ModelIO, *, fmt: str = "onnx",
                kind: str = "gpu", instances: int = 1, facts: Mapping[str, object] | None = None) -> RepositoryModel:
    """Copy one exported graph into repository/name/1/ with its config.pbtxt and a facemimic.json of where it came
    from (the graph's sidecar and `facts`); replaces an older copy of the same model."""
    graph = Path(graph)
    if not graph.is_file():
        raise ConfigError(f"{graph} does not exist: export the graph before writing the repository")
    folder = Path(repository) / name
    _, file_name = FORMATS.get(fmt, ("", ""))
    text = config_text(name, io, fmt=fmt, kind=kind, instances=instances)
    version = folder / VERSION
    version.mkdir(parents=True, exist_ok=True)
    target = version / file_name
    shutil.copyfile(graph, target)
    (folder / "config.pbtxt").write_text(text)
    record: dict[str, object] = {"model": name, "graph": str(graph), "format": fmt, "io": io.to_json(),
                                 **(facts or {})}
    side = sidecar_path(graph)
    if side.is_file():
        record["export"] = json.loads(side.read_text())
    (folder / "facemimic.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return RepositoryModel(name=name, folder=folder, io=io, file=target)
