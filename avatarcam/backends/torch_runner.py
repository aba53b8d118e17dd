"""torch runner: runs an nn.Module on CPU or CUDA under inference_mode."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from avatarcam.backends.base import ModelIO, Runner
from avatarcam.errors import EngineError

INSTALL_HINT = "install it with `pip install torch` (see https://pytorch.org/get-started/locally/ for CUDA builds)"


class TorchRunner(Runner):
    """Runs a torch nn.Module (or a factory of one) with numpy inputs and outputs named by io."""

    runtime = "torch"

    def __init__(
        self,
        *,
        module: Any | Callable[[], Any],
        io: ModelIO,
        device: str = "cpu",
        threads: int | None = None,
        name: str = "model",
    ) -> None:
        super().__init__(name=name)
        if device not in ("cpu", "cuda"):
            raise EngineError(f"torch device {device!r} is not supported: use 'cpu' or 'cuda'")
        if threads is not None and threads < 1:
            raise EngineError(f"torch threads is {threads} but must be >= 1 (None leaves torch's default)")
        self._module_or_factory = module
        self._declared_io = io
        self._device = device
        self._threads = threads
        self._module: Any = None
        self._torch: Any = None

    @property
    def device(self) -> str:
        """'cpu' or 'cuda'."""
        return self._device

    def _open(self) -> ModelIO:
        try:
            import torch
        except ImportError as exc:
            raise EngineError(f"torch is not installed: {INSTALL_HINT}") from exc
        if self._device == "cuda" and not torch.cuda.is_available():
            raise EngineError(
                f"torch {torch.__version__} sees no CUDA device but device 'cuda' was requested for {self.name!r}: "
                f"install a CUDA build of torch or use device 'cpu'"
            )
        module = self._module_or_factory
        if not isinstance(module, torch.nn.Module):
            module = module()  # a factory: build (and load weights) only when the runner opens
        if not isinstance(module, torch.nn.Module):
            raise EngineError(
                f"torch runner for {self.name!r} got a {type(module).__name__} but needs a torch.nn.Module "
                f"(or a function returning one)"
            )
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        self._module = module.eval().to(self._device)
        self._torch = torch
        return self._declared_io

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        # from_numpy shares memory on CPU; on CUDA the copy to the device is the only transfer.
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self._device) for n in self.io.input_names]
        with torch.inference_mode():
            result = self._module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        names = self.io.output_names
        if len(result) != len(names):
            raise EngineError(
                f"module {type(self._module).__name__} returned {len(result)} tensors but {self.name!r} declares "
                f"outputs {list(names)}: make the declared outputs match what forward() returns"
            )
        return {n: t.detach().cpu().numpy() for n, t in zip(names, result)}

    def _close(self) -> None:
        self._module = None
        if self._device == "cuda" and self._torch is not None:
            self._torch.cuda.empty_cache()
        self._torch = None
