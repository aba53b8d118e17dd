"""Benchmark the live pipeline on a fixture clip: per-stage and end-to-end latency, fps, drops, memory.

    python tools/bench.py --json OUT.json [--sizes 256 512] [--seconds 12] [--camera-fps 30]
    python tools/bench.py --model swap --json OUT.json [--frame-size 1280x720]

The clip is played as a simulated camera at --camera-fps (latest frame wins, as with a real webcam) through the
real capture thread, MediaPipe landmarks, motion transfer, the mesh generator, composition into the 1280x720
camera frame and a sink that copies the frame out. Each canvas size runs in its own process, so peak memory is
per configuration. A second run per size feeds a 60 fps camera to measure the most frames per second the
pipeline can make (a faster feed only spends CPU on decoding frames that would be dropped).
The JSON's top level holds the default configuration (512); "runs" holds every configuration.

--model swap measures face-swap mode, whose output is the camera frame itself: the clip is first scaled into a
--frame-size camera picture (default 1280x720; the 512x512 fixture scaled to the frame height and centred on a
blurred copy of itself), and each run reports the swap's own stages (map, colour, blend) beside the pipeline's.
The "virtual avatar" badge is stamped in the compose stage, as on the live camera.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from avatarcam.generators import GENERATORS
from avatarcam.timing import percentiles_ms

ROOT = Path(__file__).resolve().parent.parent

STAGES = ("decode", "landmarks", "motion", "generate", "compose", "output")
SWAP_STAGES = ("swap_map", "swap_colour", "swap_blend")
"""Parts of the swap's generate stage (generators/swap/reenactor.py)."""
THROUGHPUT_CAMERA_FPS = 60.0
DEFAULT_CLIP = ROOT / "avatarcam" / "samples" / "driver.mp4"
DEFAULT_AVATAR = ROOT / "avatars" / "astronaut.png"


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def camera_sized_clip(clip: Path, size: tuple[int, int], out_path: Path) -> Path:
    """The clip scaled to the height of a (width, height) camera picture and centred on a blurred, stretched copy of
    itself (what a wide webcam frame with a face in the middle looks like to the pipeline); written as MJPG AVI."""
    import cv2

    from avatarcam.capture import file_info, iter_frames

    width, height = size
    _, fps, _ = file_info(str(clip))
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter.fourcc(*"MJPG"), fps or 25.0, (width, height))
    for frame in iter_frames(str(clip)):
        h, w = frame.shape[:2]
        inner_w = min(width, round(w * height / h))
        picture = cv2.GaussianBlur(cv2.resize(frame, (width // 8, height // 8)), (0, 0), 3)
        picture = cv2.resize(picture, (width, height))
        x0 = (width - inner_w) // 2
        picture[:, x0:x0 + inner_w] = cv2.resize(frame, (inner_w, height), interpolation=cv2.INTER_LINEAR)
        writer.write(picture)
    writer.release()
    return out_path


def run_one(size: int, seconds: float, camera_fps: float, clip: Path, avatar_path: Path,
            backend: str = "auto", model: str = "mesh") -> dict:
    """One configuration, in this process: returns the measurements."""
    import numpy as np

    from avatarcam.capture import CaptureThread, SourceSpec
    from avatarcam.config import load_config
    from avatarcam.disclosure import DisclosureBadge
    from avatarcam.generators import build_reenactor, family, landmark_faces
    from avatarcam.landmarks import FaceLandmarker, landmark_model_path
    from avatarcam.motion import Calibrator
    from avatarcam.pipeline import AvatarStore, LandmarkWorker, RenderWorker
    from avatarcam.vcam import FrameComposer

    config = load_config(None, {"generator.canvas_size": size, "generator.backend": backend,
                                "generator.model": model})
    model_path = landmark_model_path(config)
    reenactor = build_reenactor(config.generator, config.motion)
    store = AvatarStore(ROOT / "avatars", lambda: FaceLandmarker(model_path=model_path, mode="image"), reenactor)
    prepare_start = time.perf_counter()
    store.load_first(avatar_path)
    prepare_ms = (time.perf_counter() - prepare_start) * 1000
    paced = camera_fps > 0
    capture = CaptureThread(SourceSpec("file", str(clip)), pace=paced, pace_fps=camera_fps or None, loop=True)
    landmarker = FaceLandmarker(model_path=model_path, mode="video", num_faces=landmark_faces(config.generator))
    landmarks = LandmarkWorker(capture.frames, landmarker)
    worker = RenderWorker(landmarks.observed, reenactor, store, Calibrator(window_s=0.0, strict=False))
    composer = FrameComposer(width=1280, height=720, mode="fit", background="blur")
    badge = DisclosureBadge(enabled=family(model).draws_on_frame)  # output.badge auto: on in swap mode
    sink = np.zeros((720, 1280, 3), np.uint8)
    stage_names = STAGES + (SWAP_STAGES if model == "swap" else ())
    stage = {name: [] for name in stage_names}
    latency, done_times = [], []
    capture.start()
    landmarks.start()
    worker.start()
    warmup_s = 2.0
    start = time.perf_counter()
    measuring_from = start + warmup_s
    captured_at_start = rendered_at_start = None
    seq = 0
    frame_size = None
    while time.perf_counter() - start < seconds + warmup_s:
        seq, rendered = worker.rendered.get(seq, timeout_s=0.5)
        if rendered is None:
            continue
        frame_size = list(rendered.frame.image_bgr.shape[1::-1])
        t0 = time.perf_counter()
        frame = badge.stamp(composer.compose(rendered.canvas_bgr), composer.picture_box)
        t1 = time.perf_counter()
        np.copyto(sink, frame)  # the virtual camera's send: one copy of the frame into the device buffer
        t2 = time.perf_counter()
        if t0 < measuring_from:
            continue
        if captured_at_start is None:
            captured_at_start, rendered_at_start = capture.frames_read, worker.frames_rendered
            rss_start_mb = current_rss_mb()
        for name in ("decode", "landmarks", "motion", "generate", *stage_names[len(STAGES):]):
            stage[name].append(rendered.stage_ms.get(name, 0.0))
        stage["compose"].append((t1 - t0) * 1000)
        stage["output"].append((t2 - t1) * 1000)
        latency.append((t2 - rendered.frame.capture_time_s) * 1000)
        done_times.append(t2)
    elapsed = done_times[-1] - done_times[0] if len(done_times) > 1 else float("nan")
    captured = capture.frames_read - (captured_at_start or 0)
    rendered_count = worker.frames_rendered - (rendered_at_start or 0)
    rss_end_mb = current_rss_mb()  # before the avatar-switch phase loads the whole folder
    switch_ms = measure_avatar_switches(worker, store)
    capture.stop()
    landmarks.stop()
    worker.stop()
    landmarker.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": model,
        "frame_size": frame_size,
        "canvas": size,
        "camera_fps": camera_fps if paced else None,
        "fps": round((len(done_times) - 1) / elapsed, 2) if len(done_times) > 1 else 0.0,
        "latency_ms": percentiles_ms(latency),
        "dropped_frames": int(max(0, captured - rendered_count)) if paced else None,
        "frames_output": len(done_times),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "stages": {name: percentiles_ms(values) for name, values in stage.items()},
        "avatar_prepare_ms": round(prepare_ms, 1),
        "rss_growth_mb": round(rss_end_mb - rss_start_mb, 1),
        "rss_mb": round(rss_end_mb, 1),  # at the end of the measured run (peak_rss_mb includes the switch phase)
        "backend": backend,
        "runtime": reenactor.runtime,
        "render_failures": worker.render_failures,
        "avatar_switch_ms": percentiles_ms(switch_ms),
    }


def measure_avatar_switches(worker, store, switches: int = 8) -> list[float]:
    """After the measured run: load the avatars folder, then step through it; ms from each next-avatar command to
    the end of the first frame rendered with the new avatar (the render worker's switch_ms)."""
    from avatarcam.commands import Command

    store.reload()
    if not store.loaded.wait(120) or len(store.entries()) < 2:
        return []
    before = len(worker.switch_ms)
    seq = worker.rendered.peek()[0]
    for _ in range(switches):
        worker.submit(Command.NEXT_AVATAR)
        deadline = time.perf_counter() + 5.0
        while len(worker.switch_ms) == before and time.perf_counter() < deadline:
            seq, _ = worker.rendered.get(seq, timeout_s=0.5)
        before = len(worker.switch_ms)
    return worker.switch_ms[-switches:]


NEURAL_BENCHMARKS = {"fomm": "bench_fomm.py", "liveportrait": "bench_liveportrait.py"}
"""--model -> the tool that benchmarks that neural generator per runtime."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per run (after 2 s warm-up)")
    parser.add_argument("--camera-fps", type=float, default=30.0, help="simulated camera rate")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--avatar", type=Path, default=DEFAULT_AVATAR)
    parser.add_argument("--no-throughput", action="store_true", help="skip the 60 fps maximum-throughput runs")
    parser.add_argument("--backend", nargs="+", default=["auto"],
                        choices=("auto", "tensorrt", "onnxruntime", "torch"),
                        help="generator runtimes to compare (auto = the fastest on this machine)")
    parser.add_argument("--model", choices=tuple(GENERATORS), default="mesh",
                        help="fomm / liveportrait: run tools/bench_fomm.py / tools/bench_liveportrait.py "
                        "(per-runtime ms per frame, switch time, memory)")
    parser.add_argument("--checkpoint", type=Path, help="with --model fomm or liveportrait: real weights (default: "
                        "random weights of the published shapes, fine for timing)")
    parser.add_argument("--frame-size", default="1280x720",
                        help="with --model swap: camera picture size WIDTHxHEIGHT the clip is scaled into")
    parser.add_argument("--child", nargs=4, metavar=("SIZE", "CAMERA_FPS", "BACKEND", "MODEL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model in NEURAL_BENCHMARKS:
        cmd = [sys.executable, str(Path(__file__).with_name(NEURAL_BENCHMARKS[args.model])),
               "--json", str(args.json or Path(f"bench-{args.model}.json"))]
        if args.checkpoint:
            cmd += ["--checkpoint", str(args.checkpoint)]
        return subprocess.call(cmd)
    if args.child:
        result = run_one(int(args.child[0]), args.seconds, float(args.child[1]), args.clip, args.avatar,
                         args.child[2], args.child[3])
        print("RESULT " + json.dumps(result))
        return 0
    runs = []
    clip = args.clip
    if args.model == "swap":
        import tempfile

        width, height = (int(v) for v in args.frame_size.lower().split("x"))
        clip = camera_sized_clip(args.clip, (width, height), Path(tempfile.mkdtemp()) / f"clip-{width}x{height}.avi")
        args.sizes = args.sizes[:1]  # the avatar canvas size does not change the swap's cost much
    plan = [(size, fps, "auto") for size in args.sizes
            for fps in [args.camera_fps] + ([] if args.no_throughput else [THROUGHPUT_CAMERA_FPS])]
    plan += [(size, args.camera_fps, b) for b in args.backend if b != "auto" for size in args.sizes]
    if "auto" not in args.backend:
        plan = [(size, args.camera_fps, "auto") for size in args.sizes[:1]] + [p for p in plan if p[2] != "auto"]
    for size, camera_fps, backend in plan:
        cmd = [sys.executable, __file__, "--child", str(size), str(camera_fps), backend, args.model,
               "--seconds", str(args.seconds), "--clip", str(clip), "--avatar", str(args.avatar)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GLOG_minloglevel": "2"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        run = json.loads(line[len("RESULT "):])
        runs.append(run)
        mode = f"{args.model} camera {camera_fps:g} fps, {run['runtime']}"
        if args.model == "swap":
            mode += f", {run['frame_size'][0]}x{run['frame_size'][1]}"
        stages = "  ".join(f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in run["stages"].items())
        print(f"{size:4d}px {mode:>14}: {run['fps']:6.1f} fps  latency p50 {run['latency_ms']['p50']:.1f} "
              f"p95 {run['latency_ms']['p95']:.1f} ms  dropped {run['dropped_frames']}  "
              f"RSS {run['rss_mb']:.0f} MB (+{run['rss_growth_mb']:.1f} MB while running)\n"
              f"        stages p50/p95 ms: {stages}\n"
              f"        avatar switch p50/p95 ms: {run['avatar_switch_ms']['p50']:.1f}/"
              f"{run['avatar_switch_ms']['p95']:.1f}  (peak RSS {run['peak_rss_mb']:.0f} MB with the folder loaded)",
              flush=True)
    default = next(r for r in runs if r["canvas"] == args.sizes[0] and r["camera_fps"] == args.camera_fps)
    throughput = {r["canvas"]: r["fps"] for r in runs
                  if r["camera_fps"] == THROUGHPUT_CAMERA_FPS and r["backend"] == "auto"}
    report = {**default, "max_fps": throughput, "runs": runs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
