"""Render driver clips onto avatars and report how the output follows the driver (the numbers in the README).

    python tools/quality.py [--driver D.mp4 ...] [--avatar IMG ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from avatarcam.avatars import load_avatar
from avatarcam.capture import file_info, iter_frames
from avatarcam.config import load_config
from avatarcam.generators import build_reenactor
from avatarcam.landmarks import FaceLandmarker, landmark_model_path
from avatarcam.offline import render_video
from avatarcam.quality import compare, frame_jumps, video_signals

ROOT = Path(__file__).resolve().parent.parent

FIXTURES = ROOT / "tests" / "fixtures"


def measure(driver: Path, avatar_path: Path, workdir: Path, config=None) -> dict:
    """Render one pair and return its quality numbers."""
    config = config or load_config(None)
    model_path = landmark_model_path(config)
    reenactor = build_reenactor(config.generator, config.motion)
    with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
        avatar = load_avatar(avatar_path, landmarker, reenactor.canvas_size)
    out = workdir / f"{driver.stem}-{avatar_path.stem}.mp4"
    render_video(str(driver), avatar, reenactor.prepare(avatar), reenactor, out, model_path=model_path,
                 progress=False)
    _, fps, _ = file_info(str(driver))
    report = compare(video_signals(iter_frames(str(driver)), model_path, fps),
                     video_signals(iter_frames(str(out)), model_path, fps))
    result = report.as_dict()
    result.update(driver=driver.name, avatar=avatar_path.name,
                  max_jump_output=float(frame_jumps(out).max()), max_jump_driver=float(frame_jumps(driver).max()))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", action="append", type=Path)
    parser.add_argument("--avatar", action="append", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    drivers = args.driver or sorted((FIXTURES / "driving").glob("*.mp4"))
    avatars = args.avatar or sorted((FIXTURES / "source").glob("*.*"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for driver in drivers:
            for avatar in avatars:
                rows.append(measure(driver, avatar, Path(tmp)))
                r = rows[-1]
                print(f"{r['driver']:>8} -> {r['avatar']:<14} mouth {r['mouth_corr']:.3f}  eyes {r['eyes_corr']:.3f}  "
                      f"yaw {r['yaw_corr']:.3f}  pitch {r['pitch_corr']:.3f}  faces {r['output_faces']}/"
                      f"{r['frames']}  max jump {r['max_jump_output']:.1f} (driver {r['max_jump_driver']:.1f})",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
