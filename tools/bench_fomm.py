#!/usr/bin/env python3
"""Benchmark the FOMM reenactor per runtime: per-stage and end-to-end ms per frame, avatar switch time, peak memory.

    python tools/bench_fomm.py --json OUT.json [--frames 8] [--runtimes torch onnxruntime auto] [--checkpoint C]

Without --checkpoint a random-weight vox-256 checkpoint is made in a temporary folder (the state-dict keys and shapes
of tests/fixtures/fomm/keys-vox256.json, which are Avatarify's vox-adv-cpk.pth.tar's), so timings match the real model
without its weights. Each runtime runs in its own process (peak RSS is per runtime) on the same avatars and driver
frames: MediaPipe landmarks are computed first and are not part of the FOMM timings. Stages: crop (driver crop and
model input), kp_detector, generate (frame generator), compose (paste into the canvas); end_to_end is the whole
render() call; each is measured alone and again with a landmark thread running MediaPipe at 30 fps beside it, as
in the live pipeline (ms_with_landmark_thread). prepare is one avatar switch (avatar crop, keypoints, source
encoding). ONNX export happens on the first use of a checkpoint and is reported in startup_s, not in any per-frame
number. TensorRT runs when a GPU exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from avatarcam.timing import percentiles_ms

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DRIVER = ROOT / "tests" / "fixtures" / "driving" / "d12.mp4"
DEFAULT_AVATARS = (ROOT / "avatars" / "astronaut.png", ROOT / "tests" / "fixtures" / "source" / "lp_s42.jpg")
KEYS_VOX256 = ROOT / "tests" / "fixtures" / "fomm" / "keys-vox256.json"
STAGES = ("crop", "kp_detector", "generate", "compose", "end_to_end")


def make_random_vox256(path: Path, seed: int = 0) -> Path:
    """Save a random-weight vox-256 checkpoint and check its keys and shapes against keys-vox256.json."""
    import torch

    from avatarcam.generators.fomm.model import FommConfig, FommGenerator, FommKeypointDetector

    torch.manual_seed(seed)
    config = FommConfig.vox256()
    states = {"kp_detector": FommKeypointDetector(config).state_dict(), "generator": FommGenerator(config).state_dict()}
    reference = json.loads(KEYS_VOX256.read_text())
    for part, state in states.items():
        expected = [(k["key"], k["shape"]) for k in reference[part]["keys"]]
        seen = [(k, list(v.shape)) for k, v in state.items()]
        if seen != expected:
            raise SystemExit(f"bench_fomm: our {part} state dict does not match {KEYS_VOX256.name}; the port changed")
    torch.save(states, path)
    return path


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def run_one(runtime: str, checkpoint: Path, engines: Path, driver: Path, avatars: list[Path], frames: int) -> dict:
    """One runtime, in this process: returns the measurements."""
    import cv2
    import numpy as np

    from avatarcam.avatars import load_avatar
    from avatarcam.generators.fomm.reenactor import FommReenactor, FommSettings
    from avatarcam.landmarks import DEFAULT_MODEL_PATH, FaceLandmarker
    from avatarcam.motion import MotionSettings
    from avatarcam.types import Frame, Observed

    with FaceLandmarker(model_path=DEFAULT_MODEL_PATH, mode="image") as landmarker:
        loaded = [load_avatar(path, landmarker, 512) for path in avatars]
    observations = []
    capture = cv2.VideoCapture(str(driver))
    with FaceLandmarker(model_path=DEFAULT_MODEL_PATH, mode="video") as landmarker:
        while len(observations) < frames + 2:  # calibration frame and warm-up frame first
            ok, image = capture.read()
            if not ok:
                break
            index = len(observations)
            face = landmarker.detect(image, index * 40)
            if face is not None:
                observations.append(Observed(frame=Frame(image, index, index / 25), face=face))
    capture.release()
    if len(observations) < 3:
        raise SystemExit(f"bench_fomm: {driver} has fewer than 3 frames with a face")

    started = time.perf_counter()
    settings = FommSettings(checkpoint=checkpoint, backend=runtime, engines_dir=engines, canvas_size=512)
    reenactor = FommReenactor(settings=settings, motion=MotionSettings(smoothing=0.35), log_line=lambda _: None)
    startup_s = time.perf_counter() - started
    with reenactor:
        prepare_ms = []
        prepared = []
        for _ in range(2):  # the first prepare pays for lazy allocations; report every switch
            for avatar in loaded:
                t0 = time.perf_counter()
                prepared.append(reenactor.prepare(avatar))
                prepare_ms.append((time.perf_counter() - t0) * 1000)
        neutral = reenactor.neutral_from(observations[:1])

        def render_all() -> dict[str, list[float]]:
            reenactor.reset()
            canvas = np.zeros((512, 512, 3), np.uint8)
            stage: dict[str, list[float]] = {name: [] for name in STAGES}
            for i, observed in enumerate(observations[1:]):
                timings: dict[str, float] = {}
                t0 = time.perf_counter()
                reenactor.render(prepared[0], observed, neutral, observed.frame.capture_time_s, canvas, timings)
                total = (time.perf_counter() - t0) * 1000
                if i == 0:
                    continue  # warm-up
                for name in STAGES[:-1]:
                    stage[name].append(timings[name])
                stage["end_to_end"].append(total)
            return stage

        alone = render_all()
        # Live, the landmark thread runs MediaPipe on every camera frame while FOMM renders: measure that too.
        stop = threading.Event()
        landmark_ms: list[float] = []

        def landmarks_at_30fps() -> None:
            with FaceLandmarker(model_path=DEFAULT_MODEL_PATH, mode="video") as landmarker:
                index = 0
                while not stop.is_set():
                    t0 = time.perf_counter()
                    landmarker.detect(observations[index % len(observations)].frame.image_bgr, index * 33)
                    landmark_ms.append((time.perf_counter() - t0) * 1000)
                    index += 1
                    stop.wait(max(0.0, 1 / 30 - (time.perf_counter() - t0)))

        thread = threading.Thread(target=landmarks_at_30fps, daemon=True)
        thread.start()
        time.sleep(1.0)  # let the landmarker load and reach its steady rate
        try:
            live = render_all()
        finally:
            stop.set()
            thread.join(10)
        finite = bool(np.isfinite(reenactor.last_prediction).all())
        labels = reenactor.runtimes
    return {
        "runtime": runtime,
        "models": labels,
        "frames": len(alone["end_to_end"]),
        "ms": {name: percentiles_ms(values) for name, values in alone.items()},
        "ms_with_landmark_thread": {name: percentiles_ms(values) for name, values in live.items()},
        "landmark_thread_ms": percentiles_ms(landmark_ms[5:]),
        "prepare_ms": percentiles_ms(prepare_ms[len(loaded):]),  # the second round: steady-state avatar switches
        "first_prepare_ms": round(prepare_ms[0], 1),
        "startup_s": round(startup_s, 1),
        "peak_rss_mb": _peak_rss_mb(),
        "prediction_finite": finite,
    }


def _runtimes_available() -> list[str]:
    from avatarcam.backends import detect_hardware

    found = ["torch", "onnxruntime", "auto"]
    hardware = detect_hardware()
    if hardware.tensorrt_version and hardware.cuda_available and hardware.torch_cuda:
        found.append("tensorrt")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, type=Path, help="write the results here")
    parser.add_argument("--frames", type=int, default=8, help="timed frames per runtime (after one warm-up)")
    parser.add_argument("--runtimes", nargs="+", help="default: torch onnxruntime auto (+ tensorrt with a GPU)")
    parser.add_argument("--checkpoint", type=Path, help="a FOMM checkpoint (default: random vox-256 weights)")
    parser.add_argument("--driver", type=Path, default=DEFAULT_DRIVER)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one runtime in this process
    parser.add_argument("--engines", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(args.one, args.checkpoint, args.engines, args.driver, list(DEFAULT_AVATARS), args.frames)
        args.json.write_text(json.dumps(result))
        return 0

    runtimes = args.runtimes or _runtimes_available()
    with tempfile.TemporaryDirectory(prefix="bench_fomm-") as scratch:
        scratch_dir = Path(scratch)
        checkpoint = args.checkpoint or make_random_vox256(scratch_dir / "vox-random.pth.tar")
        engines = scratch_dir / "engines"  # shared: onnxruntime exports once, auto reuses the files
        runs = {}
        for runtime in runtimes:
            out = scratch_dir / f"{runtime}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--one", runtime, "--json", str(out),
                       "--checkpoint", str(checkpoint), "--engines", str(engines), "--frames", str(args.frames),
                       "--driver", str(args.driver)]
            print(f"bench_fomm: {runtime} ...", file=sys.stderr, flush=True)
            subprocess.run(command, check=True, cwd=ROOT)
            runs[runtime] = json.loads(out.read_text())
            ms = runs[runtime]["ms"]
            live = runs[runtime]["ms_with_landmark_thread"]
            print(f"  {runtime}: end to end p50 {ms['end_to_end']['p50']} ms (kp {ms['kp_detector']['p50']}, "
                  f"generate {ms['generate']['p50']}); with a landmark thread {live['end_to_end']['p50']} ms "
                  f"(landmarks {runs[runtime]['landmark_thread_ms']['p50']} ms); prepare p50 "
                  f"{runs[runtime]['prepare_ms']['p50']} ms, peak RSS {runs[runtime]['peak_rss_mb']} MB",
                  file=sys.stderr, flush=True)
    result = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else "random vox-256 (keys-vox256.json shapes)",
        "driver": str(args.driver),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "stages": list(STAGES),
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
