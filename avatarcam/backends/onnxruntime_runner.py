"""ONNX Runtime runner: CUDA execution provider when asked for, CPU otherwise; preallocated I/O for static shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.base import ModelIO, Runner, TensorSpec
from avatarcam.backends.buffers import StagingBuffers, StagingSlot
from avatarcam.backends.export import export_fix, load_exported
from avatarcam.errors import EngineError

INSTALL_HINT = "install it with `pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (NVIDIA CUDA)"
_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"


def _ort_dtype(type_text: str) -> str:
    """'tensor(float)' -> 'float32'."""
    match = re.fullmatch(r"tensor\((\w+)\)", type_text)
    names = {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool"}
    if match is None:
        raise EngineError(f"ONNX Runtime reports tensor type {type_text!r} but only tensor(...) types are supported")
    return names.get(match.group(1), match.group(1))


def _spec(node: Any) -> TensorSpec:
    shape = None if node.shape is None else tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(name=node.name, shape=shape, dtype=_ort_dtype(node.type))


class OnnxRuntimeRunner(Runner):
    """Runs an exported ONNX file with ONNX Runtime, after checking its sidecar JSON."""

    runtime = "onnxruntime"

    def __init__(
        self,
        *,
        onnx_path: Path | str,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        expected_source_hash: str | None = None,
        check_sidecar: bool = True,
        staging: bool = True,
        name: str | None = None,
    ) -> None:
        onnx_path = Path(onnx_path)
        super().__init__(name=name or onnx_path.stem)
        if device not in ("cpu", "cuda"):
            raise EngineError(f"onnxruntime device {device!r} is not supported: use 'cpu' or 'cuda'")
        if intra_op_threads is not None and intra_op_threads < 0:
            raise EngineError(f"intra_op_threads is {intra_op_threads} but must be >= 0 (0 lets ONNX Runtime choose)")
        self._onnx_path = onnx_path
        self._device = device
        self._intra_op_threads = intra_op_threads
        self._expected_source_hash = expected_source_hash
        self._check_sidecar = check_sidecar
        self._use_staging = staging
        self._session: Any = None
        self._staging: StagingBuffers | None = None
        self._bindings: list[Any] = []

    @property
    def device(self) -> str:
        """'cpu' or 'cuda'."""
        return self._device

    @property
    def staging(self) -> StagingBuffers | None:
        """The preallocated I/O slots when the model's shapes are static (None otherwise or before open)."""
        return self._staging

    def _providers(self, ort: Any) -> list[Any]:
        available = ort.get_available_providers()
        if self._device == "cpu":
            return [_CPU_PROVIDER]
        if _CUDA_PROVIDER not in available:
            raise EngineError(
                f"onnxruntime {ort.__version__} has providers {available} but {_CUDA_PROVIDER} was requested: "
                f"`pip uninstall onnxruntime && pip install onnxruntime-gpu`, or use device 'cpu'"
            )
        return [(_CUDA_PROVIDER, {"device_id": 0}), _CPU_PROVIDER]

    def _open(self) -> ModelIO:
        if self._check_sidecar:
            load_exported(self._onnx_path, expected_source_hash=self._expected_source_hash)
        elif not self._onnx_path.is_file():
            raise EngineError(f"{self._onnx_path} does not exist: {export_fix(self._onnx_path)}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError(f"onnxruntime is not installed: {INSTALL_HINT}") from exc
        options = ort.SessionOptions()
        # Spinning worker threads starve the landmark thread and other runtimes on a 2-core machine; measured
        # here: FOMM keypoints 43 -> 15 ms and the source encoder 139 -> 65 ms with spinning off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self._intra_op_threads is not None:
            options.intra_op_num_threads = self._intra_op_threads
        # One model per stage thread: parallelism comes from intra-op threads, not from concurrent nodes.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ONNX Runtime's warnings are about its own internals
        try:
            session = ort.InferenceSession(str(self._onnx_path), sess_options=options, providers=self._providers(ort))
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise EngineError(self._load_failure(ort, exc)) from exc
        if self._device == "cuda" and session.get_providers()[0] != _CUDA_PROVIDER:
            # ONNX Runtime silently drops the CUDA provider when CUDA/cuDNN libraries are missing; say so instead.
            raise EngineError(
                f"onnxruntime could not start {_CUDA_PROVIDER} for {self._onnx_path.name} (session providers "
                f"{session.get_providers()}): install the CUDA and cuDNN versions onnxruntime-gpu "
                f"{ort.__version__} needs, or use device 'cpu'"
            )
        io = ModelIO(
            inputs=tuple(_spec(n) for n in session.get_inputs()),
            outputs=tuple(_spec(n) for n in session.get_outputs()),
        )
        self._session = session
        if self._use_staging and all(s.is_static for s in (*io.inputs, *io.outputs)):
            self._staging = StagingBuffers(inputs=io.inputs, outputs=io.outputs, device="cpu", name=self.name)
            self._bindings = [self._bind(session, slot, io) for slot in self._staging.slots]
        return io

    def _load_failure(self, ort: Any, exc: Exception) -> str:
        text = str(exc)
        if "IR version" in text or "ir_version" in text:
            from avatarcam.backends.export import onnxruntime_max_ir_version

            return (
                f"onnxruntime {ort.__version__} cannot load {self._onnx_path} (it loads IR versions up to "
                f"{onnxruntime_max_ir_version()}): {text.splitlines()[0]}: {export_fix(self._onnx_path)} "
                f"(the exporter pins a loadable IR version)"
            )
        first_line = text.splitlines()[0] if text else repr(exc)
        return f"onnxruntime {ort.__version__} failed to load {self._onnx_path}: {first_line}"

    @staticmethod
    def _bind(session: Any, slot: StagingSlot, io: ModelIO) -> Any:
        # Bound once per slot: each run then reads and writes the same preallocated arrays.
        binding = session.io_binding()
        for spec in io.inputs:
            array = slot.host_inputs[spec.name]
            binding.bind_input(spec.name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        for spec in io.outputs:
            array = slot.host_outputs[spec.name]
            binding.bind_output(spec.name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        return binding

    def _run_slot(self, slot: StagingSlot) -> None:
        self._session.run_with_iobinding(self._bindings[slot.index])

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._staging is not None:
            return self._staging.collect(self._staging.submit(inputs, self._run_slot))
        names = list(self.io.output_names)
        values = self._session.run(names, dict(inputs))
        return dict(zip(names, values))

    def _close(self) -> None:
        self._bindings = []
        if self._staging is not None:
            self._staging.close()
            self._staging = None
        self._session = None
