#!/usr/bin/env python3
"""Every GPU check in one run of at most 8 minutes, written to one JSON report.

    python tools/gpu_check.py --json out/gpu.json                 # on an NVIDIA GPU
    python tools/gpu_check.py --allow-cpu --json out/gpu-dry.json  # dry run on CPU with tiny sizes (the tests use it)

Sections, each in its own process with its own time cap (a failure or timeout is recorded and the rest still run):
- fomm: the FOMM keypoint detector, per-avatar source encoder and per-frame generator (vox-256 shapes, random
  weights, batch 1) on torch, fp32 and fp16 (torch.autocast float16; bfloat16 in the CPU dry run): ms per call
  from CUDA events after warm-up (p50, p95) and fp16-vs-fp32 parity (max abs error, PSNR); then the end-to-end
  render at canvas 512 through FommReenactor (crop on, backend torch) with synthetic face landmarks (a fixed face
  box: MediaPipe is not installed on the GPU machine), per frame and per stage.
- staging: avatarcam/backends/buffers.py StagingBuffers on CUDA streams: CUDA event timestamps of every frame show
  whether frame N+1's upload overlaps frame N's compute (overlap fraction), and torch.cuda.memory_stats allocation
  counts plus StagingBuffers.allocations show whether anything is allocated per frame.
- mesh_warp: the mesh warp graph (avatarcam/generators/mesh/torch_warp.py MeshWarp) on CUDA at canvas 512 and 1024:
  ms (p50, p95) and parity against the same module on the CPU, in grey levels.
- gpu_tests: the `gpu`-marked tests (pytest as a subprocess, if pytest is installed); those needing TensorRT skip.

Needs only torch, numpy, onnx, onnxruntime (CPU) and opencv-python-headless: nothing here imports mediapipe,
pyvirtualcam, pynput, tensorrt or yaml (tests/test_gpu_check.py runs it with those imports blocked). Without a
CUDA device it writes a report with status "no_cuda" and exits 2, unless --allow-cpu asks for the dry run.
Exit codes: 0 every section ok (or skipped with a reason), 1 a section failed or ran out of time, 2 no CUDA device.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import itertools
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runs from a copied tree on the GPU machine, where nothing is pip-installed

import numpy as np  # noqa: E402

from avatarcam.timing import percentiles_ms  # noqa: E402

REPORT_FORMAT = "facemimic-gpu-check/1"
DEFAULT_JSON = ROOT / "out" / "gpu-check.json"
DEFAULT_BUDGET_S = 470.0
"""The whole run, start-up included, stays under 8 minutes (480 s)."""
SECTION_CAPS_S = {"fomm": 200.0, "staging": 60.0, "mesh_warp": 90.0, "gpu_tests": 110.0}
SOFT_MARGIN_S = 20.0
"""Each section stops starting new measurements this long before its cap, to write its results in time."""
BLOCKED_MODULES = ("mediapipe", "pyvirtualcam", "pynput", "tensorrt", "yaml")
"""Not on the GPU machine (or not wanted there): the report lists any of them found imported by a section."""
GPU_TEST_FILES = (
    "tests/test_backends_buffers.py",
    "tests/test_backends.py",
    "tests/test_backends_engine_cache.py",
    "tests/test_fomm_export.py",
    "tests/test_mesh_torch.py",
)
DRY_RUN_TEST_FILES = ("tests/test_backends_buffers.py",)
NEVER_ON_THIS_MACHINE = (
    ("TensorRT engines (build and run): TensorRT is not installed on the GPU machine; checked by unit tests with "
     "fake 10.x/11.x bindings only"),
    "ONNX Runtime's CUDA and TensorRT execution providers: only the CPU build of onnxruntime is there",
    "the live pipeline with MediaPipe landmarks, the virtual camera and hotkeys",
)


# ------------------------------------------------------------------------------------------------ measuring


class Context:
    """What every section gets: the device, whether this is the tiny CPU dry run, a scratch folder and a deadline."""

    def __init__(self, *, device: str, tiny: bool, scratch: Path, soft_deadline: float) -> None:
        self.device = device
        self.tiny = tiny
        self.scratch = scratch
        self.soft_deadline = soft_deadline
        """time.monotonic() after which loops stop early (their results say truncated)."""

    def time_left_s(self) -> float:
        """Seconds until the soft deadline."""
        return self.soft_deadline - time.monotonic()


def time_calls(fn: Callable[[], Any], ctx: Context, *, warmup: int, iterations: int) -> dict[str, Any]:
    """ms per fn() call: CUDA events around each call on CUDA (after warm-up), perf_counter on CPU.

    Stops early at the context's soft deadline (then 'truncated' is true). Returns p50, p95, iterations.
    """
    import torch

    for _ in range(warmup):
        fn()
    if ctx.device == "cuda":
        torch.cuda.synchronize()
    times: list[float] = []
    truncated = False
    for _ in range(iterations):
        if ctx.time_left_s() <= 0:
            truncated = True
            break
        if ctx.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1000)
    return {**percentiles_ms(times), "iterations": len(times), "truncated": truncated}


def compare(reference: np.ndarray, other: np.ndarray, *, peak: float | None = None) -> dict[str, float]:
    """max abs and mean abs error of other against reference, and PSNR in dB against peak (default max |ref|)."""
    ref = np.asarray(reference, np.float64)
    diff = np.abs(ref - np.asarray(other, np.float64))
    peak = float(np.abs(ref).max()) if peak is None else peak
    mse = float((diff**2).mean()) if diff.size else 0.0
    psnr = float("inf") if mse == 0 else 10 * math.log10(peak**2 / mse)
    return {"max_abs": float(diff.max()) if diff.size else 0.0, "mean_abs": float(diff.mean()) if diff.size else 0.0,
            "psnr_db": round(psnr, 2) if math.isfinite(psnr) else None, "peak": peak}


def overlap_report(frames: list[dict[str, float]]) -> dict[str, Any]:
    """Did frame N+1's upload overlap frame N's compute? frames[i] holds frame i's event times in ms on one clock:
    started, uploaded (its upload), compute_started, computed (its compute), downloaded.

    Per pair (N, N+1): the part of upload(N+1) = [started, uploaded] that lies inside compute(N) =
    [compute_started, computed], as a fraction of the upload's length. 'overlaps' is true when the median
    fraction is at least 0.5. Also the p50 of each stage and of the frame interval (compute end to compute end).
    """
    fractions = []
    for current, following in itertools.pairwise(frames):
        upload = following["uploaded"] - following["started"]
        inside = min(following["uploaded"], current["computed"]) - max(following["started"], current["compute_started"])
        fractions.append(max(0.0, inside) / upload if upload > 0 else 0.0)
    stage = {name: [f[b] - f[a] for f in frames] for name, (a, b) in {
        "upload": ("started", "uploaded"), "compute": ("compute_started", "computed"),
        "download": ("computed", "downloaded")}.items()}
    intervals = [b["computed"] - a["computed"] for a, b in itertools.pairwise(frames)]
    median = float(np.median(fractions)) if fractions else 0.0
    return {
        "pairs": len(fractions),
        "overlap_fraction_p50": round(median, 3),
        "overlap_fraction_min": round(float(min(fractions)), 3) if fractions else 0.0,
        "pairs_overlapping": int(sum(f > 0 for f in fractions)),
        "overlaps": bool(fractions) and median >= 0.5,
        "stage_ms_p50": {name: percentiles_ms(values)["p50"] for name, values in stage.items()},
        "frame_interval_ms_p50": percentiles_ms(intervals)["p50"],
        "first_frames_ms": [{k: round(v - frames[0]["started"], 3) for k, v in f.items()} for f in frames[:4]],
    }


# ------------------------------------------------------------------------------------------------ sections


def _load_bench_fomm() -> Any:
    """tools/bench_fomm.py as a module (its make_random_vox256 makes the random-weight vox-256 checkpoint)."""
    spec = importlib.util.spec_from_file_location("facemimic_bench_fomm", ROOT / "tools" / "bench_fomm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _synthetic_face(size_wh: tuple[int, int]) -> np.ndarray:
    """(478, 3) float32 points on an ellipse in the middle of a (width, height) image: a fixed face box."""
    width, height = size_wh
    angles = np.linspace(0.0, 2 * np.pi, 478, endpoint=False)
    radius = 0.22 * min(width, height)
    points = np.stack([width / 2 + 0.8 * radius * np.cos(angles), height * 0.45 + radius * np.sin(angles),
                       np.zeros_like(angles)], 1)
    return points.astype(np.float32)


def _driver_frames(count: int) -> list[np.ndarray]:
    """The first frames of the fixture clip d12.mp4 (uint8 BGR); noise frames if it cannot be decoded here."""
    import cv2

    frames = []
    capture = cv2.VideoCapture(str(ROOT / "tests" / "fixtures" / "driving" / "d12.mp4"))
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(count)]
    return frames


def check_fomm(ctx: Context) -> dict[str, Any]:
    """FOMM per model (fp32 and fp16 autocast) and the end-to-end render."""
    import torch

    from avatarcam.generators.fomm import export as fx

    if ctx.tiny:
        checkpoint, canvas, warmup, iterations, e2e_frames = fx.SMOKE_CHECKPOINT, 128, 1, 2, 2
        checkpoint_note = "tests/fixtures/fomm/tiny-checkpoint.pth.tar (tiny widths; dry run)"
    else:
        checkpoint = _load_bench_fomm().make_random_vox256(ctx.scratch / "vox256-random.pth.tar")
        canvas, warmup, iterations, e2e_frames = 512, 10, 50, 60
        checkpoint_note = "random weights with vox-256 shapes (tools/bench_fomm.py make_random_vox256)"
    low = torch.float16 if ctx.device == "cuda" else torch.bfloat16  # CPU autocast supports bfloat16
    # The dry run keeps the tiny checkpoint at its smallest size (128): it checks the code path and the report, not
    # numbers; the GPU run uses FOMM's 256.
    models = fx.load_fomm_models(checkpoint, image_size=128 if ctx.tiny else None)
    recipes = fx.recipes_for(models)
    result: dict[str, Any] = {
        "checkpoint": checkpoint_note, "image_size": models.image_size, "batch": 1,
        "fp16": f"torch.autocast({ctx.device!r}, dtype={low})", "models": {},
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    for name in fx.MODEL_NAMES:
        recipe = recipes[name]
        module = recipe.module.to(ctx.device).eval()
        feed = recipe.sample_inputs(np.random.default_rng(0))
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(ctx.device) for n in recipe.input_names]

        def run(module: Any = module, args: list[Any] = args) -> Any:
            return module(*args)

        def run_low(run: Callable[[], Any] = run) -> Any:
            with torch.autocast(device_type=ctx.device, dtype=low):
                return run()

        with torch.inference_mode():
            fp32_ms = time_calls(run, ctx, warmup=warmup, iterations=iterations)
            low_ms = time_calls(run_low, ctx, warmup=warmup, iterations=iterations)
            want, got = run(), run_low()
        want = (want,) if isinstance(want, torch.Tensor) else want
        got = (got,) if isinstance(got, torch.Tensor) else got
        parity = {}
        for output, a, b in zip(recipe.output_names, want, got):
            if not (torch.isfinite(a).all() and torch.isfinite(b.float()).all()):
                raise SectionFailed(f"{name} output {output} is not finite", result)
            peak = 1.0 if output == "prediction" else None  # the prediction is an image in [0, 1]
            parity[output] = compare(a.float().cpu().numpy(), b.float().cpu().numpy(), peak=peak)
        result["models"][name] = {"fp32_ms": fp32_ms, "fp16_ms": low_ms, "fp16_vs_fp32": parity}
        recipe.module.to("cpu")
    result["end_to_end"] = _fomm_end_to_end(ctx, checkpoint, canvas, e2e_frames)
    return result


def _fomm_end_to_end(ctx: Context, checkpoint: Path, canvas: int, count: int) -> dict[str, Any]:
    """FommReenactor.render per frame at this canvas (crop on, backend torch), with synthetic landmarks."""
    import cv2

    from avatarcam.avatars import Avatar
    from avatarcam.backends.hardware import detect_hardware
    from avatarcam.generators.fomm.reenactor import FommReenactor, FommSettings
    from avatarcam.types import FaceObservation, Frame, Observed

    image = cv2.imread(str(ROOT / "avatars" / "astronaut.png"), cv2.IMREAD_COLOR)
    avatar_bgr = cv2.resize(image, (canvas, canvas), interpolation=cv2.INTER_AREA)
    avatar = Avatar(name="astronaut", path=None, canvas_bgr=avatar_bgr, points=_synthetic_face((canvas, canvas)))

    def observed(index: int, frame_bgr: np.ndarray) -> Observed:
        height, width = frame_bgr.shape[:2]
        face = FaceObservation(points_px=_synthetic_face((width, height)), blendshapes=np.zeros(52, np.float32),
                               head_matrix=np.eye(4, dtype=np.float32), image_size=(width, height))
        return Observed(frame=Frame(image_bgr=frame_bgr, index=index, capture_time_s=0.0), face=face)

    frames = _driver_frames(min(count, 30))
    settings = FommSettings(checkpoint=checkpoint, backend="torch", crop=True, canvas_size=canvas,
                            engines_dir=ctx.scratch / "engines")
    out = np.zeros((canvas, canvas, 3), np.uint8)
    with FommReenactor(settings=settings, hardware=detect_hardware(), log_line=lambda _: None) as reenactor:
        started = time.perf_counter()
        prepared = reenactor.prepare(avatar)
        prepare_ms = (time.perf_counter() - started) * 1000
        neutral = reenactor.neutral_from([observed(0, frames[0])])
        totals: list[float] = []
        stages: dict[str, list[float]] = {}
        truncated = False
        for index in range(count + 3):
            if ctx.time_left_s() <= 0:
                truncated = True
                break
            timings: dict[str, float] = {}
            begin = time.perf_counter()
            reenactor.render(prepared, observed(index, frames[index % len(frames)]), neutral, index / 30.0, out,
                             timings)
            if index >= 3:  # the first frames warm up the kernels
                totals.append((time.perf_counter() - begin) * 1000)
                for stage, ms in timings.items():
                    stages.setdefault(stage, []).append(ms)
        runtime = reenactor.runtime
    return {
        "path": "FommReenactor.render (generator.crop on, backend torch) with synthetic face landmarks: a fixed "
                "face box, since MediaPipe is not on the GPU machine; wall-clock per frame including host-device "
                "copies and composition into the canvas",
        "runtime": runtime, "canvas": canvas, "frames": len(totals), "truncated": truncated,
        "ms": percentiles_ms(totals), "stages_ms": {k: percentiles_ms(v) for k, v in stages.items()},
        "prepare_avatar_ms": round(prepare_ms, 2),
        "output_mean_grey": round(float(out.mean()), 2),
    }


def check_staging(ctx: Context) -> dict[str, Any]:
    """Double-buffered staging: upload/compute overlap from CUDA events, and allocations per frame."""
    import torch

    from avatarcam.backends.base import TensorSpec
    from avatarcam.backends.buffers import StagingBuffers

    side = 64 if ctx.tiny else 1024
    shape = (1, 3, side, side)
    staging = StagingBuffers(inputs=(TensorSpec(name="frame", shape=shape, dtype="float32"),),
                             outputs=(TensorSpec(name="result", shape=shape, dtype="float32"),),
                             device=ctx.device, name="gpu_check")
    rng = np.random.default_rng(0)
    host_frames = [{"frame": rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    busy: dict[str, Any] = {"matmuls": 0, "matrices": ()}
    cpu_times: dict[str, float] = {}

    def compute(slot: Any) -> None:
        # out= and in-place ops only, so the compute itself allocates nothing: any allocation would be the staging's.
        # On CUDA a few large matmuls into preallocated matrices stand in for a model's kernels: few launches,
        # long GPU time, as a real generator has (many tiny kernels would make the host, not the GPU, the limit).
        x, y = slot.device_inputs["frame"], slot.device_outputs["result"]
        cpu_times["compute_started"] = time.perf_counter()
        if ctx.device == "cuda":
            y.copy_(x).mul_(0.5).add_(x)
            for _ in range(busy["matmuls"]):
                torch.matmul(busy["matrices"][0], busy["matrices"][1], out=busy["matrices"][2])
        else:
            np.copyto(y, x)
            np.multiply(y, 0.5, out=y)
            np.add(y, x, out=y)
        cpu_times["computed"] = time.perf_counter()

    def expected(frame: np.ndarray) -> np.ndarray:
        return frame.astype(np.float64) * 1.5

    calibration: dict[str, float] = {}
    if ctx.device == "cuda":
        # Make compute last about twice the host copy + upload of the next frame, as a generator's does, so that
        # overlap is possible; then measure whether it happens.
        side_mm = 4096
        busy["matrices"] = tuple(torch.randn(side_mm, side_mm, device="cuda") for _ in range(3))
        torch.matmul(busy["matrices"][0], busy["matrices"][1], out=busy["matrices"][2])  # cuBLAS set-up, once
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(busy["matrices"][0], busy["matrices"][1], out=busy["matrices"][2])
        end.record()
        end.synchronize()
        matmul_ms = start.elapsed_time(end)
        slot = staging.submit(host_frames[0], compute)
        staging.collect(slot)
        copy_start = time.perf_counter()
        np.copyto(staging.slots[1].host_inputs["frame"], host_frames[1]["frame"])
        host_copy_ms = (time.perf_counter() - copy_start) * 1000
        upload_ms = staging.last_timings_ms["upload"]
        busy["matmuls"] = int(min(64, max(1, math.ceil(2.0 * (host_copy_ms + upload_ms) / max(matmul_ms, 1e-3)))))
        calibration = {"matmul_4096_ms": round(matmul_ms, 3), "host_copy_ms": round(host_copy_ms, 3),
                       "upload_ms": round(upload_ms, 3), "matmuls_per_frame": busy["matmuls"]}
    frames_n = 8 if ctx.tiny else 40
    warm = 3
    reference = None
    if ctx.device == "cuda":
        torch.cuda.synchronize()
        reference = torch.cuda.Event(enable_timing=True)
        reference.record()
        reference.synchronize()

    def times_of(slot: Any, cpu: dict[str, float]) -> dict[str, float]:
        if reference is None:
            return {k: v * 1000 for k, v in cpu.items()}
        return {k: reference.elapsed_time(event) for k, event in staging.slot_events(slot).items()}

    timeline: list[dict[str, float]] = []
    checked = []
    allocations_before = staging.allocations
    stats_before: dict[str, Any] = {}
    cpu_pending: dict[str, float] = {}
    pending = None
    for index in range(frames_n + warm):
        if index == warm:
            if ctx.device == "cuda":
                torch.cuda.synchronize()
                stats_before = torch.cuda.memory_stats()
            allocations_before = staging.allocations
        frame = host_frames[index % 2]
        submit_start = time.perf_counter()
        slot = staging.submit(frame, compute)  # frame N+1 is submitted before frame N is collected
        cpu_now = {"started": submit_start, "uploaded": cpu_times["compute_started"],
                   "compute_started": cpu_times["compute_started"], "computed": cpu_times["computed"]}
        if pending is not None:
            outputs = staging.collect(pending[0])
            times = times_of(pending[0], pending[2])
            if ctx.device == "cpu":
                times["downloaded"] = times["computed"]
            if pending[1] >= warm:
                timeline.append(times)
                if len(checked) < 3:
                    want = expected(host_frames[pending[1] % 2]["frame"])
                    checked.append(float(np.abs(outputs["result"] - want).max()))
        pending = (slot, index, cpu_now if ctx.device == "cpu" else cpu_pending)
    if pending is not None:
        outputs = staging.collect(pending[0])
        times = times_of(pending[0], pending[2])
        times.setdefault("downloaded", times["computed"])
        timeline.append(times)
    allocations_after = staging.allocations
    result: dict[str, Any] = {
        "shape": list(shape), "frames": len(timeline), "calibration": calibration,
        "max_abs_error_vs_numpy": max(checked) if checked else None,
        "staging_allocations_per_frame": (allocations_after - allocations_before) / max(1, len(timeline)),
    }
    if ctx.device == "cuda":
        torch.cuda.synchronize()
        stats_after = torch.cuda.memory_stats()
        result["torch_allocations_during_frames"] = {
            key: int(stats_after.get(key, 0) - stats_before.get(key, 0))
            for key in ("allocation.all.allocated", "segment.all.allocated")
        }
        result["timeline_clock"] = "CUDA events (StagingBuffers.slot_events) relative to one reference event"
    else:
        result["timeline_clock"] = "perf_counter on CPU: upload and compute run one after the other here"
    result["overlap"] = overlap_report(timeline)
    staging.close()
    problems = []
    if result["staging_allocations_per_frame"] != 0:
        problems.append("StagingBuffers allocated during frames")
    if not (result["max_abs_error_vs_numpy"] is not None and result["max_abs_error_vs_numpy"] <= 1e-3):
        problems.append(f"outputs differ from numpy by {result['max_abs_error_vs_numpy']}")
    if ctx.device == "cuda":
        if any(result["torch_allocations_during_frames"].values()):
            problems.append(f"torch allocated during frames: {result['torch_allocations_during_frames']}")
        if not result["overlap"]["overlaps"]:
            problems.append("frame N+1's upload did not overlap frame N's compute (median fraction "
                            f"{result['overlap']['overlap_fraction_p50']})")
    if problems:
        raise SectionFailed("; ".join(problems), result)
    return result


def check_mesh_warp(ctx: Context) -> dict[str, Any]:
    """The mesh warp graph on the device at two canvas sizes, against the same module on the CPU."""
    import torch

    from avatarcam.generators.mesh.model import MeshSettings
    from avatarcam.generators.mesh.torch_warp import MeshWarp, random_inputs

    sizes = ((128, 32), (256, 64)) if ctx.tiny else ((512, 128), (1024, 128))
    result: dict[str, Any] = {"sizes": {}}
    for canvas, grid in sizes:
        settings = MeshSettings(canvas_size=canvas, grid_size=grid)
        module = MeshWarp(settings=settings).eval()
        feed = random_inputs(np.random.default_rng(1), settings=settings)
        names = ("image", "weights", "displacements")
        with torch.inference_mode():
            cpu_out = module(*[torch.from_numpy(feed[n]) for n in names]).numpy()
            module = module.to(ctx.device)
            args = [torch.from_numpy(feed[n]).to(ctx.device) for n in names]
            ms = time_calls(lambda module=module, args=args: module(*args), ctx, warmup=3 if ctx.tiny else 10,
                            iterations=3 if ctx.tiny else 50)
            out = module(*args).cpu().numpy()
        diff = np.abs(out.astype(np.float64) - cpu_out)
        result["sizes"][str(canvas)] = {
            "grid": grid, "ms": ms,
            "vs_cpu_grey_levels": {"max": float(diff.max()), "mean": float(diff.mean()),
                                   "p99": float(np.percentile(diff, 99)), "share_over_1": float((diff > 1).mean())},
        }
    result["reference"] = "the same MeshWarp on torch CPU, fp32" + (" (same device in the dry run)" if ctx.tiny else "")
    return result


def check_gpu_tests(ctx: Context) -> dict[str, Any]:
    """Run the gpu-marked tests with pytest in a subprocess; TensorRT ones skip with their reason."""
    import xml.etree.ElementTree as ET

    if importlib.util.find_spec("pytest") is None:
        return {"skipped": "pytest is not installed here: `python -m pip install pytest` to run the gpu tests"}
    files = DRY_RUN_TEST_FILES if ctx.tiny else GPU_TEST_FILES
    junit = ctx.scratch / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={junit}", *files]
    try:
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                                   timeout=max(5.0, ctx.time_left_s()))
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"pytest did not finish within {exc.timeout:.0f} s") from exc
    tests = []
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("skipped", "failure", "error"):
                    outcome = {"skipped": "skipped", "failure": "failed", "error": "error"}[child.tag]
                    message = (child.get("message") or child.text or "")[:300]
            tests.append({"id": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                          "message": message})
    counts: dict[str, int] = {}
    for test in tests:
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    result = {"command": " ".join(command[1:]), "exit_code": completed.returncode, "counts": counts, "tests": tests,
              "output_tail": completed.stdout[-2000:]}
    if completed.returncode not in (0, 5) or counts.get("failed") or counts.get("error"):
        raise SectionFailed(f"pytest exited {completed.returncode} with {counts}", result)
    return result


class SectionFailed(Exception):
    """A section ran but its checks failed; carries its partial results."""

    def __init__(self, message: str, results: dict[str, Any]) -> None:
        super().__init__(message)
        self.results = results


SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "fomm": check_fomm,
    "staging": check_staging,
    "mesh_warp": check_mesh_warp,
    "gpu_tests": check_gpu_tests,
}


# ------------------------------------------------------------------------------------------------ the run


def device_facts() -> dict[str, Any]:
    """Python, package versions and the CUDA device as torch sees it (cuda false when none)."""
    import torch

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    facts: dict[str, Any] = {
        "python": platform.python_version(), "machine": platform.machine(), "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda, "cuda": bool(torch.cuda.is_available()),
        "packages": {name: version(name) for name in ("numpy", "onnx", "onnxruntime", "opencv-python-headless",
                                                      "opencv-python", "pytest")},
    }
    if facts["cuda"]:
        props = torch.cuda.get_device_properties(0)
        facts.update({"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
                      "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                      "multiprocessors": props.multi_processor_count,
                      "cudnn": torch.backends.cudnn.version()})
    return facts


def run_section_here(name: str, *, device: str, tiny: bool, soft_deadline_s: float, out: Path) -> int:
    """Run one section in this process and write {status, seconds, results | error, imported_blocked} to out."""
    import traceback

    started = time.monotonic()
    record: dict[str, Any]
    if tiny:
        import torch

        torch.set_num_threads(1)  # the dry run is a functional check; one thread keeps it quick on a busy machine
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as scratch:
        ctx = Context(device=device, tiny=tiny, scratch=Path(scratch), soft_deadline=started + soft_deadline_s)
        try:
            results = SECTIONS[name](ctx)
            status = "skipped" if set(results) == {"skipped"} else "ok"
            record = {"status": status, "results": results}
        except SectionFailed as exc:
            record = {"status": "failed", "error": str(exc), "results": exc.results}
        except Exception as exc:  # noqa: BLE001 - any failure of a section is recorded, and the others still run
            record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
    record["seconds"] = round(time.monotonic() - started, 2)
    record["imported_blocked_modules"] = sorted(m for m in BLOCKED_MODULES if sys.modules.get(m) is not None)
    out.write_text(json.dumps(record, indent=2, default=str))
    return 0


def _run_section_process(name: str, *, device: str, tiny: bool, timeout_s: float, scratch: Path) -> dict[str, Any]:
    out = scratch / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--run-section", name, "--section-json", str(out),
               "--device", device, "--soft-deadline-s", f"{max(1.0, timeout_s - SOFT_MARGIN_S):.1f}"]
    if tiny:
        command.append("--tiny")
    started = time.monotonic()
    try:
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                                   timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace")[-2000:] if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return {"status": "timeout", "error": f"killed after its cap of {timeout_s:.0f} s", "stderr_tail": tail,
                "seconds": round(time.monotonic() - started, 2), "cap_s": round(timeout_s, 1)}
    if out.is_file():
        record = json.loads(out.read_text())
    else:
        record = {"status": "failed", "error": f"the section process exited {completed.returncode} without a result",
                  "stderr_tail": completed.stderr[-3000:], "seconds": round(time.monotonic() - started, 2)}
    record["cap_s"] = round(timeout_s, 1)
    return record


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"report path (default: {DEFAULT_JSON})")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without a CUDA device, run every check on the CPU with tiny sizes (a dry run)")
    parser.add_argument("--sections", nargs="+", choices=tuple(SECTIONS), default=list(SECTIONS),
                        help="sections to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"time for the whole run in seconds (default: {DEFAULT_BUDGET_S:.0f})")
    # Internal: one section in a child process.
    parser.add_argument("--run-section", choices=tuple(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--section-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--soft-deadline-s", type=float, default=60.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the checks and write the report; see the module doc for the exit codes."""
    args = _parse(argv)
    if args.run_section:
        return run_section_here(args.run_section, device=args.device, tiny=args.tiny,
                                soft_deadline_s=args.soft_deadline_s, out=args.section_json)
    started = time.monotonic()
    deadline = started + args.budget_s
    facts = device_facts()
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "device": facts,
        "budget_s": args.budget_s,
        "never_run_here": list(NEVER_ON_THIS_MACHINE),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if not facts["cuda"] and not args.allow_cpu:
        report.update(status="no_cuda", mode="none", sections={},
                      message=f"no CUDA device: torch {facts['torch']} sees none, so no GPU check ran; run this on "
                              f"a machine with an NVIDIA GPU, or pass --allow-cpu for the dry run on the CPU")
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"gpu_check: {report['message']} (report: {args.json})", file=sys.stderr)
        return 2
    device = "cuda" if facts["cuda"] else "cpu"
    tiny = device == "cpu"
    report["mode"] = "gpu" if device == "cuda" else "cpu-dry-run"
    if tiny:
        report["note"] = "dry run on the CPU with tiny sizes: no number in this report is a GPU measurement"
    sections: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        names = list(args.sections)
        for position, name in enumerate(names):
            remaining = deadline - time.monotonic()
            later = len(names) - position - 1
            timeout_s = min(SECTION_CAPS_S[name], remaining - 10.0 * later)  # leave the later sections a chance
            if timeout_s < 15.0:
                sections[name] = {"status": "timeout", "error": f"not started: {remaining:.0f} s of the budget left",
                                  "seconds": 0.0, "cap_s": 0.0}
            else:
                sections[name] = _run_section_process(name, device=device, tiny=tiny, timeout_s=timeout_s,
                                                      scratch=Path(scratch))
            print(f"gpu_check: {name}: {sections[name]['status']} in {sections[name]['seconds']} s", file=sys.stderr)
    report["sections"] = sections
    report["total_s"] = round(time.monotonic() - started, 2)
    failed = [n for n, s in sections.items() if s["status"] not in ("ok", "skipped")]
    report["status"] = "failed" if failed else "ok"
    if failed:
        report["failed_sections"] = failed
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu_check: {report['status']} ({report['mode']}, {report['total_s']} s): {args.json}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
