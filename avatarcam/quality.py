"""Measure how well an output video follows its driver: the landmark detector runs on both and we compare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarcam.capture import iter_frames
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import eye_openness, mouth_openness, rotation_to_euler_deg
from avatarcam.types import FaceObservation


@dataclass(frozen=True)
class Signals:
    """Per-frame expression and pose signals of one video; NaN where no face was found."""

    mouth: np.ndarray
    """(T,) inner-lip gap over mouth width."""
    eyes: np.ndarray
    """(T,) mean lid gap over eye width of both eyes."""
    yaw_deg: np.ndarray
    pitch_deg: np.ndarray


def face_signals(face: FaceObservation | None) -> tuple[float, float, float, float]:
    """(mouth, eyes, yaw, pitch) of one face; NaNs for None."""
    if face is None:
        return (np.nan,) * 4
    yaw, pitch, _ = rotation_to_euler_deg(face.head_matrix[:3, :3])
    return mouth_openness(face.points_px), float(eye_openness(face.points_px).mean()), yaw, pitch


def video_signals(frames, model_path: Path, fps: float = 25.0) -> Signals:
    """Signals of an iterable of (H, W, 3) uint8 BGR frames, tracked in video mode."""
    rows = []
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        for t, frame in enumerate(frames):
            rows.append(face_signals(landmarker.detect(frame, int(round(t * 1000 / fps)))))
    a = np.array(rows, np.float64).reshape(-1, 4)
    return Signals(mouth=a[:, 0], eyes=a[:, 1], yaw_deg=a[:, 2], pitch_deg=a[:, 3])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the frames where both are finite."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (optionally inside a boolean mask)."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        diff = diff[mask]
    mse = float(diff.mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def face_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the face oval (landmarks in pixels) for an image of (height, width)."""
    from avatarcam import landmarks as lm

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(points[list(lm.FACE_OVAL), :2]).astype(np.int32)], 1)
    return mask.astype(bool)


def frame_jumps(path_or_frames) -> np.ndarray:
    """(T-1,) mean absolute difference between consecutive frames, in grey levels."""
    frames = iter_frames(str(path_or_frames)) if isinstance(path_or_frames, (str, Path)) else path_or_frames
    previous, jumps = None, []
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)
        if previous is not None:
            jumps.append(float(np.abs(grey - previous).mean()))
        previous = grey
    return np.array(jumps)


@dataclass(frozen=True)
class QualityReport:
    """How an output follows its driver."""

    mouth_corr: float
    eyes_corr: float
    yaw_corr: float
    pitch_corr: float
    output_faces: int
    driver_faces: int
    frames: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def compare(driver: Signals, output: Signals) -> QualityReport:
    """Correlations of the output's signals with the driver's."""
    return QualityReport(
        mouth_corr=correlation(driver.mouth, output.mouth), eyes_corr=correlation(driver.eyes, output.eyes),
        yaw_corr=correlation(driver.yaw_deg, output.yaw_deg),
        pitch_corr=correlation(driver.pitch_deg, output.pitch_deg),
        output_faces=int(np.isfinite(output.mouth).sum()), driver_faces=int(np.isfinite(driver.mouth).sum()),
        frames=len(driver.mouth),
    )
