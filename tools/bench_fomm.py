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

    python tools/bench_fomm.py --original ~/first-order-model --json OUT.json [--frames 8] [--calibrated]

times the original FOMM code (the checkout's modules, driven as Avatarify's PredictorLocal drives them: per frame
kp_detector, normalize_kp with relative motion and adapted scale, generator, all under torch.no_grad with torch's
default threads, as Avatarify's run.sh starts cam_fomm.py with --relative --adapt_scale). CHECKOUT picks the
original: Avatarify's fork (alievk/first-order-model, which has modules/generator_optim.py: the avatar encoded once
per avatar, as Avatarify runs it) or upstream AliaksandrSiarohin/first-order-model (modules/generator.py: the
source encoded on every frame); the JSON's original.generator says which ran. FaceMimic's runtimes (auto, the
default: int8 bottleneck on CPUs with bf16 and VNNI, else bf16 where native; bf16; onnxruntime and torch, both exact
fp32) on the same weights and the same 256x256 frames, one frame each in turn, in one process; it reports ms per
frame and per stage, the speed-up over the original, the parity of each runtime against the original and against
our exact torch path, and a per-stage profile of the frame generator (fp32, bf16 and int8). --calibrated sets the random weights' batch-norm statistics from real images so that
the outputs are structured pictures and the parity figures mean something (torch's default initialisation gives a
flat grey output).
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


def _calibrate_batch_norms(kp_detector, generator, images) -> None:
    """Set every batch norm's running statistics to those of `images` (as the tiny fixture's weights were made).

    With torch's default initialisation a deep random generator outputs an almost flat grey picture (std ~0.004),
    which says nothing about precision; calibrated statistics give realistic activation scales and a structured
    output. images: (N, 3, 256, 256) float32 RGB in [0, 1].
    """
    import torch


    def reset(module) -> None:
        for child in module.modules():
            if isinstance(child, torch.nn.BatchNorm2d):
                child.reset_running_stats()
                child.momentum = None  # cumulative average: one batch gives exactly its statistics

    with torch.no_grad():
        reset(kp_detector)
        kp_detector.train()
        value, jacobian = kp_detector(images)
        kp_detector.eval()
        reset(generator)
        generator.train()
        source = images[:1].expand_as(images).contiguous()
        features = generator.encode_source(source)
        generator(source, features, value[:1].expand_as(value), jacobian[:1].expand_as(jacobian), value, jacobian)
        generator.eval()


def make_random_vox256(path: Path, seed: int = 0, calibrate_on: list[Path] | None = None) -> Path:
    """Save a random-weight vox-256 checkpoint and check its keys and shapes against keys-vox256.json.

    calibrate_on: images whose statistics the batch norms take (see _calibrate_batch_norms); None keeps torch's
    default initialisation (enough for timing).
    """
    import numpy as np
    import torch

    from avatarcam.generators.fomm.model import FommConfig, FommGenerator, FommKeypointDetector

    torch.manual_seed(seed)
    config = FommConfig.vox256()
    kp_detector, generator = FommKeypointDetector(config).eval(), FommGenerator(config).eval()
    if calibrate_on:
        import cv2

        images = [cv2.resize(cv2.imread(str(p)), (256, 256), interpolation=cv2.INTER_AREA) for p in calibrate_on]
        batch = np.stack([im[..., ::-1].transpose(2, 0, 1) for im in images]).astype(np.float32) / 255
        _calibrate_batch_norms(kp_detector, generator, torch.from_numpy(batch))
    states = {"kp_detector": kp_detector.state_dict(), "generator": generator.state_dict()}
    reference = json.loads(KEYS_VOX256.read_text())
    for part, state in states.items():
        expected = [(k["key"], k["shape"]) for k in reference[part]["keys"]]
        seen = [(k, list(v.shape)) for k, v in state.items()]
        if seen != expected:
            raise SystemExit(f"bench_fomm: our {part} state dict does not match {KEYS_VOX256.name}; the port changed")
    torch.save(states, path)
    return path


def _frame_files(driver: Path, folder: Path, count: int = 4) -> list[Path]:
    """Every 10th of the driver's first frames written as PNGs into folder (calibration images)."""
    import cv2

    capture = cv2.VideoCapture(str(driver))
    paths = []
    for index in range(count * 10):
        ok, frame = capture.read()
        if not ok:
            break
        if index % 10 == 0:
            paths.append(folder / f"{index}.png")
            cv2.imwrite(str(paths[-1]), frame)
    capture.release()
    return paths


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


# --------------------------------------------------------------------------------------------------------------------
# Side by side with the original FOMM code (--original CHECKOUT), in one process, alternating frames.
# --------------------------------------------------------------------------------------------------------------------

# Our runtimes in the comparison: (label, backend, precision). auto is the default (bf16 where the CPU has it).
COMPARED = (("auto", "auto", "auto"), ("bf16", "auto", "bf16"), ("onnxruntime", "onnxruntime", "fp32"),
            ("torch", "torch", "fp32"))


def _driver_frames(driver: Path, count: int, size: int = 256) -> list:
    """The first `count` frames of the driver, resized to size x size (uint8 BGR), as Avatarify feeds FOMM."""
    import cv2

    capture = cv2.VideoCapture(str(driver))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        height, width = frame.shape[:2]
        side = min(height, width)  # Avatarify crops the camera frame to a centred square first
        top, left = (height - side) // 2, (width - side) // 2
        frames.append(cv2.resize(frame[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA))
    capture.release()
    if len(frames) < 3:
        raise SystemExit(f"bench_fomm: {driver} has fewer than 3 frames")
    return frames


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else round(10 * np.log10(1 / mse), 2)


class _OriginalPredictor:
    """Avatarify's PredictorLocal (relative, adapted scale) on the original modules: per frame kp_detector,
    normalize_kp and the generator, the frame turned into a tensor the way Avatarify does (permuted HWC array)."""

    def __init__(self, original, checkpoint: Path, source_rgb) -> None:
        import torch
        from fomm_original import build_original

        from avatarcam.generators.fomm.model import FommConfig

        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.original = original
        self.kp_detector, self.generator = build_original(original, FommConfig.vox256().to_model_params(), state)
        self.source = self._tensor(source_rgb)
        with torch.no_grad():
            self.kp_source = self.kp_detector(self.source)
            if original.caches_source:
                self.generator.encode_source(self.source)
        self.kp_initial = None

    @staticmethod
    def _tensor(rgb):
        import numpy as np
        import torch

        return torch.tensor(rgb[np.newaxis].astype(np.float32)).permute(0, 3, 1, 2) / 255

    def predict(self, rgb, stages: dict[str, float]):
        """(256, 256, 3) uint8 RGB -> (prediction (3, 256, 256) float32, uint8 RGB frame)."""
        import numpy as np
        import torch

        with torch.no_grad():
            t0 = time.perf_counter()
            driving = self._tensor(rgb)
            if self.kp_initial is None:
                self.kp_initial = self.kp_detector(driving)
            kp_driving = self.kp_detector(driving)
            t1 = time.perf_counter()
            kp_norm = self.original.normalize_kp(
                kp_source=self.kp_source, kp_driving=kp_driving, kp_driving_initial=self.kp_initial,
                use_relative_movement=True, use_relative_jacobian=True, adapt_movement_scale=True)
            t2 = time.perf_counter()
            prediction = self.generator(self.source, kp_source=self.kp_source, kp_driving=kp_norm)["prediction"]
            t3 = time.perf_counter()
            out = np.transpose(prediction.data.cpu().numpy(), [0, 2, 3, 1])[0]
            frame = (np.clip(out, 0, 1) * 255).astype(np.uint8)
        stages.update(kp_detector=(t1 - t0) * 1000, normalize_kp=(t2 - t1) * 1000, generate=(t3 - t2) * 1000)
        return prediction[0].numpy(), frame


def compare_with_original(original_path: Path, checkpoint: Path, driver: Path, avatar: Path, frames: int,
                          engines: Path, compared=COMPARED) -> dict:
    """Time the original code and each of our runtimes on the same frames, alternating, in this process."""
    import cv2
    import numpy as np
    import torch
    from fomm_original import load_original

    from avatarcam.avatars import Avatar
    from avatarcam.generators.fomm.reenactor import FommReenactor, FommSettings
    from avatarcam.motion import MotionSettings
    from avatarcam.types import Frame, Observed

    original = load_original(original_path)
    driving = _driver_frames(driver, frames + 2)
    source_bgr = cv2.resize(cv2.imread(str(avatar)), (256, 256), interpolation=cv2.INTER_AREA)
    predictor = _OriginalPredictor(original, checkpoint, np.ascontiguousarray(source_bgr[..., ::-1]))
    ours = {}
    for label, backend, precision in compared:
        settings = FommSettings(checkpoint=checkpoint, backend=backend, precision=precision, crop=False,
                                canvas_size=256, engines_dir=engines)
        reenactor = FommReenactor(settings=settings, motion=MotionSettings(smoothing=0.0), log_line=lambda _: None)
        prepared = reenactor.prepare(Avatar(name="avatar", path=None, canvas_bgr=source_bgr,
                                            points=np.zeros((478, 3), np.float32)))
        neutral = reenactor.neutral_from([Observed(frame=Frame(driving[0], 0, 0.0), face=None)])
        ours[label] = (reenactor, prepared, neutral, reenactor.runtimes)

    names = ["original", *ours]
    total: dict[str, list[float]] = {name: [] for name in names}
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    predictions: dict[str, list] = {name: [] for name in names}
    canvas = np.zeros((256, 256, 3), np.uint8)
    for index, frame_bgr in enumerate(driving):
        frame_rgb = np.ascontiguousarray(frame_bgr[..., ::-1])
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prediction, _ = predictor.predict(frame_rgb, timings)
        elapsed = {"original": ((time.perf_counter() - t0) * 1000, timings)}
        predictions["original"].append(prediction)
        for label, (reenactor, prepared, neutral, _) in ours.items():
            timings = {}
            observed = Observed(frame=Frame(frame_bgr, index, index / 25), face=None)
            t0 = time.perf_counter()
            reenactor.render(prepared, observed, neutral, index / 25, canvas, timings)
            elapsed[label] = ((time.perf_counter() - t0) * 1000, timings)
            predictions[label].append(reenactor.last_prediction[0].copy())
        if index < 2:
            continue  # frame 0 is the neutral, frame 1 a warm-up
        for name, (ms, parts) in elapsed.items():
            total[name].append(ms)
            for stage, value in parts.items():
                stages[name].setdefault(stage, []).append(value)
    for reenactor, *_ in ours.values():
        reenactor.close()

    base = percentiles_ms(total["original"])["p50"]
    result = {
        "original": {"checkout": str(original.checkout), "generator": "modules/generator_optim.py (source encoded "
                     "once, Avatarify's fork)" if original.caches_source else "modules/generator.py (source "
                     "encoded every frame, upstream)", "ms": percentiles_ms(total["original"]),
                     "stages_ms": {k: percentiles_ms(v) for k, v in stages["original"].items()}},
        "frames": len(total["original"]),
        "torch_threads": torch.get_num_threads(),
        "runs": {},
    }
    reference = np.stack(predictions["original"][2:])
    exact = np.stack(predictions["torch"][2:]) if "torch" in ours else None
    for label, (*_, runtimes) in ours.items():
        ms = percentiles_ms(total[label])
        mine = np.stack(predictions[label][2:])
        run = {
            "models": runtimes,
            "ms": ms,
            "stages_ms": {k: percentiles_ms(v) for k, v in stages[label].items()},
            "speedup_p50": round(base / ms["p50"], 2),
            "vs_original": {"max_abs": float(np.abs(mine - reference).max()), "psnr_db": _psnr(mine, reference)},
        }
        if exact is not None:
            run["vs_torch_fp32"] = {"max_abs": float(np.abs(mine - exact).max()), "psnr_db": _psnr(mine, exact)}
        result["runs"][label] = run
    return result


def profile_generator(checkpoint: Path, avatar: Path, engines: Path, repeats: int = 5) -> dict:
    """Per-stage ms of the frame generator, alternating: the exact float32 port on torch ("fp32": dense motion, warp,
    bottleneck, up blocks, final conv + sigmoid) against the bf16 runtime ("bf16": dense motion + warp on ONNX
    Runtime, then fomm_fast's bf16 bottleneck, up blocks and final) and the int8 one ("int8": the same with
    fomm_fast's int8 bottleneck, where int8_native()). Minimum and median over `repeats`."""
    import cv2
    import numpy as np
    import torch

    from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner
    from avatarcam.generators.fomm import export as fx
    from avatarcam.generators.fomm.export import load_fomm_models
    from avatarcam.generators.fomm.fast import FommFastDecoder, int8_native
    from avatarcam.generators.fomm.reenactor import int8_ranges

    models = load_fomm_models(checkpoint)
    exact = models.generator
    decoder = FommFastDecoder(exact, models.image_size)
    int8 = None
    if int8_native()[0]:
        ranges = int8_ranges(models, fx.export_folder(models, engines_dir=engines), lambda _: None)
        int8 = FommFastDecoder(exact, models.image_size, ranges)
    motion = OnnxRuntimeRunner(onnx_path=fx.ensure_exported(models, engines_dir=engines, names=(fx.FRAME_MOTION,),
                                                            log_line=lambda _: None)[fx.FRAME_MOTION]).open()
    bgr = cv2.resize(cv2.imread(str(avatar)), (models.image_size,) * 2, interpolation=cv2.INTER_AREA)
    source = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255)
    low = {"dtype": torch.bfloat16, "memory_format": torch.channels_last}

    def through(blocks, x):
        for block in blocks:
            x = block(x)
        return x

    samples: dict[str, dict[str, list[float]]] = {"fp32": {}, "bf16": {}, **({"int8": {}} if int8 else {})}
    with torch.inference_mode():
        features = exact.encode_source(source)
        value, jacobian = models.kp_detector(source)
        kp = (value, jacobian, value + 0.05, jacobian)
        feed = dict(zip(("source_image", "source_features", "kp_source_value", "kp_source_jacobian",
                         "kp_driving_value", "kp_driving_jacobian"), (t.numpy() for t in (source, features, *kp))))
        stages = {
            "fp32": {
                "dense_motion": lambda r: exact.dense_motion_network(source, *kp),
                "warp": lambda r: exact.warped_features(features, *r["dense_motion"][:2]),
                "bottleneck": lambda r: exact.bottleneck(r["warp"]),
                "up_blocks": lambda r: through(exact.up_blocks, r["bottleneck"]),
                "final": lambda r: torch.sigmoid(exact.final(r["up_blocks"])),
            },
            "bf16": {
                "dense_motion+warp (onnxruntime)": lambda r: torch.from_numpy(motion.run(feed)["warped_features"]),
                "bottleneck": lambda r: decoder.bottleneck(r["dense_motion+warp (onnxruntime)"].to(**low)),
                "up_blocks": lambda r: through(decoder.up_blocks, r["bottleneck"]),
                "final": lambda r: torch.sigmoid(decoder.final(r["up_blocks"]).float()),
            },
        }
        if int8 is not None:
            stages["int8"] = {
                "dense_motion+warp (onnxruntime)": lambda r: torch.from_numpy(motion.run(feed)["warped_features"]),
                "bottleneck": lambda r: int8.bottleneck(r["dense_motion+warp (onnxruntime)"]).to(**low),
                "up_blocks": lambda r: through(int8.up_blocks, r["bottleneck"]),
                "final": lambda r: torch.sigmoid(int8.final(r["up_blocks"]).float()),
            }
        for _ in range(repeats + 1):  # the first round is a warm-up
            for path, steps in stages.items():
                results: dict = {}
                for name, run in steps.items():
                    t0 = time.perf_counter()
                    results[name] = run(results)
                    samples[path].setdefault(name, []).append((time.perf_counter() - t0) * 1000)
    motion.close()
    return {path: {name: {"min": round(min(v[1:]), 1), "median": round(float(np.median(v[1:])), 1)}
                   for name, v in stage.items()} for path, stage in samples.items()}


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
    parser.add_argument("--original", type=Path,
                        help="a first-order-model checkout: time its code side by side with ours, in one process, "
                             "alternating frames (Avatarify's fork's generator_optim.py is used when present)")
    parser.add_argument("--calibrated", action="store_true",
                        help="random vox-256 weights with batch norms calibrated on real images (realistic parity)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one runtime in this process
    parser.add_argument("--engines", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(args.one, args.checkpoint, args.engines, args.driver, list(DEFAULT_AVATARS), args.frames)
        args.json.write_text(json.dumps(result))
        return 0

    def calibration(folder: Path) -> list[Path] | None:
        return [*DEFAULT_AVATARS, *_frame_files(args.driver, folder)] if args.calibrated else None

    if args.original:
        with tempfile.TemporaryDirectory(prefix="bench_fomm-") as scratch:
            scratch_dir = Path(scratch)
            checkpoint = args.checkpoint or make_random_vox256(scratch_dir / "vox-random.pth.tar",
                                                               calibrate_on=calibration(scratch_dir))
            result = compare_with_original(args.original, checkpoint, args.driver, DEFAULT_AVATARS[0], args.frames,
                                           scratch_dir / "engines")
            result["generator_stages_ms"] = profile_generator(checkpoint, DEFAULT_AVATARS[0], scratch_dir / "engines")
        result["checkpoint"] = str(args.checkpoint) if args.checkpoint else (
            "random vox-256" + (" (batch norms calibrated)" if args.calibrated else ""))
        result["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
        original_ms = result["original"]["ms"]["p50"]
        print(f"original: p50 {original_ms} ms/frame ({result['original']['generator']})", file=sys.stderr)
        for label, run in result["runs"].items():
            print(f"  {label} {run['models']}: p50 {run['ms']['p50']} ms/frame, {run['speedup_p50']}x; vs original "
                  f"max |diff| {run['vs_original']['max_abs']:.2e}, PSNR {run['vs_original']['psnr_db']} dB",
                  file=sys.stderr)
            print("    stages p50 ms: " + ", ".join(f"{k} {v['p50']}" for k, v in run["stages_ms"].items()),
                  file=sys.stderr)
        for path, steps in result["generator_stages_ms"].items():
            print(f"  frame generator {path} (median ms): "
                  + ", ".join(f"{k} {v['median']}" for k, v in steps.items())
                  + f"; total {round(sum(v['median'] for v in steps.values()), 1)}", file=sys.stderr)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
        return 0

    runtimes = args.runtimes or _runtimes_available()
    with tempfile.TemporaryDirectory(prefix="bench_fomm-") as scratch:
        scratch_dir = Path(scratch)
        checkpoint = args.checkpoint or make_random_vox256(scratch_dir / "vox-random.pth.tar",
                                                           calibrate_on=calibration(scratch_dir))
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
