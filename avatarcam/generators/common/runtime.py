"""Runtime plumbing shared by the neural generators: a runner shared between threads, and which runtimes a
backend choice can put a model on (so that ONNX exports are made only when a runtime will read them)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class LockedRunner:
    """A runner shared by the render, avatar-loading and hotkey threads: one call at a time, outputs copied."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.runner.label

    def run(self, inputs: dict[str, np.ndarray], *, copy: bool = True) -> dict[str, np.ndarray]:
        with self._lock:
            outputs = self.runner.run(inputs)
            # Runner outputs may be staging buffers reused two calls later; keep copies of what outlives the call.
            return {k: np.array(v) for k, v in outputs.items()} if copy else outputs

    def close(self) -> None:
        with self._lock:
            self.runner.close()


def needs_onnx(requested: str, cpu_runtime: str, hardware: Any) -> bool:
    """Whether backend selection for one model can pick a runtime that reads the ONNX file."""
    if requested == "triton":
        return False  # the server holds its own exports (tools/export_triton.py)
    if requested in ("onnxruntime", "tensorrt"):
        return True
    if requested == "torch":
        return False
    gpu = hardware.cuda_available and (
        (hardware.tensorrt_version is not None and hardware.torch_cuda) or hardware.onnxruntime_cuda
    )
    return gpu or cpu_runtime == "onnxruntime"


def gpu_runs(requested: str, hardware: Any) -> bool:
    """Whether backend `requested` puts the models on a GPU here."""
    if requested == "triton":
        return False  # the server's GPU, not this machine's
    if requested == "tensorrt":
        return True
    if requested == "onnxruntime":
        return hardware.cuda_available and hardware.onnxruntime_cuda
    if requested == "torch":
        return hardware.cuda_available and hardware.torch_cuda
    return hardware.cuda_available and (
        (hardware.tensorrt_version is not None and hardware.torch_cuda) or hardware.onnxruntime_cuda
        or hardware.torch_cuda
    )


def runtime_label(labels: dict[str, str], prefix: str) -> str:
    """One label when every model runs on the same runtime ('onnxruntime-cpu'), else 'name label' per model with the
    family's prefix dropped from the model names ('kp_detector onnxruntime-cpu, frame_generator torch-cpu-bf16')."""
    if len(set(labels.values())) == 1:
        return next(iter(labels.values()))
    return ", ".join(f"{name.removeprefix(prefix)} {label}" for name, label in labels.items())
