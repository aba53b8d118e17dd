"""Run the original FOMM code from the user's own checkout of AliaksandrSiarohin/first-order-model (tools only).

FaceMimic ships no FOMM code. Tools that compare against the original (`tools/bench_fomm.py --original`,
`tools/make_fomm_parity256.py`) import it from a checkout the user points at:

- `modules/keypoint_detector.py`, `modules/generator.py` (and what they import: `modules/util.py`,
  `modules/dense_motion.py`, `sync_batchnorm/`) need only torch and numpy;
- `normalize_kp` lives in `animate.py`, which also imports the training pipeline (imageio, torchvision, ...).
  Only that one function is taken: its source is read from `animate.py` and run unchanged with the names it uses
  (torch, numpy, scipy's ConvexHull), so no training dependency is needed.

Avatarify's fork (alievk/first-order-model) adds `modules/generator_optim.py`, whose generator encodes the source once
(`encode_source`) and reuses it per frame; `load_original` uses it when the checkout has it and says so.
"""

from __future__ import annotations

import ast
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OriginalFomm:
    """The original code's classes and functions, imported from a checkout."""

    checkout: Path
    KPDetector: Any
    OcclusionAwareGenerator: Any
    normalize_kp: Any
    caches_source: bool
    """True for Avatarify's generator_optim (source encoded once per avatar), False for upstream's generator."""


def _normalize_kp_from(animate_py: Path) -> Any:
    """normalize_kp, compiled from animate.py's own source with only the names it uses."""
    import numpy as np
    import torch
    from scipy.spatial import ConvexHull

    tree = ast.parse(animate_py.read_text(encoding="utf-8"), filename=str(animate_py))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "normalize_kp":
            namespace: dict[str, Any] = {"torch": torch, "np": np, "ConvexHull": ConvexHull}
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(animate_py), "exec"), namespace)  # noqa: S102
            return namespace["normalize_kp"]
    raise SystemExit(f"{animate_py} has no normalize_kp function: is this a first-order-model checkout?")


def load_original(checkout: Path | str, *, prefer_optim: bool = True) -> OriginalFomm:
    """Import the original modules from `checkout` (its folder is put first on sys.path)."""
    checkout = Path(checkout).expanduser().resolve()
    needed = [checkout / "modules" / "keypoint_detector.py", checkout / "modules" / "generator.py",
              checkout / "sync_batchnorm" / "__init__.py", checkout / "animate.py"]
    missing = [str(p.relative_to(checkout)) for p in needed if not p.is_file()]
    if missing:
        raise SystemExit(
            f"{checkout} is not a first-order-model checkout: missing {', '.join(missing)}; clone "
            f"https://github.com/AliaksandrSiarohin/first-order-model (or Avatarify's fork) and pass its folder"
        )
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    kp_module = importlib.import_module("modules.keypoint_detector")
    optim = prefer_optim and (checkout / "modules" / "generator_optim.py").is_file()
    gen_module = importlib.import_module("modules.generator_optim" if optim else "modules.generator")
    return OriginalFomm(
        checkout=checkout,
        KPDetector=kp_module.KPDetector,
        OcclusionAwareGenerator=gen_module.OcclusionAwareGenerator,
        normalize_kp=_normalize_kp_from(checkout / "animate.py"),
        caches_source=optim,
    )


def build_original(original: OriginalFomm, model_params: dict, state: dict) -> tuple[Any, Any]:
    """(kp_detector, generator) of the original code for FOMM `model_params`, state dicts loaded strictly, eval mode.

    This is what FOMM's `demo.load_checkpoints(..., cpu=True)` and Avatarify's `PredictorLocal.load_checkpoints` do.
    """
    common = model_params["common_params"]
    generator = original.OcclusionAwareGenerator(**model_params["generator_params"], **common)
    kp_detector = original.KPDetector(**model_params["kp_detector_params"], **common)
    generator.load_state_dict(state["generator"])
    kp_detector.load_state_dict(state["kp_detector"])
    return kp_detector.eval(), generator.eval()
