"""Soak test of the live pipeline: a looping clip as a 30 fps camera for N minutes, checked as it runs.

    python tools/soak.py [--minutes 30] [--json soak.json] [--source CLIP] [--canvas-size 512]

Runs the real capture thread (the clip looped and paced as a camera), MediaPipe landmarks, motion transfer, the
mesh generator, composition into the 1280x720 camera frame and the fixed-cadence publisher into a sink that checks
every frame the camera would get. Reported (and judged): resident memory growth after warm-up (< 5 %), black
frames sent (0), the longest time without a new rendered frame (< 1 s), and threads that died (none). Exit code 0
when every criterion holds, 1 otherwise; the JSON holds the numbers and a memory sample every 10 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench import DEFAULT_AVATAR, DEFAULT_CLIP, current_rss_mb  # a sibling tool: a script runs with its own folder importable

ROOT = Path(__file__).resolve().parent.parent

MAX_RSS_GROWTH = 0.05
MAX_STALL_S = 1.0
BLACK_LEVEL = 8.0
"""A sent frame whose brightest sampled pixel is below this (0..255) counts as black."""


class CheckingSink:
    """A FrameSink that records, per frame sent, whether it was black; cheap enough for 30 fps for hours."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.sent = 0
        self.black = 0
        self.max_gap_s = 0.0
        self._last_s: float | None = None

    def open(self) -> CheckingSink:
        return self

    def send(self, frame_bgr) -> None:
        now = time.perf_counter()
        if self._last_s is not None:
            self.max_gap_s = max(self.max_gap_s, now - self._last_s)
        self._last_s = now
        self.sent += 1
        if float(frame_bgr[::16, ::16].max()) < BLACK_LEVEL:
            self.black += 1

    def close(self) -> None:
        pass


def soak(minutes: float, clip: Path, avatar_path: Path, canvas_size: int, warmup_s: float,
         progress: bool = True) -> dict:
    """Run the pipeline for `minutes` and return the measurements and verdicts."""
    from avatarcam.capture import CaptureThread, SourceSpec
    from avatarcam.config import load_config
    from avatarcam.generators import build_reenactor
    from avatarcam.landmarks import FaceLandmarker, landmark_model_path
    from avatarcam.motion import Calibrator
    from avatarcam.pipeline import AvatarStore, LandmarkWorker, RenderWorker
    from avatarcam.publisher import Publisher
    from avatarcam.vcam import FrameComposer

    config = load_config(None, {"generator.canvas_size": canvas_size})
    model_path = landmark_model_path(config)
    reenactor = build_reenactor(config.generator, config.motion)
    store = AvatarStore(avatar_path.parent, lambda: FaceLandmarker(model_path=model_path, mode="image"), reenactor)
    first, _ = store.load_first(avatar_path)
    capture = CaptureThread(SourceSpec.parse(str(clip)), loop=True, pace_fps=30.0)
    landmarker = FaceLandmarker(model_path=model_path, mode="video")
    landmarks = LandmarkWorker(capture.frames, landmarker)
    render = RenderWorker(landmarks.observed, reenactor, store, Calibrator(window_s=0.0, strict=False))
    composer = FrameComposer(width=config.vcam.width, height=config.vcam.height, mode=config.vcam.fit,
                             background=config.vcam.background)
    sink = CheckingSink(config.vcam.width, config.vcam.height)
    publisher = Publisher(sink, fps=config.vcam.fps, first_frame_bgr=composer.compose(first.canvas_bgr).copy())
    for part in (capture, landmarks, render, publisher):
        part.start()
    start = time.perf_counter()
    end = start + minutes * 60
    samples: list[tuple[float, float]] = []
    next_sample = start
    last_new_s = None
    max_stall_s = 0.0
    rendered_count = 0
    seq = 0
    died: list[str] = []
    try:
        while time.perf_counter() < end:
            seq, rendered = render.rendered.get(seq, timeout_s=0.1)
            now = time.perf_counter()
            if rendered is not None:
                publisher.submit(composer.compose(rendered.canvas_bgr))
                if last_new_s is not None and now - start > warmup_s:
                    max_stall_s = max(max_stall_s, now - last_new_s)
                last_new_s = now
                rendered_count += 1
            elif last_new_s is not None and now - start > warmup_s:
                max_stall_s = max(max_stall_s, now - last_new_s)
            if now >= next_sample:
                samples.append((round(now - start, 1), round(current_rss_mb(), 1)))
                next_sample += 10.0
                if progress:
                    print(f"\rsoak {now - start:7.0f} s / {minutes * 60:.0f} s  rss {samples[-1][1]:.0f} MB  "
                          f"rendered {rendered_count}  black {sink.black}  longest stall {max_stall_s:.2f} s",
                          end="", file=sys.stderr, flush=True)
            died = [name for name, alive in (("capture", capture.is_running), ("landmarks", landmarks.error is None),
                                             ("render", render.error is None),
                                             ("publisher", publisher.is_running)) if not alive]
            if died:
                break
    finally:
        for part in (capture, landmarks, render):
            part.stop()
        publisher.stop()
        landmarker.close()
    if progress:
        print(file=sys.stderr)
    seconds = time.perf_counter() - start
    after_warmup = [rss for t, rss in samples if t >= warmup_s] or [rss for _, rss in samples]
    baseline, final = after_warmup[0], samples[-1][1]
    growth = (final - baseline) / baseline
    return {
        "minutes_planned": minutes, "seconds_run": round(seconds, 1), "canvas_size": canvas_size,
        "camera_fps": 30.0, "clip": str(clip), "avatar": str(avatar_path),
        "frames_rendered": rendered_count, "rendered_fps": round(rendered_count / max(seconds, 1e-6), 2),
        "frames_sent": sink.sent, "black_frames": sink.black, "longest_stall_s": round(max_stall_s, 3),
        "longest_send_gap_s": round(sink.max_gap_s, 3), "camera_frames_dropped": capture.frames.dropped,
        "rss_after_warmup_mb": baseline, "rss_end_mb": final, "rss_max_mb": max(r for _, r in samples),
        "rss_growth": round(growth, 4), "threads_died": died, "render_failures": render.render_failures,
        "warmup_s": warmup_s, "rss_samples": samples,
        "machine": f"{platform.system()} {platform.machine()}, python {platform.python_version()}",
        "pass": {"rss_growth_under_5_percent": growth < MAX_RSS_GROWTH, "no_black_frame": sink.black == 0,
                 "no_stall_over_1_s": max_stall_s <= MAX_STALL_S, "no_thread_death": not died},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--source", default=str(DEFAULT_CLIP), help="the clip looped as the camera")
    parser.add_argument("--avatar", default=str(DEFAULT_AVATAR))
    parser.add_argument("--canvas-size", type=int, default=512)
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="memory baseline and stall timing start after this (default: 60 s, or 10%% of short runs)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes {args.minutes} must be positive")
    warmup = args.warmup_s if args.warmup_s is not None else min(60.0, args.minutes * 6.0)
    report = soak(args.minutes, Path(args.source), Path(args.avatar), args.canvas_size, warmup,
                  progress=not args.quiet)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=2))
    return 0 if all(report["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
