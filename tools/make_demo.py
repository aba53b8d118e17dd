"""Render the README's demo picture: a fixture driver next to two shipped avatars, as an animated GIF.

    python tools/make_demo.py [--out avatarcam/samples/demo.gif]

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
from avatarcam.generators import build_reenactor
from avatarcam.landmarks import FaceLandmarker, landmark_model_path
from avatarcam.offline import render_video

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", type=Path, default=ROOT / "tests" / "fixtures" / "driving" / "d12.mp4")
    parser.add_argument("--avatars", type=Path, nargs="+",
                        default=[ROOT / "avatars" / "astronaut.png", ROOT / "avatars" / "astronaut_painting.png"])
    parser.add_argument("--out", type=Path, default=ROOT / "avatarcam" / "samples" / "demo.gif")
    parser.add_argument("--tile", type=int, default=160, help="side of each tile in pixels")
    parser.add_argument("--step", type=int, default=3, help="keep every Nth frame")
    parser.add_argument("--first", type=int, default=100, help="first driver frame shown")
    args = parser.parse_args()
    from PIL import Image

    config = load_config(None)
    model_path = landmark_model_path(config)
    columns = [[cv2.resize(f, (args.tile, args.tile), interpolation=cv2.INTER_AREA)
                for f in iter_frames(str(args.driver))]]
    with tempfile.TemporaryDirectory() as tmp:
        for avatar_path in args.avatars:
            reenactor = build_reenactor(config.generator, config.motion)
            with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
                avatar = load_avatar(avatar_path, landmarker, reenactor.canvas_size)
            out = Path(tmp) / f"{avatar_path.stem}.avi"
            render_video(str(args.driver), avatar, reenactor.prepare(avatar), reenactor, out, model_path=model_path,
                         progress=False)
            columns.append([cv2.resize(f, (args.tile, args.tile), interpolation=cv2.INTER_AREA)
                            for f in iter_frames(str(out))])
    frames = [Image.fromarray(cv2.cvtColor(np.hstack(row), cv2.COLOR_BGR2RGB)).quantize(colors=96)
              for row in list(zip(*columns))[args.first::args.step]]
    frames[0].save(args.out, save_all=True, append_images=frames[1:], duration=int(1000 * args.step / 25), loop=0,
                   optimize=True)
    print(f"wrote {args.out} ({len(frames)} frames, {args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
