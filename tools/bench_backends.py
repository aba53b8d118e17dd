#!/usr/bin/env python3
"""Benchmark the mesh warp on every backend here: numpy/cv2, torch CPU, ONNX Runtime CPU, TensorRT when available.

    python tools/bench_backends.py --json OUT.json [--sizes 256 512] [--frames 50] [--memory-frames 300]

Per canvas size (512 with a 128 grid, 256 with a 64 grid, as the app caps the grid at canvas/4) and backend: one
avatar prepared once, then a looping sequence of driven poses (head turns, nods, an opening mouth). A frame is
control displacements + the warp into a preallocated uint8 canvas (the mouth interior, drawn in numpy after the
warp on every backend, is left out). Backends take turns in blocks of 10 frames, each block after 3 unmeasured
warm-up frames, so a busy machine slows them alike; --frames frames per backend give ms p50/p95. The memory check
then runs --memory-frames more frames per backend at the largest size and reports RSS before/after and the
StagingBuffers allocation count before/after (it must not grow). ONNX files are exported into --engines (a
temporary folder by default). --threads 1 pins cv2, torch and ONNX Runtime to one core each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avatarcam.timing import percentiles_ms

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_AVATAR = ROOT / "tests" / "fixtures" / "source" / "lp_s42.jpg"
BACKENDS = ("numpy-cv2", "torch", "onnxruntime", "tensorrt")
WARMUP_FRAMES = 3
BLOCK_FRAMES = 10


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def driven_sequence(prepared, count: int) -> list:
    """count driven faces: a slow head turn and nod with a mouth that opens and closes."""
    from avatarcam import landmarks as lm
    from avatarcam.motion import DrivenFace, neutral_driven

    rest = neutral_driven(prepared.face)
    faces = []
    for i in range(count):
        phase = 2 * np.pi * i / count
        yaw, pitch = np.radians(20 * np.sin(phase)), np.radians(8 * np.sin(2 * phase))
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        rotation = (np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]))
        driven = DrivenFace(points=rest.points, rotation=rotation.astype(np.float32), scale=1.0 + 0.05 * np.sin(phase),
                            shift_px=np.array([15 * np.sin(phase), 8 * np.cos(phase)], np.float32), pivot=rest.pivot)
        points = driven.transform_rigid(prepared.face.points)
        lower = points[:, 1] > points[lm.INNER_LIP_LOWER_MID, 1] - 1
        lower[468:] = False
        points[lower, 1] += 30.0 * max(0.0, np.sin(3 * phase))
        faces.append(DrivenFace(**{**driven.__dict__, "points": points}))
    return faces


def prepare_avatar(avatar_path: Path, size: int, landmarker):
    """The avatar prepared for a size x size canvas, and its generator (mouth interior off: not part of the warp)."""
    from avatarcam.avatars import load_avatar
    from avatarcam.generators.mesh.model import MeshGenerator, MeshSettings

    avatar = load_avatar(avatar_path, landmarker, size)
    settings = MeshSettings(canvas_size=size, grid_size=min(128, size // 4), mouth_interior=False)
    generator = MeshGenerator(settings)
    return generator, generator.prepare(avatar.canvas_bgr, avatar.points)


def frame_function(backend: str, generator, engines: Path, hardware,
                   threads: int | None) -> tuple[Callable, Callable[[], int], Callable]:
    """(render(prepared, driven, out), allocations(), close()) for one backend."""
    if backend == "numpy-cv2":
        return (lambda prepared, driven, out: generator.generate(prepared, driven, out)), (lambda: 0), (lambda: None)
    from avatarcam.generators.mesh.torch_warp import MeshWarpRunner

    runner = MeshWarpRunner(requested=backend, settings=generator.settings, engines_dir=engines, hardware=hardware,
                            intra_op_threads=threads, log=lambda line: print(f"    {line}", flush=True)).open()

    def render(prepared, driven, out):
        return runner.warp(prepared=prepared, displacements=generator.control_displacements(prepared, driven),
                           out_bgr_uint8=out)

    return render, (lambda: runner.allocations), runner.close


def available_backends(hardware) -> list[tuple[str, str | None]]:
    """(backend, reason it is skipped or None) for every backend in BACKENDS."""
    rows: list[tuple[str, str | None]] = [("numpy-cv2", None)]
    rows.append(("torch", None if hardware.torch_available else "torch is not installed"))
    rows.append(("onnxruntime", None if hardware.onnxruntime_available else "onnxruntime is not installed"))
    if hardware.tensorrt_version is None:
        rows.append(("tensorrt", "tensorrt is not installed"))
    elif not (hardware.cuda_available and hardware.torch_cuda):
        rows.append(("tensorrt", "no CUDA GPU (or torch is a CPU build)"))
    else:
        rows.append(("tensorrt", None))
    return rows


def measure(renders: dict[str, Callable], prepared, faces: list, out: np.ndarray,
            frames: int) -> dict[str, list[float]]:
    """Milliseconds per frame of every backend: rounds of BLOCK_FRAMES frames per backend until `frames` each.

    Rounds give every backend the same share of whatever else the machine does meanwhile. Each block starts with
    WARMUP_FRAMES unmeasured frames: the previous backend's thread pool may still be spinning on the cores.
    """
    samples: dict[str, list[float]] = {name: [] for name in renders}
    index = 0
    while any(len(values) < frames for values in samples.values()):
        for name, render in renders.items():
            for _ in range(WARMUP_FRAMES):
                render(prepared, faces[index % len(faces)], out)
            for _ in range(min(BLOCK_FRAMES, frames - len(samples[name]))):
                index += 1
                started = time.perf_counter()
                render(prepared, faces[index % len(faces)], out)
                samples[name].append((time.perf_counter() - started) * 1000.0)
    return samples


def input_copy_ms(prepared, repeats: int = 20) -> dict[str, float]:
    """What a runtime with staging pays per frame to copy the per-avatar inputs (image + weights) it is handed."""
    weights = np.empty_like(prepared.weights)
    image = np.empty((1, 3, *prepared.image_bgr.shape[:2]), np.float32)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(weights, prepared.weights)
        np.copyto(image[0], prepared.image_bgr.transpose(2, 0, 1))
        samples.append((time.perf_counter() - started) * 1000.0)
    return percentiles_ms(samples)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--frames", type=int, default=50, help="measured frames per backend and size")
    parser.add_argument("--memory-frames", type=int, default=300, help="frames of the steady-state memory check")
    parser.add_argument("--avatar", type=Path, default=DEFAULT_AVATAR)
    parser.add_argument("--engines", type=Path, help="where ONNX files are exported (default: a temporary folder)")
    parser.add_argument("--threads", type=int, help="threads for cv2, torch and ONNX Runtime (default: their own)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        import cv2
        import torch

        # Process-wide on purpose: every backend in this run gets the same number of cores.
        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)

    from avatarcam.backends import detect_hardware
    from avatarcam.landmarks import DEFAULT_MODEL_PATH, FaceLandmarker, verify_model_file

    hardware = detect_hardware()
    print(f"hardware: {hardware.summary()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus; "
          f"threads {args.threads or 'default'}", flush=True)
    landmarker = FaceLandmarker(model_path=verify_model_file(DEFAULT_MODEL_PATH), mode="image")
    avatars = {size: prepare_avatar(args.avatar, size, landmarker) for size in args.sizes}
    landmarker.close()
    temporary = None
    engines = args.engines
    if engines is None:
        temporary = tempfile.TemporaryDirectory(prefix="facemimic-bench-")
        engines = Path(temporary.name)

    timings: dict[str, dict[str, dict[str, float]]] = {}
    skipped: dict[str, str] = {}
    memory: dict[str, dict[str, float]] = {}
    memory_size = max(args.sizes)
    usable = []
    for backend, reason in available_backends(hardware):
        if reason is None:
            usable.append(backend)
            timings[backend] = {}
        else:
            skipped[backend] = reason
            print(f"{backend}: skipped ({reason})", flush=True)
    for size in args.sizes:
        generator, prepared = avatars[size]
        faces = driven_sequence(prepared, 60)
        out = np.zeros((size, size, 3), np.uint8)
        opened = {}
        try:
            for backend in usable:
                opened[backend] = frame_function(backend, generator, engines, hardware, args.threads)
            samples = measure({b: f[0] for b, f in opened.items()}, prepared, faces, out, args.frames)
            for backend, values in samples.items():
                timings[backend][str(size)] = percentiles_ms(values)
                print(f"{backend:>12} {size:4d}px: {timings[backend][str(size)]}", flush=True)
            if size == memory_size and args.memory_frames > 0:
                for backend, (render, allocations, _) in opened.items():
                    before_mb, before_alloc = rss_mb(), allocations()
                    for i in range(args.memory_frames):
                        render(prepared, faces[i % len(faces)], out)
                    memory[backend] = {
                        "frames": args.memory_frames,
                        "rss_before_mb": round(before_mb, 1),
                        "rss_after_mb": round(rss_mb(), 1),
                        "staging_allocations_before": before_alloc,
                        "staging_allocations_after": allocations(),
                    }
                    print(f"{backend:>12} memory: {memory[backend]}", flush=True)
        finally:
            for _, _, close in opened.values():
                close()

    print()
    sizes = [str(s) for s in args.sizes]
    header = f"{'backend':>12} | " + " | ".join(f"{s + 'px p50/p95 ms':>20}" for s in sizes)
    header += f" | {'RSS before->after MB':>21} | staging allocs"
    print(header)
    print("-" * len(header))
    for backend, by_size in timings.items():
        cells = " | ".join(f"{by_size[s]['p50']:>9.1f} / {by_size[s]['p95']:>8.1f}" for s in sizes)
        m = memory.get(backend)
        rss = f"{m['rss_before_mb']:.0f} -> {m['rss_after_mb']:.0f}" if m else "-"
        allocs = f"{m['staging_allocations_before']} -> {m['staging_allocations_after']}" if m else "-"
        print(f"{backend:>12} | {cells} | {rss:>21} | {allocs}")
    for backend, reason in skipped.items():
        print(f"{backend:>12} | skipped: {reason}")
    copy = input_copy_ms(avatars[memory_size][1])
    print(f"\nper-frame copy of image + weights into a runtime's staging at {memory_size}px: "
          f"p50 {copy['p50']} ms (paid by onnxruntime and tensorrt, which stage every input every run)")

    fastest_cpu = min((b for b in timings if b != "tensorrt"), key=lambda b: timings[b][str(memory_size)]["p50"])
    report = {
        "model": "mesh_warp",
        "frames": args.frames,
        "warmup_frames_per_block": WARMUP_FRAMES,
        "block_frames": BLOCK_FRAMES,
        "ms_per_frame": timings,
        "memory": memory,
        "skipped": skipped,
        "input_copy_ms": copy,
        "fastest_cpu_backend": fastest_cpu,
        "threads": args.threads,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "hardware": hardware.summary(),
        },
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
