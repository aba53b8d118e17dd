"""Inference runtimes (ONNX Runtime, torch, TensorRT) behind one lifecycle, with export, engine cache and buffers.

Importing this package imports none of tensorrt, torch, onnxruntime, onnx or cuda; each runner imports its framework
in open(). Typical use:

    spec = generators.model_spec("mesh_warp", cpu_runtime="torch")  # or ModelSpec(...) by hand
    with select_backend("auto", spec) as runner:               # logs one line per skipped runtime
        outputs = runner.run({"source": source, "grid": grid})  # name -> np.ndarray, checked before running

open_backend() does the same and opens the runner; with "auto" a runtime that fails to open (an engine that does
not build, a damaged file) is logged and the next one is tried.
"""

from avatarcam.backends.base import ModelIO, Runner, TensorSpec, check_inputs
from avatarcam.backends.buffers import StagingBuffers, StagingSlot
from avatarcam.backends.engine_cache import EngineKey, engine_key, engine_path, ensure_engine
from avatarcam.backends.export import (
    ONNX_IR_VERSION,
    ExportedModel,
    export_onnx,
    load_exported,
    source_hash,
)
from avatarcam.backends.hardware import HardwareFacts, detect_hardware
from avatarcam.backends.models import ExportRecipe
from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner
from avatarcam.backends.selection import (
    BACKEND_CHOICES,
    RUNTIMES,
    ModelSpec,
    open_backend,
    runtime_class,
    select_backend,
    time_cpu_runtimes,
)
from avatarcam.backends.tensorrt_runner import TensorRTRunner
from avatarcam.backends.torch_runner import TorchRunner
from avatarcam.backends.verify import verify_onnx

__all__ = [
    "BACKEND_CHOICES",
    "ONNX_IR_VERSION",
    "RUNTIMES",
    "EngineKey",
    "ExportRecipe",
    "ExportedModel",
    "HardwareFacts",
    "ModelIO",
    "ModelSpec",
    "OnnxRuntimeRunner",
    "Runner",
    "StagingBuffers",
    "StagingSlot",
    "TensorRTRunner",
    "TensorSpec",
    "TorchRunner",
    "check_inputs",
    "detect_hardware",
    "engine_key",
    "engine_path",
    "ensure_engine",
    "export_onnx",
    "load_exported",
    "open_backend",
    "runtime_class",
    "select_backend",
    "source_hash",
    "time_cpu_runtimes",
    "verify_onnx",
]
