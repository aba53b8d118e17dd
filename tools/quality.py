"""Render driver clips onto avatars and report how the output follows the driver (the numbers in the README).

    python tools/quality.py [--driver D.mp4 ...] [--avatar IMG ...] [--json OUT.json] [--independent]

The landmark detector (MediaPipe) reads driver and output and the correlations are printed. MediaPipe is also the
model that drove the warp, so it flatters the output: `--independent` adds dlib's 68-point reading of both
(concordance and gain of mouth, eyes, head turn and nod; needs `dlib-bin` and `face-recognition-models`, which
`python tools/install.py --dev` installs). The README's table comes from ../shared/judge/judge.py.
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
from avatarcam.quality import IndependentReader, compare, concordance, frame_jumps, gain, video_signals

ROOT = Path(__file__).resolve().parent.parent

FIXTURES = ROOT / "tests" / "fixtures"


def independent(driver: Path, output: Path, reader: IndependentReader) -> dict:
    """Concordance and gain of dlib's mouth, eye, turn and nod signals of the output against the driver's."""
    d, o = reader.signals(iter_frames(str(driver))), reader.signals(iter_frames(str(output)))
    pairs = {"mouth": (d.mouth, o.mouth), "eyes": (d.eyes.mean(1), o.eyes.mean(1)), "turn": (d.turn, o.turn),
             "nod": (d.nod, o.nod)}
    result = {}
    for name, (a, b) in pairs.items():
        result[f"independent_{name}_ccc"] = concordance(a, b)
        result[f"independent_{name}_gain"] = gain(a, b)
    return result


def measure(driver: Path, avatar_path: Path, workdir: Path, config=None,
            reader: IndependentReader | None = None) -> dict:
    """Render one pair and return its quality numbers (and dlib's, when a reader is given)."""
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
    if reader is not None:
        result.update(independent(driver, out, reader))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", action="append", type=Path)
    parser.add_argument("--avatar", action="append", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--independent", action="store_true", help="also read driver and output with dlib")
    args = parser.parse_args()
    reader = IndependentReader() if args.independent else None
    drivers = args.driver or sorted((FIXTURES / "driving").glob("*.mp4"))
    avatars = args.avatar or sorted((FIXTURES / "source").glob("*.*"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for driver in drivers:
            for avatar in avatars:
                rows.append(measure(driver, avatar, Path(tmp), reader=reader))
                r = rows[-1]
                print(f"{r['driver']:>8} -> {r['avatar']:<14} mouth {r['mouth_corr']:.3f}  eyes {r['eyes_corr']:.3f}  "
                      f"yaw {r['yaw_corr']:.3f}  pitch {r['pitch_corr']:.3f}  faces {r['output_faces']}/"
                      f"{r['frames']}  max jump {r['max_jump_output']:.1f} (driver {r['max_jump_driver']:.1f})",
                      flush=True)
                if reader is not None:
                    print("          dlib (concordance/gain): " + "  ".join(
                        f"{k} {r[f'independent_{k}_ccc']:.3f}/{r[f'independent_{k}_gain']:.2f}"
                        for k in ("mouth", "eyes", "turn", "nod")), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
