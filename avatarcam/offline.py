"""Offline, frame-aligned rendering: output frame t is made from driver frame t, with the driver's count and fps."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avatarcam.avatars import Avatar
from avatarcam.capture import file_info, iter_frames
from avatarcam.errors import DeviceError, FaceMimicError
from avatarcam.generators.base import Reenactor
from avatarcam.landmarks import FaceLandmarker
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


def open_writer(out_path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """An mp4, avi or lossless mkv (FFV1) writer for (width, height) frames; a clear error when unusable."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    codec = {".avi": "MJPG", ".mkv": "FFV1"}.get(out_path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*codec), fps, size)
    if not writer.isOpened():
        raise DeviceError(f"cannot write video {out_path}: use a .mp4, .avi or .mkv name in a writable folder")
    return writer


def side_by_side(driver_bgr: np.ndarray, canvas_bgr: np.ndarray) -> np.ndarray:
    """Driver frame scaled to the canvas height, then the avatar canvas, in one image."""
    size = canvas_bgr.shape[0]
    h, w = driver_bgr.shape[:2]
    driver = cv2.resize(driver_bgr, (round(w * size / h), size), interpolation=cv2.INTER_AREA)
    return np.hstack([driver, canvas_bgr])


def neutral_face_at(driver_path: str, index: int, model_path: Path, *, require_face: bool = True):
    """Landmarks of driver frame `index` (the neutral frame), with an error when it has no face and one is required."""
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
    raise FaceMimicError(f"--neutral-frame {index} is past the end of {driver_path}: it has {i + 1} frames")


def render_video(driver_path: str, avatar: Avatar, prepared, reenactor: Reenactor, out_path: Path, *,
                 model_path: Path, neutral_frame: int = 0, sbs: bool = False, progress: bool = True) -> RenderReport:
    """Render every driver frame in order; nothing is dropped or duplicated."""
    count, fps, _ = file_info(driver_path)
    # A reenactor that does not use landmarks (FOMM without cropping) needs no face, so MediaPipe is not run.
    needs_landmarks = reenactor.needs_landmarks
    neutral_obs = neutral_face_at(driver_path, neutral_frame, model_path, require_face=needs_landmarks)
    neutral = reenactor.neutral_from([neutral_obs])
    reenactor.reset()
    size = reenactor.canvas_size
    canvas = np.zeros((size, size, 3), np.uint8)
    writer = None
    # One text line on stderr: "rendering [#############                 ] 40/75 29.80 frames/s".
    bar = tqdm(total=count, desc="rendering", disable=not progress, ascii=" #", unit=" frames",
               bar_format="{desc} [{bar:30}] {n_fmt}/{total_fmt} {rate_fmt}")
    start = time.perf_counter()
    faces = 0
    written = 0
    landmarks = FaceLandmarker(model_path=model_path, mode="video") if needs_landmarks else contextlib.nullcontext()
    with landmarks as landmarker:
        try:
            for t, frame_bgr in enumerate(iter_frames(driver_path)):
                time_s = t / fps
                try:
                    face = None if landmarker is None else landmarker.detect(frame_bgr, int(round(time_s * 1000)))
                except Exception as exc:  # one bad frame is rendered as "face lost", never dropped
                    log.warning("landmarks failed on frame %d: %s", t, exc)
                    face = None
                faces += face is not None
                observed = Observed(frame=Frame(frame_bgr, t, time_s), face=face)
                reenactor.render(prepared, observed, neutral, time_s, canvas)
                image = side_by_side(frame_bgr, canvas) if sbs else canvas
                if writer is None:
                    writer = open_writer(out_path, fps, (image.shape[1], image.shape[0]))
                writer.write(image)
                written += 1
                bar.update(1)
        finally:
            if writer is not None:
                writer.release()
    bar.close()
    return RenderReport(out_path=out_path, frames=written, fps=fps, faces_found=faces,
                        seconds=time.perf_counter() - start)
