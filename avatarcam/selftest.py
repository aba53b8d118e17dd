"""`python run.py --check`: open the camera, the landmark model and the virtual camera, and report each."""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from avatarcam.config import Config
from avatarcam.errors import FaceMimicError


@dataclass(frozen=True)
class CheckResult:
    """One line of the self-test report."""

    name: str
    ok: bool
    detail: str


def check_camera(config: Config, *, frames: int = 15) -> tuple[CheckResult, np.ndarray | None]:
    """Open the configured source and read up to `frames` frames: it must deliver, and show a picture (a black or
    uniform camera - lens cover, privacy shutter, a dead capture card - fails). Cameras often start dark, so the
    best of the frames counts."""
    from avatarcam.capture import UNIFORM_SPREAD, SourceSpec, open_capture, picture_spread

    try:
        spec = SourceSpec.parse(config.capture.source)
        capture = open_capture(spec, width=config.capture.width, height=config.capture.height,
                               fps=config.capture.fps)
    except FaceMimicError as exc:
        return CheckResult("camera", False, str(exc)), None
    try:
        best, best_spread, means = None, -1.0, []
        for _ in range(frames):
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            spread = picture_spread(frame)
            means.append(float(frame.mean()))
            if spread > best_spread:
                best, best_spread = frame, spread
            if spread >= UNIFORM_SPREAD:
                break
        if best is None:
            return CheckResult("camera", False, f"{spec.describe()} opened but delivered no frame: close other apps "
                               "using it, or choose another with --source"), None
        if best_spread < UNIFORM_SPREAD:
            shade = "black" if max(means) < 16 else "uniform"
            return CheckResult("camera", False, f"{spec.describe()} delivers a {shade} picture (pixel spread "
                               f"{best_spread:.1f} over {len(means)} frames, mean level {max(means):.0f}): open the "
                               "lens cover or privacy shutter, check the lighting, or choose another camera with "
                               "--source"), best
        fps = capture.get(cv2.CAP_PROP_FPS)
        return CheckResult("camera", True, f"{spec.describe()}: {best.shape[1]}x{best.shape[0]}"
                           + (f" @ {fps:g} fps" if fps else "")), best
    finally:
        capture.release()


def check_landmarks(config: Config, frame: np.ndarray | None) -> CheckResult:
    """Verify and load the landmark model, and run it on the camera frame (or the sample clip)."""
    from avatarcam.capture import iter_frames
    from avatarcam.landmarks import FaceLandmarker, landmark_model_path
    from avatarcam.paths import SAMPLE_DRIVER

    try:
        path = landmark_model_path(config)
        with FaceLandmarker(model_path=path, mode="image") as landmarker:
            image = frame if frame is not None else next(iter_frames(str(SAMPLE_DRIVER)))
            start = time.perf_counter()
            face = landmarker.detect(image)
            ms = (time.perf_counter() - start) * 1000
    except FaceMimicError as exc:
        return CheckResult("landmarks", False, str(exc))
    where = "camera frame" if frame is not None else "sample clip"
    found = "face found" if face is not None else "no face in view (look at the camera)"
    return CheckResult("landmarks", True, f"{path.name} sha256 ok; {found} on the {where} in {ms:.0f} ms")


def check_vcam(config: Config, frames: int = 10) -> CheckResult:
    """Open the virtual camera and send a few frames."""
    from avatarcam.vcam import VirtualCameraSink

    v = config.vcam
    sink = VirtualCameraSink(backend=v.backend, device=v.device, width=v.width, height=v.height, fps=v.fps)
    try:
        sink.open()
        frame = np.full((v.height, v.width, 3), 128, np.uint8)
        start = time.perf_counter()
        for _ in range(frames):
            sink.send(frame)
            sink.sleep_until_next_frame()
        fps = (frames - 1) / max(time.perf_counter() - start, 1e-6)
        return CheckResult("virtual camera", True, f"{sink.device} via {sink.backend}, {v.width}x{v.height}, "
                           f"sent {frames} frames at {fps:.1f} fps")
    except FaceMimicError as exc:
        return CheckResult("virtual camera", False, str(exc))
    finally:
        sink.close()


def run_self_test(config: Config) -> int:
    """Print one line per check; exit code 0 when all pass, 1 otherwise."""
    camera, frame = check_camera(config)
    results = [camera, check_landmarks(config, frame)]
    if config.output.vcam != "off":
        results.append(check_vcam(config))
    for r in results:
        mark = "OK  " if r.ok else "FAIL"
        lines = r.detail.splitlines() or [""]
        print(f"{mark} {r.name:15} {lines[0]}")
        for line in lines[1:]:
            print(f"     {'':15} {line}")
    passed = sum(r.ok for r in results)
    print(f"{passed} of {len(results)} checks passed")
    from avatarcam.licences import licence_lines

    print("models and their licences (README, 'Responsible use'):")
    for line in licence_lines():
        print(f"  - {line}")
    return 0 if passed == len(results) else 1
