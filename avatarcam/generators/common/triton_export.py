"""The Triton model repository of one checkpoint (tools/export_triton.py): the family's own verified ONNX exports,
copied into backends.triton_repository's layout under the names the client derives (generators/common/triton.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarcam.errors import ConfigError

log = logging.getLogger(__name__)

FAMILIES = ("fomm", "liveportrait")


@dataclass(frozen=True)
class FamilyGraphs:
    """One checkpoint's graphs as the repository needs them."""

    key: str
    """Weights key that names the models."""
    ios: dict[str, Any]
    """graph name -> ModelIO."""
    onnx: dict[str, Path]
    """graph name -> verified ONNX export."""
    tensorrt_precisions: dict[str, str]


def export_graphs(family: str, checkpoint: Path | str, *, engines_dir: Path | str, image_size: int | None = None,
                  log_line: Callable[[str], None] = log.info) -> FamilyGraphs:
    """Load a checkpoint (FOMM .pth.tar, or the LivePortrait weights folder) and export (or reuse) its verified ONNX
    graphs with the family's own exporter. ConfigError for an unknown family."""
    if family == "fomm":
        from avatarcam.generators.fomm import export as fx
        from avatarcam.generators.fomm.reenactor import TENSORRT_PRECISIONS as FOMM_PRECISIONS

        models = fx.load_fomm_models(checkpoint, image_size=image_size)
        ios = {n: fx.model_io(models)[n] for n in fx.MODEL_NAMES}
        paths = fx.ensure_exported(models, engines_dir=engines_dir, names=fx.MODEL_NAMES, log_line=log_line)
        return FamilyGraphs(key=models.key, ios=ios, onnx=paths, tensorrt_precisions=dict(FOMM_PRECISIONS))
    if family == "liveportrait":
        from avatarcam.generators.liveportrait import export as lx
        from avatarcam.generators.liveportrait.checkpoint import load_liveportrait
        from avatarcam.generators.liveportrait.reenactor import TENSORRT_PRECISIONS as LP_PRECISIONS

        if image_size is not None:
            raise ConfigError("--size is a FOMM setting: LivePortrait's graphs have fixed sizes (256 in, 512 out)")
        lp = load_liveportrait(checkpoint)
        ios = {n: lx.graph_io(lp, n) for n in lx.GRAPH_NAMES}
        paths = lx.ensure_exported(lp, engines_dir=engines_dir, names=lx.GRAPH_NAMES, log_line=log_line)
        return FamilyGraphs(key=lp.key, ios=ios, onnx=paths, tensorrt_precisions=dict(LP_PRECISIONS))
    raise ConfigError(f"Triton export: unknown model {family!r}: use one of {', '.join(FAMILIES)}")


def write_repository(graphs: FamilyGraphs, repository: Path | str, *, fmt: str = "onnx", kind: str = "gpu",
                     instances: int = 1, log_line: Callable[[str], None] = log.info) -> list[Any]:
    """Write every graph of `graphs` into a Triton model repository (backends.triton_repository's layout); fmt
    'plan' first builds TensorRT plans on this machine's GPU (Triton must run the same TensorRT version)."""
    from avatarcam.backends.triton_repository import write_model
    from avatarcam.backends.triton_runner import model_name

    written = []
    for name, onnx_path in graphs.onnx.items():
        graph = onnx_path
        facts: dict[str, object] = {"weights_key": graphs.key}
        if fmt == "plan":
            from avatarcam.backends.engine_cache import ensure_engine
            from avatarcam.backends.hardware import detect_hardware

            precision = graphs.tensorrt_precisions[name]
            graph = ensure_engine(onnx_path, precision, detect_hardware(), log_line)
            facts["precision"] = precision
        model = write_model(repository, model_name(name, graphs.key), graph, graphs.ios[name], fmt=fmt, kind=kind,
                            instances=instances, facts=facts)
        log_line(f"{model.name}: {model.file}")
        written.append(model)
    return written
