"""Offline, frame-aligned rendering: output frame t is made from driver frame t, with the driver's count and fps."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avatarcam.avatars import Avatar
from avatarcam.capture import (
    ends_early_message,
    file_info,
    frame_timestamps,
    iter_frames,
    iter_timed_frames,
    no_frames_message,
)
from avatarcam.errors import DeviceError, FaceMimicError
from avatarcam.generators import output_shape
from avatarcam.generators.base import Reenactor
from avatarcam.landmarks import FaceLandmarker
from avatarcam.sinks.video_file import open_writer
from avatarcam.types import Frame, Observed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderReport:
    """What an offline render did."""

    out_path: Path
    frames: int
    fps: float
    faces_found: int
    seconds: float
    driver_frames: int = 0
    """Frames decoded from the driver (differs from `frames` only for variable or mislabelled frame rates)."""


@dataclass(frozen=True)
class DriverTiming:
    """How driver frames map onto a constant-rate output, from the frames' own timestamps."""

    fps: float
    """Output frame rate: the driver's typical frame interval (its median), not the header's nominal rate."""
    source_index: np.ndarray
    """(N_out,) int64: the driver frame shown in each output frame (repeats and skips only for variable rates)."""
    driver_frames: int

    @property
    def duration_s(self) -> float:
        return len(self.source_index) / self.fps


def driver_timing(times_s: list[float], nominal_fps: float) -> DriverTiming:
    """Output timing for driver frames presented at `times_s` (seconds, in decode order).

    Each output frame k (at t0 + k / fps) shows the driver frame being presented then (nearest start within half
    a frame), so the output lasts as long as the driver and plays at its speed. A constant-rate driver maps frame
    t to frame t, whatever its header says. Timestamps that are missing or not increasing fall back to the nominal
    rate. Raises FaceMimicError when there is no frame.
    """
    count = len(times_s)
    if count == 0:
        raise FaceMimicError("the driver has no decodable frame")
    nominal = nominal_fps if nominal_fps and 1.0 <= nominal_fps <= 240.0 else 25.0
    times = np.asarray(times_s, np.float64)
    deltas = np.diff(times)
    if count < 2 or not np.all(deltas > 0):
        return DriverTiming(fps=nominal, source_index=np.arange(count), driver_frames=count)
    typical = float(np.median(deltas))
    fps = 1.0 / typical if 1.0 <= 1.0 / typical <= 240.0 else nominal
    if abs(fps - round(fps)) < 0.01 * fps:  # 29.97 stays 29.97; 25.0000001 becomes 25
        fps = float(round(fps))
    duration = times[-1] - times[0] + deltas[-1]  # the last frame lasts as long as the one before it
    out_count = max(1, int(round(duration * fps)))
    starts = times[0] + np.arange(out_count) / fps
    index = np.searchsorted(times, starts + 0.5 / fps, side="right") - 1
    return DriverTiming(fps=fps, source_index=np.clip(index, 0, count - 1), driver_frames=count)


def side_by_side(driver_bgr: np.ndarray, canvas_bgr: np.ndarray) -> np.ndarray:
    """Driver frame scaled to the canvas height, then the avatar canvas, in one image."""
    size = canvas_bgr.shape[0]
    h, w = driver_bgr.shape[:2]
    driver = cv2.resize(driver_bgr, (round(w * size / h), size), interpolation=cv2.INTER_AREA)
    return np.hstack([driver, canvas_bgr])


def neutral_face_at(driver_path: str, index: int, model_path: Path, *, require_face: bool = True):
    """Landmarks of driver frame `index` (the neutral frame), with an error when it has no face and one is required."""
    i = -1
    for i, frame in enumerate(iter_frames(driver_path)):
        if i == index:
            if not require_face:
                return Observed(frame=Frame(frame, i, 0.0), face=None)
            with FaceLandmarker(model_path=model_path, mode="image") as landmarker:
                face = landmarker.detect(frame)
            if face is None:
                raise FaceMimicError(f"no face in driver frame {index} of {driver_path}: choose a frame with a "
                                     "clearly visible, relaxed face with --neutral-frame N")
            return Observed(frame=Frame(frame, i, 0.0), face=face)
    if i < 0:
        raise DeviceError(no_frames_message(driver_path))
    raise FaceMimicError(f"--neutral-frame {index} is past the end of {driver_path}: it has {i + 1} frames "
                         f"(choose 0..{i})")


def _driver_plan(driver_path: str) -> tuple[list[float], DriverTiming]:
    """One decoding pass over the driver: its frame times (the true count; headers may lie) and the output timing.
    DeviceError when no frame decodes; a warning naming the frame where a truncated file stops."""
    header_count, nominal_fps, _ = file_info(driver_path)
    times = frame_timestamps(driver_path)
    if not times:
        raise DeviceError(no_frames_message(driver_path))
    cut_short = ends_early_message(driver_path, len(times), header_count)
    if cut_short:
        log.warning("%s", cut_short)
    return times, driver_timing(times, nominal_fps)


def _observe(landmarker: FaceLandmarker | None, frame: Frame) -> Observed:
    """The frame with every face the landmarker finds in it (none without a landmarker or when it fails: one bad
    frame is rendered as "face lost", never dropped)."""
    try:
        found = [] if landmarker is None else landmarker.detect_all(frame.image_bgr,
                                                                    int(round(frame.capture_time_s * 1000)))
    except Exception as exc:
        log.warning("landmarks failed on frame %d: %s", frame.index, exc)
        found = []
    return Observed(frame=frame, face=found[0] if found else None, more_faces=tuple(found[1:]))


def render_video(driver_path: str, avatar: Avatar, prepared, reenactor: Reenactor, out_path: Path, *,
                 model_path: Path, neutral_frame: int = 0, sbs: bool = False, progress: bool = True,
                 num_faces: int = 1, stamp: Callable[[np.ndarray], np.ndarray] | None = None) -> RenderReport:
    """Render the driver in order at a constant rate that follows the frames' own timestamps.

    A constant-rate driver gives exactly its frames, one output frame each (nothing dropped or duplicated), at its
    true rate even when the header says otherwise; a variable-rate one (phone and browser recordings) is resampled
    so the output lasts as long as the driver. Raises DeviceError for a video that opens but decodes no frame.
    """
    times, timing = _driver_plan(driver_path)
    fps = timing.fps
    repeats = np.bincount(timing.source_index, minlength=timing.driver_frames)
    # A reenactor that does not use landmarks (FOMM without cropping) needs no face, so MediaPipe is not run.
    needs_landmarks = reenactor.needs_landmarks
    neutral_obs = neutral_face_at(driver_path, neutral_frame, model_path, require_face=needs_landmarks)
    neutral = reenactor.neutral_from([neutral_obs])
    reenactor.reset()
    canvas = np.zeros(output_shape(reenactor, None), np.uint8)
    writer = None
    # One text line on stderr: "rendering [#############                 ] 40/75 29.80 frames/s".
    bar = tqdm(total=len(timing.source_index), desc="rendering", disable=not progress, ascii=" #", unit=" frames",
               bar_format="{desc} [{bar:30}] {n_fmt}/{total_fmt} {rate_fmt}")
    start = time.perf_counter()
    faces = 0
    written = 0
    landmarks = (FaceLandmarker(model_path=model_path, mode="video", num_faces=num_faces) if needs_landmarks
                 else contextlib.nullcontext())
    with landmarks as landmarker:
        try:
            for t, (frame_bgr, stamp_s) in enumerate(iter_timed_frames(driver_path)):
                if t >= len(repeats):
                    break  # a frame the timing pass did not see (should not happen): never write past the plan
                time_s = (stamp_s - times[0]) if stamp_s is not None else t / fps
                observed = _observe(landmarker, Frame(frame_bgr, t, time_s))
                faces += observed.face is not None
                if repeats[t] == 0:
                    continue  # shown by no output frame (a burst in a variable-rate driver): landmarks only
                shape = output_shape(reenactor, frame_bgr.shape)
                if canvas.shape != shape:
                    canvas = np.zeros(shape, np.uint8)
                reenactor.render(prepared, observed, neutral, time_s, canvas)
                shown = canvas if stamp is None else stamp(canvas)  # the disclosure badge, as on recordings
                image = side_by_side(frame_bgr, shown) if sbs else shown
                if writer is None:
                    writer = open_writer(out_path, fps, (image.shape[1], image.shape[0]))
                for _ in range(repeats[t]):
                    writer.write(image)
                    written += 1
                bar.update(repeats[t])
        finally:
            if writer is not None:
                writer.release()
    bar.close()
    if written == 0:
        raise DeviceError(no_frames_message(driver_path))
    return RenderReport(out_path=out_path, frames=written, fps=fps, faces_found=faces,
                        seconds=time.perf_counter() - start, driver_frames=timing.driver_frames)
