"""TensorRT 10/11 runner: named I/O tensors, set_input_shape, set_tensor_address, execute_async_v3 on CUDA streams.

Device memory, pinned host memory, streams and events come from torch.cuda through StagingBuffers, so one
allocator serves every GPU runtime in the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.base import ModelIO, Runner, TensorSpec, shape_text
from avatarcam.backends.buffers import StagingBuffers, StagingSlot
from avatarcam.backends.engine_cache import DEFAULT_WORKSPACE_BYTES, TENSORRT_INSTALL_HINT, ensure_engine
from avatarcam.backends.hardware import HardwareFacts
from avatarcam.errors import EngineError

_LOG = logging.getLogger("avatarcam.backends")


class TensorRTRunner(Runner):
    """Runs the TensorRT engine for an exported ONNX file, building and caching it on first open."""

    runtime = "tensorrt"

    def __init__(
        self,
        *,
        onnx_path: Path | str,
        hardware: HardwareFacts,
        precision: str = "fp16",
        engines_dir: Path | str | None = None,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        build: bool = True,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        log: Callable[[str], None] = _LOG.info,
        name: str | None = None,
    ) -> None:
        onnx_path = Path(onnx_path)
        super().__init__(name=name or onnx_path.stem)
        self._onnx_path = onnx_path
        self._hardware = hardware
        self._precision = precision
        self._engines_dir = engines_dir
        self._input_shapes = input_shapes
        self._build = build
        self._workspace_bytes = workspace_bytes
        self._log = log
        self._plan_path: Path | None = None
        self._engine: Any = None
        self._context: Any = None
        self._staging: StagingBuffers | None = None

    @property
    def device(self) -> str:
        """Always 'cuda'."""
        return "cuda"

    @property
    def plan_path(self) -> Path | None:
        """The engine file in use (None before open)."""
        return self._plan_path

    @property
    def staging(self) -> StagingBuffers | None:
        """The pinned double-buffered I/O slots (None before open)."""
        return self._staging

    def _open(self) -> ModelIO:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineError(
                f"backend 'tensorrt' needs TensorRT but it is not installed: {TENSORRT_INSTALL_HINT}"
            ) from exc
        plan = ensure_engine(
            self._onnx_path,
            self._precision,
            self._hardware,
            self._log,
            input_shapes=self._input_shapes,
            engines_dir=self._engines_dir,
            build=self._build,
            workspace_bytes=self._workspace_bytes,
        )
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise EngineError(
                f"TensorRT {trt.__version__} could not deserialize {plan} (see the TensorRT error above): delete it "
                f"and rebuild with `python tools/build_engines.py --model {self.name} --precision {self._precision}`"
            )
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"TensorRT could not create an execution context for {plan}: free GPU memory and retry")
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            except TypeError as exc:
                raise EngineError(
                    f"tensor {name!r} of {plan} has TensorRT type {engine.get_tensor_dtype(name)}, which numpy cannot "
                    f"hold: export the model with float32/float16 inputs and outputs"
                ) from exc
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = self._fixed_input_shape(engine, name, plan)
                # Engines are built for one shape (min = opt = max), so the shape is set once, not per frame.
                if not context.set_input_shape(name, shape):
                    raise EngineError(f"TensorRT rejected shape {shape_text(shape)} for input {name!r} of {plan}")
                inputs.append(TensorSpec(name=name, shape=shape, dtype=dtype))
            else:
                outputs.append(TensorSpec(name=name, shape=None, dtype=dtype))
        # Output shapes are known only after every input shape is set.
        outputs = [
            TensorSpec(name=s.name, shape=tuple(context.get_tensor_shape(s.name)), dtype=s.dtype) for s in outputs
        ]
        for spec in outputs:
            if not spec.is_static:
                raise EngineError(
                    f"output {spec.name!r} of {plan} has data-dependent shape {shape_text(spec.shape)}, which this "
                    f"runner does not support: use backend 'onnxruntime' for this model"
                )
        io = ModelIO(inputs=tuple(inputs), outputs=tuple(outputs))
        self._staging = StagingBuffers(inputs=io.inputs, outputs=io.outputs, device="cuda", name=self.name)
        self._engine, self._context, self._plan_path = engine, context, plan
        return io

    def _fixed_input_shape(self, engine: Any, name: str, plan: Path) -> tuple[int, ...]:
        shape = tuple(engine.get_tensor_shape(name))
        if all(d >= 0 for d in shape):
            return shape
        smallest, _, largest = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
        if smallest != largest:
            raise EngineError(
                f"input {name!r} of {plan} accepts shapes {shape_text(smallest)} to {shape_text(largest)} but this "
                f"runner needs one fixed shape per engine: rebuild it with `python tools/build_engines.py`"
            )
        return largest

    def _enqueue(self, slot: StagingSlot) -> None:
        context = self._context
        # Addresses alternate between the two slots' device buffers; setting them is a cheap host-side call.
        for name, tensor in slot.device_inputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in slot.device_outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        assert self._staging is not None
        if not context.execute_async_v3(self._staging.compute_stream_handle):
            raise EngineError(f"TensorRT execute_async_v3 failed for {self._plan_path} (see the TensorRT error above)")

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._staging is not None
        return self._staging.collect(self._staging.submit(inputs, self._enqueue))

    def _close(self) -> None:
        if self._staging is not None:
            self._staging.close()  # waits for in-flight work before the context goes away
            self._staging = None
        self._context = None
        self._engine = None
