"""The runtime registry and backend selection: auto tries TensorRT -> ONNX Runtime CUDA -> torch CUDA -> CPU path."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.base import ModelIO, Runner
from avatarcam.backends.engine_cache import PRECISIONS, TENSORRT_INSTALL_HINT
from avatarcam.backends.export import export_fix, load_exported
from avatarcam.backends.hardware import HardwareFacts, detect_hardware
from avatarcam.backends.onnxruntime_runner import INSTALL_HINT as ONNXRUNTIME_INSTALL_HINT
from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner
from avatarcam.backends.tensorrt_runner import TensorRTRunner
from avatarcam.backends.torch_runner import INSTALL_HINT as TORCH_INSTALL_HINT
from avatarcam.backends.torch_runner import TorchRunner
from avatarcam.errors import ConfigError, EngineError, FaceMimicError

_LOG = logging.getLogger("avatarcam.backends")

RUNTIMES: dict[str, type[Runner]] = {
    "onnxruntime": OnnxRuntimeRunner,
    "tensorrt": TensorRTRunner,
    "torch": TorchRunner,
}
"""Every runtime by registry name; the only place runner classes are listed."""

BACKEND_CHOICES = ("auto", *RUNTIMES)
REMOTE_BACKENDS = ("triton",)
"""Backends that run a model on a server (backends.triton_runner); generators open them, not select_backend."""
CPU_RUNTIMES = ("onnxruntime", "torch")


def runtime_class(name: str) -> type[Runner]:
    """The runner class registered under name; an unknown name lists the valid ones."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ConfigError(f"unknown runtime {name!r}: valid runtimes are {', '.join(RUNTIMES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """What backend selection needs to know about one model."""

    name: str
    onnx_path: Path | None = None
    """The exported file (engines/NAME.onnx) for onnxruntime and tensorrt; None if the model is torch-only."""
    torch_module: Callable[[], Any] | None = None
    """Builds the nn.Module (weights loaded) for the torch runtime; None if torch is not offered for this model."""
    io: ModelIO | None = None
    """I/O metadata for the torch runtime; None reads it from the ONNX sidecar."""
    cpu_runtime: str = "onnxruntime"
    """Which runtime is faster for this model on CPU, as measured (torch's grid_sample is ~5x ONNX Runtime's)."""
    precision: str = "fp16"
    """TensorRT engine precision."""
    engines_dir: Path | None = None
    """Where TensorRT plans go; None means next to the ONNX file."""
    intra_op_threads: int | None = None
    """ONNX Runtime intra-op threads; None lets it choose."""
    source_hash: str | None = None
    """If set, the ONNX sidecar must record this source hash (export.source_hash(module))."""

    def __post_init__(self) -> None:
        if self.cpu_runtime not in CPU_RUNTIMES:
            raise ConfigError(
                f"model {self.name!r}: cpu_runtime {self.cpu_runtime!r} is not a CPU runtime: "
                f"use one of {list(CPU_RUNTIMES)}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"model {self.name!r}: precision {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.onnx_path is not None:
            object.__setattr__(self, "onnx_path", Path(self.onnx_path))


@dataclass(frozen=True)
class _Unavailable:
    reason: str
    fix: str


def _onnx_missing(model: ModelSpec) -> _Unavailable | None:
    if model.onnx_path is None:
        return _Unavailable("the model has no ONNX export", "choose backend 'torch' for it")
    if not model.onnx_path.is_file():
        fix = export_fix(model.onnx_path).replace("re-export", "export")
        return _Unavailable(f"{model.onnx_path} is not exported", fix)
    return None


def _check(option: str, model: ModelSpec, hw: HardwareFacts) -> _Unavailable | None:
    """Why option cannot run model here (None: it can)."""
    no_gpu = _Unavailable("no CUDA device", "use a machine with an NVIDIA GPU, or backend 'onnxruntime' / 'torch'")
    if option == "tensorrt":
        if hw.tensorrt_version is None:
            return _Unavailable("not installed", TENSORRT_INSTALL_HINT)
        if not hw.cuda_available:
            return no_gpu
        if not hw.torch_cuda:
            return _Unavailable(
                "needs a CUDA build of torch for device buffers and streams",
                "install one from https://pytorch.org/get-started/locally/",
            )
        return _onnx_missing(model)
    if option.startswith("onnxruntime"):
        if not hw.onnxruntime_available:
            return _Unavailable("not installed", ONNXRUNTIME_INSTALL_HINT)
        if option == "onnxruntime-cuda":
            if not hw.cuda_available:
                return no_gpu
            if not hw.onnxruntime_cuda:
                return _Unavailable(
                    "no CUDAExecutionProvider (onnxruntime-gpu is not installed)",
                    "`pip uninstall onnxruntime && pip install onnxruntime-gpu`",
                )
        return _onnx_missing(model)
    if option.startswith("torch"):
        if not hw.torch_available:
            return _Unavailable("not installed", TORCH_INSTALL_HINT)
        if model.torch_module is None:
            return _Unavailable(f"model {model.name!r} has no torch module", "choose backend 'onnxruntime' for it")
        if option == "torch-cuda" and not hw.torch_cuda:
            if hw.cuda_available:
                return _Unavailable(
                    "torch is a CPU-only build", "install a CUDA build from https://pytorch.org/get-started/locally/"
                )
            return no_gpu
        return None
    raise ConfigError(f"unknown runtime option {option!r}")  # internal: options are spelled in this module only


def _torch_io(model: ModelSpec) -> ModelIO:
    if model.io is not None:
        return model.io
    if model.onnx_path is not None and model.onnx_path.is_file():
        return load_exported(model.onnx_path).io
    raise EngineError(
        f"the torch runtime needs I/O metadata for {model.name!r} but the spec has no io and no exported ONNX: "
        f"set ModelSpec.io or export the model with `python tools/export_onnx.py --model {model.name}`"
    )


def _make(option: str, model: ModelSpec, hw: HardwareFacts, log: Callable[[str], None]) -> Runner:
    runtime, _, device = option.partition("-")
    cls = runtime_class(runtime)
    if cls is TensorRTRunner:
        return TensorRTRunner(
            onnx_path=model.onnx_path,  # type: ignore[arg-type]  # checked by _check
            hardware=hw,
            precision=model.precision,
            engines_dir=model.engines_dir,
            log=log,
            name=model.name,
        )
    if cls is OnnxRuntimeRunner:
        return OnnxRuntimeRunner(
            onnx_path=model.onnx_path,  # type: ignore[arg-type]
            device=device,
            intra_op_threads=model.intra_op_threads,
            expected_source_hash=model.source_hash,
            name=model.name,
        )
    module = model.torch_module
    assert module is not None  # checked by _check
    return TorchRunner(module=module, io=_torch_io(model), device=device, name=model.name)


def _auto_order(model: ModelSpec) -> list[str]:
    cpu = [f"{model.cpu_runtime}-cpu"] + [f"{r}-cpu" for r in CPU_RUNTIMES if r != model.cpu_runtime]
    return ["tensorrt", "onnxruntime-cuda", "torch-cuda", *cpu]


def _auto(model: ModelSpec, hw: HardwareFacts, log: Callable[[str], None], *, open_runner: bool) -> Runner:
    skipped: list[str] = []
    for option in _auto_order(model):
        problem = _check(option, model, hw)
        if problem is None:
            runner = _make(option, model, hw, log)
            if not open_runner:
                log(f"{model.name}: using {option}")
                return runner
            try:
                runner.open()
            except FaceMimicError as exc:  # e.g. an engine that fails to build: the next runtime may still work
                problem = _Unavailable(f"failed to open: {exc}", "")
            else:
                log(f"{model.name}: using {option}")
                return runner
        line = f"{option}: {problem.reason}"
        skipped.append(f"{line} ({problem.fix})" if problem.fix else line)
        log(line)
    raise EngineError(
        f"no runtime can run {model.name!r} on this machine:\n  " + "\n  ".join(skipped)
        + "\ninstall one of them as its line says"
    )


def select_backend(
    requested: str,
    model: ModelSpec,
    hardware: HardwareFacts | None = None,
    log: Callable[[str], None] = _LOG.info,
) -> Runner:
    """An unopened runner for model: the first usable one for 'auto', else the requested runtime or EngineError."""
    if requested not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {requested!r}: valid backends are {', '.join(BACKEND_CHOICES)}")
    hw = detect_hardware() if hardware is None else hardware
    if requested == "auto":
        return _auto(model, hw, log, open_runner=False)
    # Named runtime: the best device it has here, never another runtime.
    options = ["tensorrt"] if requested == "tensorrt" else [f"{requested}-cuda", f"{requested}-cpu"]
    problems: list[tuple[str, _Unavailable]] = []
    for option in options:
        problem = _check(option, model, hw)
        if problem is None:
            if problems:
                log(f"{problems[-1][0]}: {problems[-1][1].reason}; using {option}")
            runner = _make(option, model, hw, log)
            log(f"{model.name}: using {option}")
            return runner
        problems.append((option, problem))
    option, problem = problems[-1]
    raise EngineError(
        f"backend {requested!r} was requested for {model.name!r} but {option} cannot run here: {problem.reason}: "
        f"{problem.fix} (or set backend 'auto' to pick what this machine has)"
    )


def open_backend(
    requested: str,
    model: ModelSpec,
    hardware: HardwareFacts | None = None,
    log: Callable[[str], None] = _LOG.info,
) -> Runner:
    """select_backend() and open(); with 'auto', a runtime that fails to open is logged and the next one tried."""
    if requested != "auto":
        return select_backend(requested, model, hardware, log).open()
    return _auto(model, detect_hardware() if hardware is None else hardware, log, open_runner=True)


def time_cpu_runtimes(
    model: ModelSpec,
    inputs: Mapping[str, np.ndarray],
    *,
    repeats: int = 10,
    hardware: HardwareFacts | None = None,
) -> dict[str, float]:
    """Median milliseconds per run of model on each usable CPU runtime, to set ModelSpec.cpu_runtime from data."""
    hw = detect_hardware() if hardware is None else hardware
    timings: dict[str, float] = {}
    for runtime in CPU_RUNTIMES:
        option = f"{runtime}-cpu"
        if _check(option, model, hw) is not None:
            continue
        with _make(option, model, hw, lambda _: None) as runner:
            runner.run(inputs)  # warm-up: first runs pay for allocation and kernel selection
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                runner.run(inputs)
                samples.append((time.perf_counter() - started) * 1000.0)
        timings[runtime] = statistics.median(samples)
    return timings
