"""Double-buffered host/device staging: two preallocated slots, pinned and stream-ordered on CUDA, plain numpy on CPU.

Per frame, submit() copies the inputs into the next slot and enqueues upload -> compute -> download; collect() waits
for that slot's download and returns its host output arrays. On CUDA the three steps run on an upload stream, a
compute stream and a download stream ordered by events, so frame N+1's upload overlaps frame N's compute when the
caller submits before it collects. Nothing is allocated after construction: `allocations` stays constant and the
same two sets of arrays come back in turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from avatarcam.backends.base import TensorSpec, shape_text
from avatarcam.errors import EngineError

SLOT_COUNT = 2
CUDA_EVENTS = ("started", "uploaded", "compute_started", "computed", "downloaded")
"""The CUDA events each slot records per frame, in stream order (see slot_events)."""


class StagingSlot:
    """One slot: host arrays per input and output and the device buffers they are copied to and from.

    On CPU the device buffers are the host arrays themselves. Arrays are (spec shape), spec dtype, C-contiguous.
    """

    def __init__(
        self,
        *,
        index: int,
        host_inputs: dict[str, np.ndarray],
        host_outputs: dict[str, np.ndarray],
        device_inputs: dict[str, Any],
        device_outputs: dict[str, Any],
    ) -> None:
        self.index = index
        self.host_inputs = host_inputs
        self.host_outputs = host_outputs
        self.device_inputs = device_inputs
        """CPU: the host arrays; CUDA: torch CUDA tensors (use .data_ptr() for runtimes that take addresses)."""
        self.device_outputs = device_outputs


class StagingBuffers:
    """Two slots of preallocated input and output buffers for one model, used in turn."""

    def __init__(
        self,
        *,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str = "cpu",
        name: str = "model",
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise EngineError(f"staging device {device!r} is not supported: use 'cpu' or 'cuda'")
        for spec in (*inputs, *outputs):
            if not spec.is_static:
                raise EngineError(
                    f"{name}: tensor {spec.name!r} has shape {shape_text(spec.shape)} but staging buffers need every "
                    f"dim known: build the model with fixed input shapes or run it without staging"
                )
        self._name = name
        self._device = device
        self._input_specs = tuple(inputs)
        self._output_specs = tuple(outputs)
        self._allocations = 0
        self._next = 0
        self._closed = False
        self._torch: Any = None
        self._streams: dict[str, Any] = {}
        self._events: list[dict[str, Any]] = []
        self.last_timings_ms: dict[str, float] = {}
        """upload / compute / download of the last collected slot: CUDA event times on GPU, clocks on CPU."""
        self._pinned: list[dict[str, dict[str, Any]]] = []  # torch views of the pinned host arrays, kept for copy_()
        self._slots = [self._make_slot(i) for i in range(SLOT_COUNT)]

    @property
    def device(self) -> str:
        """'cpu' or 'cuda'."""
        return self._device

    @property
    def allocations(self) -> int:
        """Buffers allocated so far; constant after construction (the no-per-frame-allocation check)."""
        return self._allocations

    @property
    def slots(self) -> tuple[StagingSlot, ...]:
        """Both slots, for runtimes that bind buffer addresses once (ONNX Runtime IOBinding)."""
        return tuple(self._slots)

    @property
    def compute_stream_handle(self) -> int:
        """cudaStream_t of the compute stream as an int (0 on CPU), for runtimes such as TensorRT."""
        stream = self._streams.get("compute")
        return 0 if stream is None else int(stream.cuda_stream)

    def slot_events(self, slot: StagingSlot) -> Mapping[str, Any]:
        """The CUDA events (CUDA_EVENTS, timing enabled) of the frame last submitted in slot; empty on CPU.

        For timelines across frames (tools/gpu_check.py): read them after collect(slot) and before the slot is
        submitted again, when they are re-recorded. The events belong to the buffers: do not record them.
        """
        if self._device == "cpu":
            return {}
        return dict(self._events[slot.index])

    def _make_slot(self, index: int) -> StagingSlot:
        if self._device == "cpu":
            cpu_in = {s.name: self._host_array(s) for s in self._input_specs}
            cpu_out = {s.name: self._host_array(s) for s in self._output_specs}
            return StagingSlot(
                index=index, host_inputs=cpu_in, host_outputs=cpu_out, device_inputs=cpu_in, device_outputs=cpu_out
            )
        torch = self._import_torch()
        if not self._streams:
            self._streams = {k: torch.cuda.Stream() for k in ("upload", "compute", "download")}
        pinned: dict[str, dict[str, Any]] = {"inputs": {}, "outputs": {}}
        host_in: dict[str, np.ndarray] = {}
        host_out: dict[str, np.ndarray] = {}
        dev_in: dict[str, Any] = {}
        dev_out: dict[str, Any] = {}
        for direction, specs, host, dev in (
            ("inputs", self._input_specs, host_in, dev_in),
            ("outputs", self._output_specs, host_out, dev_out),
        ):
            for spec in specs:
                tensor = self._pinned_tensor(spec)
                pinned[direction][spec.name] = tensor
                host[spec.name] = tensor.numpy()  # shares the page-locked memory
                dev[spec.name] = self._device_tensor(spec)
        self._pinned.append(pinned)
        # uploaded: inputs are on the device; compute_started: the compute stream reached this slot's work;
        # computed: the device inputs were read and outputs written; downloaded: outputs are back in host memory.
        # "started" opens the slot's timeline: with enable_timing, collect() reads per-stage device times.
        self._events.append({k: torch.cuda.Event(enable_timing=True) for k in CUDA_EVENTS})
        return StagingSlot(
            index=index, host_inputs=host_in, host_outputs=host_out, device_inputs=dev_in, device_outputs=dev_out
        )

    def _import_torch(self) -> Any:
        if self._torch is None:
            try:
                import torch
            except ImportError as exc:
                raise EngineError(
                    f"{self._name}: CUDA staging needs torch (for pinned memory and streams) but it is not installed: "
                    f"install a CUDA build of torch, see https://pytorch.org/get-started/locally/"
                ) from exc
            if not torch.cuda.is_available():
                raise EngineError(
                    f"{self._name}: CUDA staging was requested but torch {torch.__version__} sees no CUDA device: "
                    f"install a CUDA build of torch or use device='cpu'"
                )
            self._torch = torch
        return self._torch

    def _torch_dtype(self, spec: TensorSpec) -> Any:
        return self._torch.from_numpy(np.zeros(0, dtype=spec.dtype)).dtype

    def _host_array(self, spec: TensorSpec) -> np.ndarray:
        self._allocations += 1
        return np.zeros(cast(tuple[int, ...], spec.shape), dtype=spec.dtype)  # fixed shapes: checked in __init__

    def _pinned_tensor(self, spec: TensorSpec) -> Any:
        self._allocations += 1
        return self._torch.zeros(spec.shape, dtype=self._torch_dtype(spec), pin_memory=True)

    def _device_tensor(self, spec: TensorSpec) -> Any:
        self._allocations += 1
        return self._torch.zeros(spec.shape, dtype=self._torch_dtype(spec), device="cuda")

    def submit(self, inputs: Mapping[str, np.ndarray], compute: Callable[[StagingSlot], None]) -> StagingSlot:
        """Copy inputs into the next slot and enqueue upload, compute(slot) and download; returns the slot."""
        if self._closed:
            raise EngineError(f"{self._name}: staging buffers are closed: create new ones")
        slot = self._slots[self._next]
        self._next = (self._next + 1) % SLOT_COUNT
        if self._device == "cpu":
            start = time.perf_counter()
            for name, host in slot.host_inputs.items():
                np.copyto(host, inputs[name], casting="no")
            staged = time.perf_counter()
            compute(slot)
            self.last_timings_ms = {"upload": (staged - start) * 1000, "compute": (time.perf_counter() - staged) * 1000,
                                    "download": 0.0}
            return slot
        torch = self._torch
        events = self._events[slot.index]
        upload, compute_stream, download = self._streams["upload"], self._streams["compute"], self._streams["download"]
        # The previous upload from this slot's host inputs must finish before the host overwrites them.
        events["uploaded"].synchronize()
        for name, host in slot.host_inputs.items():
            np.copyto(host, inputs[name], casting="no")
        with torch.cuda.stream(upload):
            # Device inputs of this slot may still be read by the compute submitted two frames ago.
            upload.wait_event(events["computed"])
            events["started"].record(upload)
            for name, pinned in self._pinned[slot.index]["inputs"].items():
                slot.device_inputs[name].copy_(pinned, non_blocking=True)
            events["uploaded"].record(upload)
        with torch.cuda.stream(compute_stream):
            compute_stream.wait_event(events["uploaded"])
            # The download submitted two frames ago may still be reading this slot's device outputs.
            compute_stream.wait_event(events["downloaded"])
            events["compute_started"].record(compute_stream)
            compute(slot)
            events["computed"].record(compute_stream)
        with torch.cuda.stream(download):
            download.wait_event(events["computed"])
            for name, pinned in self._pinned[slot.index]["outputs"].items():
                pinned.copy_(slot.device_outputs[name], non_blocking=True)
            events["downloaded"].record(download)
        return slot

    def collect(self, slot: StagingSlot) -> dict[str, np.ndarray]:
        """Wait for a submitted slot's outputs and return its host arrays (reused by the submit after next)."""
        if self._device == "cuda":
            events = self._events[slot.index]
            events["downloaded"].synchronize()
            # Device-side durations between the slot's events (all complete once the download is).
            self.last_timings_ms = {
                "upload": events["started"].elapsed_time(events["uploaded"]),
                "compute": events["compute_started"].elapsed_time(events["computed"]),
                "download": events["computed"].elapsed_time(events["downloaded"]),
            }
        return dict(slot.host_outputs)

    def close(self) -> None:
        """Wait for in-flight copies and drop every buffer; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._device == "cuda":
            for stream in self._streams.values():
                stream.synchronize()
        self._slots.clear()
        self._pinned.clear()
        self._events.clear()
        self._streams = {}
