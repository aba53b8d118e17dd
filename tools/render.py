"""Render a driving video onto an avatar offline, frame-aligned: output frame t comes from driver frame t.

    python tools/render.py --driver DRIVER.mp4 --avatar IMAGE --out OUT.mp4 [--side-by-side] [--neutral-frame N]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from avatarcam.avatars import load_avatar
from avatarcam.config import load_config, parse_override
from avatarcam.disclosure import DisclosureBadge, show_first_start_notice
from avatarcam.errors import FaceMimicError
from avatarcam.generators import GENERATORS, build_reenactor, family, landmark_faces
from avatarcam.landmarks import FaceLandmarker, landmark_model_path
from avatarcam.offline import render_video
from avatarcam.paths import DEFAULT_CONFIG


def avatar_path(value: str, config) -> Path:
    """--avatar as an image path, or as the name of a picture in the avatars folder (as run.py --avatar takes it)."""
    path = Path(value).expanduser()
    if path.is_file() or path.suffix or "/" in value or "\\" in value:
        return path
    from avatarcam.avatars import scan_folder
    from avatarcam.paths import project_path

    folder = project_path(config.avatars.folder)
    named = [p for p in (scan_folder(folder) if folder is not None and folder.is_dir() else []) if p.stem == value]
    return named[0] if named else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", required=True, help="driving video file")
    parser.add_argument("--avatar", required=True, help="avatar image, or the name of one in the avatars folder")
    parser.add_argument("--out", required=True, help="output video (.mp4, .avi, or .mkv for lossless FFV1)")
    parser.add_argument("--neutral-frame", type=int, default=0, help="driver frame taken as the neutral pose")
    parser.add_argument("--side-by-side", action="store_true", help="driver and avatar next to each other")
    parser.add_argument("--model", choices=tuple(GENERATORS), help="generator (default: config.yaml)")
    parser.add_argument("--checkpoint",
                        help="FOMM checkpoint or LivePortrait weights folder (with --model fomm or liveportrait)")
    parser.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    parser.add_argument("--no-crop", action="store_true",
                        help="FOMM: use frames and avatar as given, resized to the model size (256 unless --fomm-size)")
    parser.add_argument("--fomm-size", type=int, help="FOMM: model input size in pixels (default 256)")
    parser.add_argument("--fomm-config", help="FOMM: its own YAML, e.g. first-order-model/config/vox-adv-256.yaml")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="FaceMimic's config.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    overrides = dict(parse_override(item) for item in args.set)
    for key, value in (("generator.model", args.model), ("generator.checkpoint", args.checkpoint),
                       ("generator.backend", args.backend), ("generator.fomm_size", args.fomm_size),
                       ("generator.fomm_config", args.fomm_config)):
        if value is not None:
            overrides[key] = value
    if args.no_crop:
        overrides["generator.crop"] = False
    try:
        if args.neutral_frame < 0:
            raise FaceMimicError(f"--neutral-frame {args.neutral_frame} is negative: give a frame number from 0")
        config = load_config(args.config, overrides)
        model_path = landmark_model_path(config)
        reenactor = build_reenactor(config.generator, config.motion)
        with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
            avatar = load_avatar(avatar_path(args.avatar, config), landmarker, reenactor.canvas_size)
        prepared = reenactor.prepare(avatar)
        show_first_start_notice()
        badge = DisclosureBadge.for_output(config.output.badge, family(config.generator.model).draws_on_frame)
        report = render_video(args.driver, avatar, prepared, reenactor, Path(args.out), model_path=model_path,
                              neutral_frame=args.neutral_frame, sbs=args.side_by_side, progress=not args.quiet,
                              num_faces=landmark_faces(config.generator), stamp=badge.stamp)
    except FaceMimicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report.out_path}: {report.frames} frames at {report.fps:g} fps, face found in "
          f"{report.faces_found}, {report.frames / max(report.seconds, 1e-6):.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
