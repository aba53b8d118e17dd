#!/usr/bin/env python3
"""Export registered models to engines/NAME.onnx + engines/NAME.json and verify each against torch on ONNX Runtime CPU.

    python tools/export_onnx.py                      # every model in avatarcam.generators.EXPORTABLE_MODELS
    python tools/export_onnx.py --model mesh_warp --out engines/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from avatarcam.errors import FaceMimicError
from avatarcam.paths import ENGINES_DIR

ROOT = Path(__file__).resolve().parents[1]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", metavar="NAME", help="model to export (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=ENGINES_DIR, help="output directory (default: engines/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    parser.add_argument("--list", action="store_true", help="list the registered models and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, registry: Mapping[str, object] | None = None) -> int:
    """Export and verify; returns the process exit code (0 ok, 1 a model failed or none is registered)."""
    args = _parse(argv)
    from avatarcam.generators import EXPORTABLE_MODELS, export_registered

    models = EXPORTABLE_MODELS if registry is None else registry
    if args.list:
        for name in sorted(models):
            print(name)
        return 0
    names = args.model or sorted(models)
    if not names:
        print(
            "export_onnx: no models are registered: add a model to a generator family's `exports` (avatarcam/generators/<family>/__init__.py)",
            file=sys.stderr,
        )
        return 1
    failures = 0
    for name in names:
        try:
            exported, errors = export_registered(
                name, out_dir=args.out, registry=models, seed=args.seed  # type: ignore[arg-type]
            )
        except FaceMimicError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failures += 1
            continue
        worst = max(errors.values(), default=0.0)
        detail = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
        print(
            f"{name}: wrote {exported.onnx_path} + {exported.sidecar_path.name} (opset {exported.opset}, "
            f"IR {exported.ir_version}); max abs error vs torch on ONNX Runtime CPU: {worst:.2e} ({detail})"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
