"""Render driver/avatar pairs with the built-in generator and score them with the independent judge, in one command.

    python tools/judge_pairs.py [--model swap] [--pair DRIVER:AVATAR ...] [--out-dir out/judge] [--json OUT.json]
                                [--set K=V ...] [--brows]

Each pair is rendered with `tools/render.py` (frame-aligned, neutral at frame 0, config.yaml's generator unless
--model, default settings unless --set) and read by the independent judge, `../shared/judge/judge.py` (dlib landmarks and embeddings, no MediaPipe; see its
README), which runs in its own environment (`--judge-python`, default ~/.venvs/judge/bin/python when present).
Prints one row per pair and the median row: the README's quality table.

A DRIVER is a clip name in the fixture folders (d12) or a path; an AVATAR is a file name in the fixture folders or
avatars/ (lp_s42.jpg, astronaut_painting.png) or a path. `NAME_flip` is that avatar mirrored left to right (written
into --out-dir), a portrait the generator has not seen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FOLDERS = (ROOT / "tests" / "fixtures" / "driving", ROOT / "tests" / "fixtures" / "source", ROOT / "avatars",
           SHARED / "fixtures" / "driving", SHARED / "fixtures" / "source")
DEFAULT_PAIRS = ("d12:lp_s42.jpg", "d12:lp_s7.jpg", "d14:astronaut_painting.png", "d14:lp_s4.jpg",
                 "d9:astronaut.png", "d19:lp_s42_flip.jpg")
SWAP_PAIRS = ("d12:lp_s42.jpg", "d14:lp_s42.jpg", "d12:astronaut.png", "d14:lp_s4.jpg", "d9:lp_s7.jpg",
              "d19:lp_s10.jpg", "d9:lp_s42_flip.jpg")
"""--model swap's default pairs (the README's face-swap table)."""
COLUMNS = (("motion", "motion_score"), ("eyes", "ear_ccc"), ("eye_g", "ear_gain"), ("mouth", "mouth_ccc"),
           ("mouth_g", "mouth_gain"), ("yaw", "yaw_ccc"), ("yaw_g", "yaw_gain"), ("pitch", "pitch_ccc"),
           ("pitch_g", "pitch_gain"), ("roll_g", "roll_gain"), ("pose", "pose_mae_ratio"), ("lag", "best_lag_frames"),
           ("id", "identity_dist"), ("id_to_d", "identity_dist_to_driver"), ("id_drv", "driver_to_source_dist"))

BROW_COLUMNS = (("brow", "brow_ccc"), ("brow_r", "brow_corr"), ("brow_g", "brow_gain"), ("asym", "brow_asym_ccc"),
                ("asym_g", "brow_asym_gain"), ("brow_sd", "brow_driver_std"))
"""--brows: concordance, correlation and gain of brow height and of the brows' difference (tools/judge_brows.py)."""


def find(name: str, suffixes: tuple[str, ...] = ("",)) -> Path:
    """A path as given, or the first file of that name (with one of the suffixes) in the fixture folders."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for folder in FOLDERS:
        for suffix in suffixes:
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    raise SystemExit(f"{name!r} is neither a file nor a name in {', '.join(str(f) for f in FOLDERS)}")


def avatar_file(name: str, out_dir: Path) -> Path:
    """The avatar image; `X_flip.ext` is X.ext mirrored left to right, written into out_dir."""
    stem, dot, ext = name.rpartition(".")
    if stem.endswith("_flip"):
        original = find(stem[: -len("_flip")] + dot + ext)
        flipped = out_dir / name
        cv2.imwrite(str(flipped), cv2.flip(cv2.imread(str(original)), 1))
        return flipped
    return find(name)


def default_judge_python() -> str:
    venv = Path.home() / ".venvs" / "judge" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def run_pair(pair: str, args: argparse.Namespace) -> dict:
    """Render one DRIVER:AVATAR pair and return the judge's metrics."""
    driver_name, avatar_name = pair.split(":", 1)
    driver = find(driver_name, ("", ".mp4"))
    avatar = avatar_file(avatar_name, args.out_dir)
    tag = f"{driver.stem}-{Path(avatar_name).stem}"
    video, report = args.out_dir / f"{tag}.mp4", args.out_dir / f"{tag}.judge.json"
    render = [sys.executable, str(ROOT / "tools" / "render.py"), "--driver", str(driver), "--avatar", str(avatar),
              "--out", str(video), "--quiet"] + [x for item in args.set for x in ("--set", item)]
    if args.model:
        render += ["--model", args.model]
    if not args.judge_only:
        subprocess.run(render, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([args.judge_python, str(args.judge), "--driving", str(driver), "--output", str(video),
                    "--source", str(avatar), "--json", str(report), "--cache-dir", str(args.out_dir / "cache"),
                    "--quiet"], check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads(report.read_text())["metrics"]
    if args.brows:
        brows = subprocess.run([args.judge_python, str(ROOT / "tools" / "judge_brows.py"), "--driving", str(driver),
                                "--output", str(video), "--judge", str(args.judge), "--cache-dir",
                                str(args.out_dir / "cache")], check=True, capture_output=True, text=True)
        metrics.update(json.loads(brows.stdout.strip().splitlines()[-1]))
    return {"pair": f"{driver.stem}->{Path(avatar_name).stem}", **metrics}


def _cell(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", metavar="DRIVER:AVATAR",
                        help=f"default: {' '.join(DEFAULT_PAIRS)}; with --model swap: {' '.join(SWAP_PAIRS)}")
    parser.add_argument("--model", help="generator for render.py (default: config.yaml's)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "out" / "judge")
    parser.add_argument("--judge", type=Path, default=SHARED / "judge" / "judge.py")
    parser.add_argument("--judge-python", default=default_judge_python(),
                        help="a Python with dlib, face-recognition-models and OpenCV")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for render")
    parser.add_argument("--judge-only", action="store_true", help="judge the videos already in --out-dir")
    parser.add_argument("--json", type=Path, help="write every pair's metrics here")
    parser.add_argument("--brows", action="store_true",
                        help="also score brow height from the judge's landmarks (tools/judge_brows.py; a second "
                             "dlib pass over each output)")
    args = parser.parse_args()
    if not args.judge.is_file():
        parser.error(f"no judge at {args.judge}: the independent judge lives in the developers' shared folder "
                     "(../shared/judge beside the checkout), which a clone of FaceMimic does not include; with a copy "
                     "of it, pass --judge PATH/judge.py")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    print("pair".ljust(28) + "".join(name.rjust(8) for name, _ in COLUMNS), flush=True)
    for pair in args.pair or (SWAP_PAIRS if args.model == "swap" else DEFAULT_PAIRS):
        rows.append(run_pair(pair, args))
        print(rows[-1]["pair"].ljust(28) + "".join(_cell(rows[-1].get(k)).rjust(8) for _, k in COLUMNS), flush=True)
    medians = {}
    for _, key in COLUMNS:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        medians[key] = float(statistics.median(values)) if values else None
    print("median".ljust(28) + "".join(_cell(medians[k]).rjust(8) for _, k in COLUMNS))
    if args.brows:
        print("\n" + "pair".ljust(28) + "".join(name.rjust(8) for name, _ in BROW_COLUMNS))
        for row in rows:
            print(row["pair"].ljust(28) + "".join(_cell(row.get(k)).rjust(8) for _, k in BROW_COLUMNS))
    if args.json:
        args.json.write_text(json.dumps({"pairs": rows, "median": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
