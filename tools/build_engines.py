#!/usr/bin/env python3
"""Build TensorRT engines for the exported models in engines/ (GPU machines with TensorRT 10 or 11 only).

    python tools/build_engines.py                         # every engines/*.onnx, fp16
    python tools/build_engines.py --precision fp32 --model fomm_generator
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avatarcam.backends.engine_cache import (
    DEFAULT_WORKSPACE_BYTES,
    PRECISIONS,
    TENSORRT_INSTALL_HINT,
    ensure_engine,
)
from avatarcam.backends.hardware import HardwareFacts, detect_hardware
from avatarcam.backends.tensorrt_builder import StatusLine
from avatarcam.errors import FaceMimicError
from avatarcam.paths import ENGINES_DIR

ROOT = Path(__file__).resolve().parents[1]

EXIT_OK, EXIT_FAILED, EXIT_NO_TENSORRT = 0, 1, 2


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16", help="engine precision (default: fp16)")
    parser.add_argument("--model", action="append", metavar="NAME", help="model to build (repeatable; default: all)")
    parser.add_argument("--engines", type=Path, default=ENGINES_DIR, help="directory of NAME.onnx files")
    parser.add_argument("--force", action="store_true", help="rebuild even when a matching engine exists")
    parser.add_argument(
        "--workspace-mib", type=int, default=DEFAULT_WORKSPACE_BYTES >> 20, help="TensorRT workspace limit in MiB"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, hardware: HardwareFacts | None = None) -> int:
    """Build engines; returns the exit code (0 ok, 1 a build failed, 2 no TensorRT or no GPU here)."""
    args = _parse(argv)
    hw = detect_hardware() if hardware is None else hardware
    if hw.tensorrt_version is None:
        print(
            f"build_engines: TensorRT is not installed, so no engines can be built here: {TENSORRT_INSTALL_HINT}. "
            f"Without it FaceMimic runs ONNX Runtime or torch and needs no engines.",
            file=sys.stderr,
        )
        return EXIT_NO_TENSORRT
    if not hw.cuda_available:
        print(
            f"build_engines: TensorRT {hw.tensorrt_version} is installed but no CUDA GPU was found: engines are built "
            f"on the GPU that will run them; check `nvidia-smi` and the NVIDIA driver",
            file=sys.stderr,
        )
        return EXIT_NO_TENSORRT
    engines_dir: Path = args.engines
    # NAME.fp16.onnx files are the fp16 graphs derived from NAME.onnx (avatarcam.backends.onnx_fp16), not exports.
    found = sorted(p for p in engines_dir.glob("*.onnx") if not p.name.endswith(".fp16.onnx"))
    paths = [engines_dir / f"{n}.onnx" for n in args.model] if args.model else found
    if not paths:
        print(
            f"build_engines: no exported models in {engines_dir}: run `python tools/export_onnx.py` first",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"build_engines: {hw.summary()}")
    failures = 0
    for path in paths:
        try:
            plan = ensure_engine(
                path,
                args.precision,
                hw,
                print,
                engines_dir=engines_dir,
                force=args.force,
                workspace_bytes=args.workspace_mib << 20,
                progress=StatusLine(sys.stderr),
            )
        except FaceMimicError as exc:
            print(f"{path.stem}: FAILED: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path.stem}: {plan}")
    return EXIT_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
