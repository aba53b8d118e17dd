"""Brow motion of an output video against its driver, read by the independent judge's dlib landmarks (a diagnostic).

    ~/.venvs/judge/bin/python tools/judge_brows.py --driving D.mp4 --output O.mp4 [--cache-dir DIR] [--judge PATH]

The judge (../shared/judge/judge.py) scores mouth, eyes and head pose but not the brows. This reads both videos with
the judge's own analysis (its `analyze_video`: dlib HOG detector and 68-point landmarks, cached by file content in
--cache-dir) and scores the brow height the way the judge scores its signals: per frame, the mean height of each
brow's five points (iBUG 17-21, 22-26) above the line through that eye's corners (36-39, 42-45), measured across
the eyes' axis and divided by the distance between the eye-corner midpoints, so head roll, size and position in the
frame do not count. Prints JSON: `brow_ccc`, `brow_corr`, `brow_gain` (both brows' mean height: raised brows and
frowns) and `brow_asym_ccc`, `brow_asym_gain` (right minus left: one brow raised), with the driver's standard
deviations; a signal whose driver std is under MIN_DRIVER_STD has null scores, as in the judge.

Runs in the judge's environment (dlib, OpenCV, numpy), not the project's: `tools/judge_pairs.py --brows` calls it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

RIGHT_BROW, LEFT_BROW = list(range(17, 22)), list(range(22, 27))
RIGHT_CORNERS, LEFT_CORNERS = [36, 39], [42, 45]
MIN_DRIVER_STD = 0.005
"""Brow height std (in eye distances) below which the driver's brows hardly move (dlib's frame-to-frame noise on a
still face is about 0.003-0.005)."""


def brow_heights(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) dlib landmarks (NaN where no face) -> (T, 2) right and left brow heights in eye distances."""
    right_eye = landmarks[:, RIGHT_CORNERS].mean(1)
    left_eye = landmarks[:, LEFT_CORNERS].mean(1)
    axis = left_eye - right_eye
    eye_distance = np.linalg.norm(axis, axis=1)
    axis = axis / np.maximum(eye_distance, 1e-6)[:, None]
    up = np.stack([axis[:, 1], -axis[:, 0]], 1)  # image y grows downwards: this points up the face
    heights = []
    for brow, eye in ((RIGHT_BROW, right_eye), (LEFT_BROW, left_eye)):
        rel = landmarks[:, brow] - eye[:, None, :]
        heights.append((rel * up[:, None, :]).sum(-1).mean(1) / np.maximum(eye_distance, 1e-6))
    return np.stack(heights, 1)


def load_judge(path: Path):
    spec = importlib.util.spec_from_file_location("facemimic_judge", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the judge from {path}: pass --judge PATH/judge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score(judge, driver: np.ndarray, output: np.ndarray, prefix: str) -> dict:
    """The judge's correlation, gain and concordance of one per-frame signal (driver, output: (T,), NaN allowed)."""
    std = float(np.nanstd(driver)) if np.isfinite(driver).sum() > 1 else 0.0
    out = {f"{prefix}_driver_std": round(std, 4)}
    informative = std >= MIN_DRIVER_STD
    for name, fn in (("corr", judge._corr), ("gain", judge._gain), ("ccc", judge._ccc)):
        value = fn(driver, output) if informative else None
        out[f"{prefix}_{name}"] = None if value is None else round(float(value), 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driving", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--cache-dir", help="the judge's analysis cache (keyed by file content)")
    parser.add_argument("--judge", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "judge"
                        / "judge.py")
    args = parser.parse_args()
    judge = load_judge(args.judge)
    analyzer = judge.FaceAnalyzer()
    driver = judge.analyze_video(analyzer, args.driving, cache_dir=args.cache_dir)
    output = judge.analyze_video(analyzer, args.output, cache_dir=args.cache_dir)
    n = min(len(driver["landmarks"]), len(output["landmarks"]))
    d, o = brow_heights(driver["landmarks"][:n]), brow_heights(output["landmarks"][:n])
    result = {**score(judge, d.mean(1), o.mean(1), "brow"), **score(judge, d[:, 0] - d[:, 1], o[:, 0] - o[:, 1],
                                                                      "brow_asym")}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
