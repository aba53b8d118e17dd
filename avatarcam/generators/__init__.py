"""Generators turn an avatar and the driver's motion into output frames; one folder per family.

GENERATORS is the one list of generator names: config.yaml's generator.model, the CLI's --model, the tools and the
ONNX export registry all read it. Adding a family is one folder with a FAMILY (generators.base.GeneratorFamily)
and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from avatarcam.errors import ConfigError
from avatarcam.generators import fomm, liveportrait, mesh, swap
from avatarcam.generators.base import GeneratorFamily, GeneratorSections, Reenactor
from avatarcam.paths import ENGINES_DIR

GENERATORS: dict[str, GeneratorFamily] = {
    "mesh": mesh.FAMILY,
    "fomm": fomm.FAMILY,
    "liveportrait": liveportrait.FAMILY,
    "swap": swap.FAMILY,
}
"""Generator name -> family, in the order the documentation lists them."""

EXPORTABLE_MODELS: dict[str, Any] = {name: ref for f in GENERATORS.values() for name, ref in f.exports.items()}
"""Every model tools/export_onnx.py can export: name -> "module:function" (or, in tests, a factory)."""


def family(name: str) -> GeneratorFamily:
    """The registered family called `name`; ConfigError listing the registered names otherwise."""
    if name not in GENERATORS:
        raise ConfigError(f"generator.model {name!r} is not one of {', '.join(GENERATORS)}: choose one of them "
                          "(a new family is a folder in avatarcam/generators/ and one line in GENERATORS)")
    return GENERATORS[name]


def output_shape(reenactor: Reenactor[Any, Any], frame_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """The (H, W, 3) shape of `reenactor`'s output for a driver frame of `frame_shape` ((H, W, ...)): the square
    canvas, or the frame's own size for a draws_on_frame family (the square canvas while no frame is known)."""
    if family(reenactor.name).draws_on_frame and frame_shape is not None:
        return int(frame_shape[0]), int(frame_shape[1]), 3
    return reenactor.canvas_size, reenactor.canvas_size, 3


def landmark_faces(generator: Any) -> int:
    """How many faces the landmarker looks for: generator.swap_max_faces for a multi_face family, else 1."""
    return int(generator.swap_max_faces) if family(generator.model).multi_face else 1


def build_reenactor(generator: Any, motion: Any) -> Reenactor[Any, Any]:
    """The reenactor chosen by generator.model, built from config's `generator` and `motion` sections."""
    return family(generator.model).build(GeneratorSections(generator=generator, motion=motion))


def load_recipe(name: str, *, registry: Mapping[str, Any] | None = None) -> Any:
    """backends.models.load_recipe over EXPORTABLE_MODELS (or `registry`): the ExportRecipe registered as name."""
    from avatarcam.backends.models import load_recipe as load

    return load(name, registry=EXPORTABLE_MODELS if registry is None else registry)


def export_registered(name: str, *, out_dir: Path | str = ENGINES_DIR, registry: Mapping[str, Any] | None = None,
                      seed: int = 0) -> Any:
    """backends.models.export_registered over EXPORTABLE_MODELS: export and verify one model; (exported, errors)."""
    from avatarcam.backends.models import export_registered as export

    return export(name, out_dir=out_dir, registry=EXPORTABLE_MODELS if registry is None else registry, seed=seed)


def model_spec(name: str, *, registry: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """backends.models.model_spec over EXPORTABLE_MODELS: a ModelSpec (engines_dir, cpu_runtime, precision, ...)."""
    from avatarcam.backends.models import model_spec as spec

    return spec(name, registry=EXPORTABLE_MODELS if registry is None else registry, **options)


__all__ = ["EXPORTABLE_MODELS", "GENERATORS", "GeneratorFamily", "GeneratorSections", "Reenactor", "build_reenactor",
           "export_registered", "family", "landmark_faces", "load_recipe", "model_spec", "output_shape"]
