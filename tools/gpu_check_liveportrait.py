#!/usr/bin/env python3
"""LivePortrait on a GPU: torch CUDA fp32 and fp16 ms per frame, fp16-vs-fp32 difference, optional TensorRT.

    python tools/gpu_check_liveportrait.py --json OUT.json [--frames 50] [--tensorrt]
    python tools/gpu_check_liveportrait.py --device cpu --tiny --frames 1   # dry run of this script on the CPU

Random weights of the published widths (or --tiny: the test fixture). One frame is LivePortrait's per-frame work at
batch 1: motion extractor on the driver crop, stitching MLP, warping module + SPADE generator (the source's feature
volume and keypoints are computed once, as per avatar). fp16 is torch.autocast (LivePortrait's own CUDA default).
Live use needs the fp16 frame under 33 ms. With --tensorrt every graph is also built into a TensorRT engine through
FaceMimic's backends (plugin-free: the volumetric sampler is the 4-D GridSample form) and timed; its output is
compared with torch fp32. Exit status 0 when everything ran, whatever the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runs from a copied tree on the GPU machine, where nothing is pip-installed

TINY = ROOT / "tests" / "fixtures" / "liveportrait" / "tiny-weights"
LIVE_BUDGET_MS = 33.0


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _frame(models, f_s, x_s, image, sampler: str):
    """One per-frame step in torch; returns the generated image (1, 3, 512, 512)."""

    from avatarcam.generators.liveportrait import export as lx

    motion = lx.MotionGraph(models.motion)
    pitch, yaw, roll, t, exp, scale, kp = motion(image)
    # Relative motion is numpy arithmetic on 63 numbers in the app; here the driver's keypoints stand in for it.
    x_d = kp * scale.unsqueeze(-1)
    x_d = lx.StitchingGraph(models.stitching)(x_s, x_d.to(x_s.dtype))
    graph = lx.graph_module(models, lx.WARP_GENERATE, sampler=sampler)
    return graph(f_s, x_s, x_d.to(f_s.dtype)).float()


def time_torch(models, device: str, frames: int, fp16: bool, sampler: str) -> tuple[float, object]:
    import torch

    from avatarcam.generators.liveportrait import export as lx

    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, 256, 256, generator=g).to(device)
    driver = torch.rand(1, 3, 256, 256, generator=g).to(device)
    context = torch.autocast(device_type=device.split(":")[0], dtype=torch.float16) if fp16 else torch.no_grad()
    with torch.no_grad(), context:
        f_s = models.appearance(source)
        out = lx.MotionGraph(models.motion)(source)
        x_s = out[6] * out[5].unsqueeze(-1)
        image = _frame(models, f_s, x_s, driver, sampler)  # warm-up (cuDNN autotune, allocations)
        _sync(device)
        times = []
        for _ in range(frames):
            start = time.perf_counter()
            image = _frame(models, f_s, x_s, driver, sampler)
            _sync(device)
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2], image.cpu()


def check_tensorrt(models, report: dict) -> None:
    """Build and time every graph on TensorRT through the backends layer; compare with torch fp32 on CPU inputs."""
    import numpy as np

    from avatarcam.generators.liveportrait.reenactor import LivePortraitRuntime, LivePortraitSettings

    engines = Path(tempfile.mkdtemp(prefix="lp-trt-"))
    settings = LivePortraitSettings(checkpoint=Path("random"), backend="tensorrt", engines_dir=engines)
    start = time.perf_counter()
    runtime = LivePortraitRuntime(models=models, settings=settings, log_line=print)
    report["tensorrt_build_s"] = round(time.perf_counter() - start, 1)
    report["tensorrt_labels"] = runtime.labels
    from avatarcam.generators.liveportrait import export as lx

    rng = np.random.default_rng(0)
    report["tensorrt_ms"], report["tensorrt_vs_torch_fp32_max_abs"] = {}, {}
    for name in lx.GRAPH_NAMES:
        feed = lx.sample_inputs(models, name, rng)
        runner = runtime.runners[name]
        got = runner.run(feed)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            runner.run(feed)
            times.append((time.perf_counter() - start) * 1000)
        report["tensorrt_ms"][name] = round(sorted(times)[10], 2)
        import torch

        module = lx.graph_module(models, name, sampler="torch")
        with torch.no_grad():
            want = module(*(torch.from_numpy(v).to(next(module.parameters()).device) for v in feed.values()))
        want = (want,) if isinstance(want, torch.Tensor) else want
        report["tensorrt_vs_torch_fp32_max_abs"][name] = max(
            float(np.abs(np.asarray(got[s.name], np.float64) - w.float().cpu().numpy()).max())
            for s, w in zip(lx.graph_io(models, name).outputs, want))
    runtime.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--tiny", action="store_true", help="the tiny test weights instead of random full-size ones")
    parser.add_argument("--tensorrt", action="store_true", help="also build and time TensorRT engines")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import torch

    from avatarcam.generators.liveportrait.checkpoint import load_liveportrait
    from avatarcam.generators.liveportrait.reenactor import random_full_size_models

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check_liveportrait: torch sees no CUDA device; use --device cpu for a dry run", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    models = load_liveportrait(TINY) if args.tiny else random_full_size_models(seed=0)
    for net in (models.appearance, models.motion, models.warping, models.generator, models.stitching, models.eye,
                models.lip):
        net.to(args.device)
    report: dict = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                    "weights": "tiny fixture" if args.tiny else "random, published widths", "frames": args.frames,
                    "torch": torch.__version__, "tf32": False}
    ms32, img32 = time_torch(models, args.device, args.frames, fp16=False, sampler="torch")
    ms_slices, img_slices = time_torch(models, args.device, args.frames, fp16=False, sampler="slices")
    report["torch_fp32_ms_per_frame"] = round(ms32, 2)
    report["torch_fp32_slices_sampler_ms_per_frame"] = round(ms_slices, 2)
    report["slices_vs_5d_fp32_max_abs"] = float((img32 - img_slices).abs().max())
    if args.device.startswith("cuda"):
        ms16, img16 = time_torch(models, args.device, args.frames, fp16=True, sampler="torch")
        report["torch_fp16_ms_per_frame"] = round(ms16, 2)
        report["fp16_vs_fp32_max_abs"] = float((img16 - img32).abs().max())
        report["fp16_vs_fp32_mean_abs"] = float((img16 - img32).abs().mean())
        report["fp16_live"] = ms16 < LIVE_BUDGET_MS
        report["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if args.tensorrt:
        for net in (models.appearance, models.motion, models.warping, models.generator, models.stitching,
                    models.eye, models.lip):
            net.to("cpu")
        check_tensorrt(models, report)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
