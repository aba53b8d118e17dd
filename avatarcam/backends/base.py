"""One lifecycle for every inference runtime: open() -> run(name -> array) -> close(), inputs checked before running."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarcam.errors import EngineError


def _dim_text(dim: int | None) -> str:
    return "*" if dim is None else str(dim)


def shape_text(shape: Sequence[int | None] | None) -> str:
    """A shape as the error messages print it: (1, 3, 256, 256), dynamic dims as *, unknown rank as (...)."""
    if shape is None:
        return "(...)"
    dims = [_dim_text(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output; None dims are dynamic (-1 and names are read as None)."""

    name: str
    shape: tuple[int | None, ...] | None
    """Dims in the model's order; None is a dynamic dim; a shape of None means even the rank is unknown."""
    dtype: str
    """numpy dtype name, e.g. 'float32'."""

    def __post_init__(self) -> None:
        # Runtimes report dynamic dims as -1, 0, strings or None; one spelling keeps comparisons simple.
        if self.shape is not None:
            dims = tuple(d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in self.shape)
            object.__setattr__(self, "shape", dims)
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    @property
    def is_static(self) -> bool:
        """True when every dim is known, so buffers for it can be allocated once."""
        return self.shape is not None and all(d is not None for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (dynamic dims as -1, unknown rank as null)."""
        shape = None if self.shape is None else [(-1 if d is None else d) for d in self.shape]
        return {"name": self.name, "shape": shape, "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        """The inverse of to_json()."""
        shape = data.get("shape")
        return cls(name=str(data["name"]), shape=None if shape is None else tuple(shape), dtype=str(data["dtype"]))


@dataclass(frozen=True)
class ModelIO:
    """A model's input and output tensors, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        """Input names in order."""
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output names in order."""
        return tuple(s.name for s in self.outputs)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelIO:
        """The inverse of to_json()."""
        return cls(
            inputs=tuple(TensorSpec.from_json(s) for s in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(s) for s in data["outputs"]),
        )


def check_inputs(inputs: Mapping[str, Any], specs: Sequence[TensorSpec], *, model: str = "the model") -> None:
    """Raise EngineError naming the first input whose presence, type, dtype, rank or size does not match specs."""
    expected_names = [s.name for s in specs]
    missing = [n for n in expected_names if n not in inputs]
    if missing:
        raise EngineError(
            f"input {missing[0]!r} is missing: {model} expects inputs {expected_names} but got {sorted(inputs)}: "
            f"pass every input by name"
        )
    unexpected = [n for n in inputs if n not in expected_names]
    if unexpected:
        raise EngineError(
            f"input {unexpected[0]!r} is not an input of {model}: expected only {expected_names}: "
            f"remove it or check the input name"
        )
    for spec in specs:
        array = inputs[spec.name]
        if not isinstance(array, np.ndarray):
            raise EngineError(
                f"input {spec.name!r} is a {type(array).__name__} but runners take numpy.ndarray: "
                f"convert it with np.asarray(value, dtype=np.{spec.dtype})"
            )
        if array.dtype != np.dtype(spec.dtype):
            raise EngineError(
                f"input {spec.name!r} has dtype {array.dtype} but {model} expects {spec.dtype}: "
                f"convert it with .astype(np.{spec.dtype})"
            )
        if spec.shape is None:
            continue
        if array.ndim != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(array.shape, spec.shape)
        ):
            legend = " (* = any size)" if None in spec.shape else ""
            raise EngineError(
                f"input {spec.name!r} has shape {shape_text(array.shape)} but {model} expects "
                f"{shape_text(spec.shape)}{legend}: resize or reshape the input to that shape"
            )


class Runner(ABC):
    """Base of every runtime: open() -> run() -> close(); close() is idempotent; usable as a context manager.

    Subclasses implement _open() (load the model, return its ModelIO), _run() and _close(). Outputs of run() may
    be runner-owned staging buffers that are reused two calls later: copy an output to keep it longer. A runner is
    driven by one thread at a time (its stage's worker).
    """

    runtime: str = "base"
    """Registry name of the runtime ('onnxruntime', 'torch', 'tensorrt')."""

    def __init__(self, *, name: str) -> None:
        self._name = name
        self._io: ModelIO | None = None

    @property
    def name(self) -> str:
        """The model's name, used in messages."""
        return self._name

    @property
    def device(self) -> str:
        """'cpu' or 'cuda'."""
        return "cpu"

    @property
    def label(self) -> str:
        """Runtime and device as log lines print them, e.g. 'onnxruntime-cpu'."""
        return f"{self.runtime}-{self.device}"

    @property
    def is_open(self) -> bool:
        """True between open() and close()."""
        return self._io is not None

    @property
    def io(self) -> ModelIO:
        """The model's input/output metadata (available once open)."""
        if self._io is None:
            raise EngineError(f"{self.label} runner for {self._name!r} is not open: call open() or use it in `with`")
        return self._io

    def open(self) -> Runner:
        """Load the model; a second call does nothing. Returns self."""
        if self._io is None:
            self._io = self._open()
        return self

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check inputs against the model's metadata, run once, return outputs by name in the model's order."""
        io = self.io
        check_inputs(inputs, io.inputs, model=f"{self._name!r} ({self.label})")
        return self._run(inputs)

    def close(self) -> None:
        """Release the model and its buffers; safe to call more than once."""
        if self._io is None:
            return
        try:
            self._close()
        finally:
            self._io = None

    def __enter__(self) -> Runner:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self._name!r} {self.label} {state}>"

    @abstractmethod
    def _open(self) -> ModelIO:
        """Load the model and return its metadata."""

    @abstractmethod
    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated inputs."""

    @abstractmethod
    def _close(self) -> None:
        """Release what _open() acquired."""
