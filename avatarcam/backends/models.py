"""Export recipes: a torch module, example inputs, names and dynamic axes, and the functions that export, verify
and run a model by its registered name.

The registry itself belongs to the generators (avatarcam.generators.EXPORTABLE_MODELS, filled from each family's
`exports`); these functions take it as an argument so that backends never import a generator. A registry maps a
name to a "package.module:function" string, imported only when that model is exported or run on torch:

    # avatarcam/generators/mesh/torch_warp.py
    def export_recipe() -> ExportRecipe:
        return ExportRecipe(
            module=MeshWarp().eval(),
            example_inputs={"source": np.zeros((1, 3, 256, 256), np.float32), "grid": ...},
            output_names=("warped",),
        )

    # avatarcam/generators/mesh/__init__.py, in FAMILY:
    exports={"mesh_warp": "avatarcam.generators.mesh.torch_warp:export_recipe"},

Then `python tools/export_onnx.py --model mesh_warp` writes engines/mesh_warp.onnx + engines/mesh_warp.json and
prints the max abs error against torch, and `avatarcam.generators.model_spec("mesh_warp", cpu_runtime="torch")`
gives select_backend what it needs. Tests register callables with
monkeypatch.setitem(avatarcam.generators.EXPORTABLE_MODELS, "name", factory).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.export import DEFAULT_OPSET, ExportedModel, export_onnx
from avatarcam.backends.selection import ModelSpec
from avatarcam.backends.verify import verify_onnx
from avatarcam.errors import ConfigError
from avatarcam.paths import ENGINES_DIR

RecipeFactory = Callable[[], "ExportRecipe"]


@dataclass(frozen=True)
class ExportRecipe:
    """How to export one model: the module, one example input per name, output names and dynamic axes."""

    module: Any
    """torch.nn.Module in eval mode with its weights loaded."""
    example_inputs: Mapping[str, np.ndarray]
    """name -> example array; the order is the order of forward()'s positional arguments."""
    output_names: tuple[str, ...]
    """One name per tensor forward() returns, in order."""
    dynamic_axes: Mapping[str, Any] | None = None
    """torch.onnx dynamic_axes, e.g. {"source": {0: "batch"}}; None exports fixed shapes."""
    make_inputs: Callable[[np.random.Generator], dict[str, np.ndarray]] | None = None
    """Fresh valid inputs for verification (e.g. grids in [-1, 1]); None draws uniform [-1, 1) like the examples."""
    atol: float = 5e-4
    """Largest max abs error accepted between ONNX Runtime CPU and torch: 10x the worst float noise measured across
    CPUs, thread counts and runtimes on the FOMM graphs (4.5e-5; tools/measure_float_noise.py)."""
    opset: int = DEFAULT_OPSET

    @property
    def input_names(self) -> tuple[str, ...]:
        """Input names in forward() order."""
        return tuple(self.example_inputs)

    def sample_inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Inputs for verification: make_inputs(rng), or uniform [-1, 1) floats / the example ints."""
        if self.make_inputs is not None:
            return self.make_inputs(rng)
        samples = {}
        for name, example in self.example_inputs.items():
            example = np.asarray(example)
            if np.issubdtype(example.dtype, np.floating):
                samples[name] = rng.uniform(-1.0, 1.0, size=example.shape).astype(example.dtype)
            else:
                samples[name] = example.copy()
        return samples


Registry = Mapping[str, "str | RecipeFactory"]
"""Model name -> \"package.module:function\" or a factory returning an ExportRecipe."""


def _resolve(name: str, entry: str | RecipeFactory) -> RecipeFactory:
    if callable(entry):
        return entry
    module_name, _, attr = entry.partition(":")
    if not attr:
        raise ConfigError(f"EXPORTABLE_MODELS[{name!r}] is {entry!r} but 'package.module:function' was expected")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"EXPORTABLE_MODELS[{name!r}] points at {entry!r}, which cannot be loaded: {exc}") from exc
    return factory


def load_recipe(name: str, *, registry: Registry) -> ExportRecipe:
    """Build the ExportRecipe registered under name; an unknown name lists the registered ones."""
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none yet (add a model to a generator family's `exports`)"
        raise ConfigError(f"unknown model {name!r}: registered models are {known}")
    recipe = _resolve(name, registry[name])()
    if not isinstance(recipe, ExportRecipe):
        raise ConfigError(
            f"the factory of model {name!r} returned a {type(recipe).__name__} but an ExportRecipe was expected"
        )
    return recipe


def export_registered(
    name: str,
    *,
    out_dir: Path | str = ENGINES_DIR,
    registry: Registry,
    seed: int = 0,
) -> tuple[ExportedModel, dict[str, float]]:
    """Export a registered model to out_dir/NAME.onnx (+ .json) and verify it on fresh inputs; returns both results."""
    recipe = load_recipe(name, registry=registry)
    exported = export_onnx(
        recipe.module,
        recipe.example_inputs,
        Path(out_dir) / f"{name}.onnx",
        input_names=recipe.input_names,
        output_names=recipe.output_names,
        dynamic_axes=recipe.dynamic_axes,
        opset=recipe.opset,
    )
    errors = verify_onnx(exported, recipe.module, recipe.sample_inputs(np.random.default_rng(seed)), atol=recipe.atol)
    return exported, errors


def model_spec(
    name: str,
    *,
    engines_dir: Path | str = ENGINES_DIR,
    cpu_runtime: str = "onnxruntime",
    precision: str = "fp16",
    intra_op_threads: int | None = None,
    registry: Registry,
) -> ModelSpec:
    """A ModelSpec for a registered model: engines_dir/NAME.onnx, and its recipe's module for the torch runtime."""
    if name not in registry:
        raise ConfigError(f"unknown model {name!r}: registered models are {', '.join(sorted(registry)) or 'none yet'}")

    def build_module() -> Any:
        return load_recipe(name, registry=registry).module

    return ModelSpec(
        name=name,
        onnx_path=Path(engines_dir) / f"{name}.onnx",
        torch_module=build_module,
        cpu_runtime=cpu_runtime,
        precision=precision,
        engines_dir=Path(engines_dir),
        intra_op_threads=intra_op_threads,
    )

