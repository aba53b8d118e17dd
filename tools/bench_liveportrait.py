#!/usr/bin/env python3
"""Benchmark the LivePortrait reenactor per runtime: ms per stage and per frame, avatar switch time, memory.

    python tools/bench_liveportrait.py --json OUT.json [--frames 3] [--runtimes torch onnxruntime] [--checkpoint DIR]
    python tools/bench_liveportrait.py --tiny ...     # the tiny test weights (a smoke test of the tool itself)

Without --checkpoint the networks get random weights of the published widths (keys and shapes checked against
tests/fixtures/liveportrait/keys-full.json by the model tests), so timings are the real model's without its weights.
Each runtime runs in its own process (peak RSS is per runtime) on the same avatar and driver frames; MediaPipe
landmarks are computed first and are not part of the timings. Per frame: crop (driver crop and model input),
motion_extractor, motion (relative keypoints, eye/lip retargeting MLPs, stitching MLP), generate (warping module +
SPADE generator), compose (paste into the canvas); end_to_end is the whole render() call. Per graph: the median ms
of each exported graph alone. prepare is one avatar switch (crop, appearance features, source keypoints). ONNX
export happens on first use and is reported in startup_s, not in any per-frame number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRIVER = ROOT / "tests" / "fixtures" / "driving" / "d12.mp4"
AVATAR = ROOT / "tests" / "fixtures" / "source" / "lp_s42.jpg"
TINY = ROOT / "tests" / "fixtures" / "liveportrait" / "tiny-weights"
STAGES = ("crop", "motion_extractor", "motion", "generate", "compose", "end_to_end")


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 2) if ordered else float("nan")


def _observations(frames: int):
    """MediaPipe landmarks of the avatar and of frames 0 (neutral), 40, 80, ... of the driver clip."""
    import cv2

    from avatarcam.avatars import load_avatar
    from avatarcam.landmarks import DEFAULT_MODEL_PATH, FaceLandmarker
    from avatarcam.types import Frame, Observed

    landmarker = FaceLandmarker(model_path=DEFAULT_MODEL_PATH, mode="image")
    try:
        avatar = load_avatar(AVATAR, landmarker, 512)
        cap = cv2.VideoCapture(str(DRIVER))
        observed, index = [], 0
        wanted = {40 * i for i in range(frames + 1)}
        while len(observed) < len(wanted):
            ok, image = cap.read()
            if not ok:
                break
            if index in wanted:
                observed.append(Observed(frame=Frame(image, index, index / 25), face=landmarker.detect(image)))
            index += 1
        cap.release()
    finally:
        landmarker.close()
    return avatar, observed


def run_child(runtime: str, frames: int, checkpoint: str | None, tiny: bool, threads: int) -> dict:
    """One runtime in this process: returns the result row."""
    import numpy as np
    import torch

    from avatarcam.generators.liveportrait import export as lx
    from avatarcam.generators.liveportrait.reenactor import (
        LivePortraitReenactor,
        LivePortraitSettings,
        random_full_size_models,
    )

    torch.set_num_threads(threads)
    rss0 = _rss_mb()
    avatar, observed = _observations(frames)
    start = time.perf_counter()
    if checkpoint or tiny:
        from avatarcam.generators.liveportrait.checkpoint import load_liveportrait

        models = load_liveportrait(checkpoint or TINY)
    else:
        models = random_full_size_models(seed=0)
    load_s = time.perf_counter() - start
    rss_loaded = _rss_mb()
    feeds = {name: lx.sample_inputs(models, name, np.random.default_rng(0)) for name in lx.GRAPH_NAMES}
    engines = Path(tempfile.mkdtemp(prefix="lp-bench-"))
    start = time.perf_counter()
    folder = checkpoint or (TINY if tiny else Path("random-full-size"))
    settings = LivePortraitSettings(checkpoint=Path(folder), backend=runtime, engines_dir=engines)
    reenactor = LivePortraitReenactor(settings=settings, models=models)
    del models  # the reenactor keeps what its runtimes need (torch modules only for the torch runtime)
    startup_s = time.perf_counter() - start
    try:
        return _measure(reenactor, avatar, observed, feeds, frames, threads, tiny, checkpoint, extra={
            "load_s": round(load_s, 2), "startup_s": round(startup_s, 2), "rss_start_mb": round(rss0, 1),
            "rss_after_load_mb": round(rss_loaded, 1)})
    finally:
        reenactor.close()
        shutil.rmtree(engines, ignore_errors=True)  # full-size exports take about 0.5 GB


def _measure(reenactor, avatar, observed, feeds, frames: int, threads: int, tiny: bool, checkpoint: str | None,
             extra: dict) -> dict:
    import numpy as np

    start = time.perf_counter()
    prepared = reenactor.prepare(avatar)
    prepare_ms = (time.perf_counter() - start) * 1000
    neutral = reenactor.neutral_from([observed[0]])
    out = np.empty((512, 512, 3), np.uint8)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    for i, obs in enumerate(observed[1:]):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        reenactor.render(prepared, obs, neutral, 1.0 + i, out, timings)
        timings["end_to_end"] = (time.perf_counter() - start) * 1000
        for s in STAGES:
            stages[s].append(timings.get(s, float("nan")))
    graphs = {}
    for name, feed in feeds.items():
        runner = reenactor.runners.runners[name]
        runner.run(feed)
        times = []
        for _ in range(max(1, frames)):
            start = time.perf_counter()
            runner.run(feed)
            times.append((time.perf_counter() - start) * 1000)
        graphs[name] = _median(times)
    row = {
        "runtime": reenactor.runtime,
        "weights": "tiny fixture" if tiny else (str(checkpoint) if checkpoint else "random, published widths"),
        "frames": len(observed) - 1,
        "torch_threads": threads,
        "ms": {s: _median(v) for s, v in stages.items()},
        "graph_ms": graphs,
        "prepare_ms": round(prepare_ms, 1),
        **extra,
        "rss_end_mb": round(_rss_mb(), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"],
                        help="backends to measure, each in its own process (torch, onnxruntime, auto, tensorrt)")
    parser.add_argument("--frames", type=int, default=3, help="driver frames rendered per runtime (after the neutral)")
    parser.add_argument("--checkpoint", default=None, help="a LivePortrait weights folder instead of random weights")
    parser.add_argument("--tiny", action="store_true", help="use the tiny test weights (smoke test of the tool)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        row = run_child(args.child, args.frames, args.checkpoint, args.tiny, args.threads)
        print("RESULT " + json.dumps(row))
        return 0
    rows = []
    for runtime in args.runtimes:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", runtime, "--frames", str(args.frames),
                   "--threads", str(args.threads)]
        if args.checkpoint:
            command += ["--checkpoint", args.checkpoint]
        if args.tiny:
            command.append("--tiny")
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not result:
            print(f"{runtime}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", file=sys.stderr)
            rows.append({"runtime": runtime, "error": done.stderr[-1000:]})
            continue
        row = json.loads(result[-1].removeprefix("RESULT "))
        rows.append(row)
        stages = ", ".join(f"{k} {v}" for k, v in row["ms"].items())
        print(f"{runtime}: {stages}; prepare {row['prepare_ms']} ms; peak RSS {row['peak_rss_mb']} MB", flush=True)
    report = {
        "tool": "bench_liveportrait",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "results": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
