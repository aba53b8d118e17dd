"""Write a Triton Inference Server model repository for one checkpoint (run it on the GPU machine).

    python tools/export_triton.py --model fomm --checkpoint ~/avatarify/vox-adv-cpk.pth.tar --repository triton-models
    python tools/export_triton.py --model liveportrait --checkpoint pretrained_weights/liveportrait
    tritonserver --model-repository triton-models ...        (the full, secured command is in the README)

Every graph becomes the model `<graph>-<weights key>` (version 1) with its config.pbtxt, so one repository holds
several checkpoints; the client derives the same names from its own copy of the checkpoint. --format plan builds
TensorRT plans with this machine's TensorRT (the server's TensorRT must be the same version); onnx (default) is
served by Triton's ONNX Runtime backend on any GPU or CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from avatarcam.backends.triton_repository import FORMATS, KINDS
from avatarcam.errors import FaceMimicError
from avatarcam.generators.common.triton_export import FAMILIES, export_graphs, write_repository
from avatarcam.paths import ENGINES_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=FAMILIES)
    parser.add_argument("--checkpoint", required=True, help="FOMM .pth.tar, or the LivePortrait weights folder")
    parser.add_argument("--repository", default="triton-models", help="model repository folder (default: %(default)s)")
    parser.add_argument("--format", default="onnx", choices=sorted(FORMATS), help="graph format (default: onnx)")
    parser.add_argument("--kind", default="gpu", choices=KINDS, help="instance kind in config.pbtxt (default: gpu)")
    parser.add_argument("--instances", type=int, default=1, help="model instances per graph (concurrent clients)")
    parser.add_argument("--size", type=int, default=None, help="FOMM input size (default: 256, as FOMM's demo)")
    parser.add_argument("--engines-dir", default=None,
                        help=f"where the ONNX exports are cached (default: {ENGINES_DIR}; 'tmp' for a throw-away one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        engines = Path(tmp) if args.engines_dir == "tmp" else Path(args.engines_dir or ENGINES_DIR)
        try:
            graphs = export_graphs(args.model, args.checkpoint, engines_dir=engines, image_size=args.size,
                                   log_line=print)
            models = write_repository(graphs, args.repository, fmt=args.format, kind=args.kind,
                                      instances=args.instances, log_line=print)
        except FaceMimicError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"wrote {len(models)} models (weights key {graphs.key}) into {Path(args.repository).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
