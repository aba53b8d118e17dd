"""Render the README's demo picture: fixture drivers next to two shipped avatars, as an animated GIF.

    python tools/make_demo.py [--out avatarcam/samples/demo.gif] [--segment CLIP:FIRST:LAST ...]
    python tools/make_demo.py --model swap        # face-swap mode -> avatarcam/samples/demo-swap.gif

The default segments show a blink and closed eyes (d14), head turns (d12) and a wide-open mouth (d12); each clip
is rendered whole with its frame 0 as the neutral pose, as `tools/render.py` does.

Needs Pillow (installed with the test requirements) to write the GIF.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from avatarcam.avatars import load_avatar
from avatarcam.capture import iter_frames
from avatarcam.config import load_config
from avatarcam.generators import GENERATORS, build_reenactor, landmark_faces
from avatarcam.landmarks import FaceLandmarker, landmark_model_path
from avatarcam.offline import render_video

ROOT = Path(__file__).resolve().parent.parent


FIXTURE_DRIVING = ROOT / "tests" / "fixtures" / "driving"
DEFAULT_SEGMENTS = ("d14:96:150", "d12:30:95", "d12:112:135")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segment", action="append", metavar="CLIP:FIRST:LAST",
                        help=f"driver clip (a name in tests/fixtures/driving or a path) and frame range to show; "
                             f"default {' '.join(DEFAULT_SEGMENTS)}")
    parser.add_argument("--avatars", type=Path, nargs="+",
                        default=[ROOT / "avatars" / "astronaut.png", ROOT / "avatars" / "astronaut_painting.png"])
    parser.add_argument("--out", type=Path, help="default avatarcam/samples/demo.gif (demo-<model>.gif for another "
                        "--model)")
    parser.add_argument("--model", choices=tuple(GENERATORS), default="mesh", help="generator to show")
    parser.add_argument("--tile", type=int, default=160, help="side of each tile in pixels")
    parser.add_argument("--step", type=int, default=3, help="keep every Nth frame")
    args = parser.parse_args()
    from PIL import Image

    segments = []
    for text in args.segment or DEFAULT_SEGMENTS:
        try:
            clip, first, last = text.rsplit(":", 2)
            segments.append((clip, int(first), int(last)))
        except ValueError:
            parser.error(f"--segment {text!r} is not CLIP:FIRST:LAST, e.g. d12:30:95")
    config = load_config(None, {"generator.model": args.model})
    if args.out is None:
        name = "demo.gif" if args.model == "mesh" else f"demo-{args.model}.gif"
        args.out = ROOT / "avatarcam" / "samples" / name
    model_path = landmark_model_path(config)
    tile = lambda f: cv2.resize(f, (args.tile, args.tile), interpolation=cv2.INTER_AREA)  # noqa: E731
    rendered: dict[str, list[list[np.ndarray]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for clip in dict.fromkeys(c for c, _, _ in segments):
            driver = FIXTURE_DRIVING / f"{clip}.mp4" if "/" not in clip and not clip.endswith(".mp4") else Path(clip)
            columns = [[tile(f) for f in iter_frames(str(driver))]]
            for avatar_path in args.avatars:
                reenactor = build_reenactor(config.generator, config.motion)
                with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
                    avatar = load_avatar(avatar_path, landmarker, reenactor.canvas_size)
                out = Path(tmp) / f"{driver.stem}-{avatar_path.stem}.avi"
                render_video(str(driver), avatar, reenactor.prepare(avatar), reenactor, out, model_path=model_path,
                             progress=False, num_faces=landmark_faces(config.generator))
                columns.append([tile(f) for f in iter_frames(str(out))])
            rendered[clip] = columns
    rows = [np.hstack([column[t] for column in rendered[clip]])
            for clip, first, last in segments for t in range(first, last + 1, args.step)]
    frames = [Image.fromarray(cv2.cvtColor(row, cv2.COLOR_BGR2RGB)).quantize(colors=96) for row in rows]
    frames[0].save(args.out, save_all=True, append_images=frames[1:], duration=int(1000 * args.step / 25), loop=0,
                   optimize=True)
    print(f"wrote {args.out} ({len(frames)} frames, {args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
