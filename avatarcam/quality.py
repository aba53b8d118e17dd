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


# ---------------------------------------------------------------------------------------------------------------
# An independent reader: dlib's HOG face detector and 68-point shape predictor (iBUG 300-W layout), which shares no
# model with MediaPipe, so a warp is not graded by the detector that drove it. dlib comes from the `dlib-bin` wheel
# and the predictor file from the `face-recognition-models` package (both in requirements-dev.txt).

_IBUG_RIGHT_EYE = (36, 37, 38, 39, 40, 41)  # subject's right eye: corner, two upper, corner, two lower
_IBUG_LEFT_EYE = (42, 43, 44, 45, 46, 47)
_IBUG_INNER_LIPS = ((61, 67), (62, 66), (63, 65))  # upper inner lip point over lower inner lip point
_IBUG_MOUTH_CORNERS = (48, 54)
# A generic head for the pose: rigid iBUG points (jaw near the ears, nose, eye corners) in millimetres, x to the
# image right, y down, z away from the camera, nose tip at the origin; rough adult proportions (outer eye corners
# 88 mm apart, nose tip 30-40 mm in front of the eye corners, the jaw by the ears 100 mm behind the tip).
_IBUG_HEAD_MM = {
    0: (-72.0, -35.0, 100.0), 1: (-71.0, -15.0, 95.0), 15: (71.0, -15.0, 95.0), 16: (72.0, -35.0, 100.0),
    27: (0.0, -40.0, 25.0), 28: (0.0, -27.0, 17.0), 30: (0.0, 0.0, 0.0), 31: (-13.0, 8.0, 18.0), 33: (0.0, 10.0, 12.0),
    35: (13.0, 8.0, 18.0), 36: (-44.0, -38.0, 42.0), 39: (-15.0, -37.0, 30.0), 42: (15.0, -37.0, 30.0),
    45: (44.0, -38.0, 42.0),
}


@dataclass(frozen=True)
class IndependentSignals:
    """Per-frame signals read by dlib's 68-point landmarks; NaN where dlib found no face."""

    mouth: np.ndarray
    """(T,) mean inner-lip gap over mouth width."""
    eyes: np.ndarray
    """(T, 2) eye aspect ratio (Soukupova and Cech 2016) of the subject's right and left eye: ~0.3 open, <0.15 shut."""
    turn: np.ndarray
    """(T,) head yaw in degrees (solvePnP of the rigid points on a generic head, near-orthographic camera)."""
    nod: np.ndarray
    """(T,) head pitch in degrees (same fit)."""


def _eye_aspect_ratio(p: np.ndarray) -> float:
    return float((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * np.linalg.norm(p[0] - p[3])))


def ibug_signals(points: np.ndarray) -> tuple[float, float, float, float, float]:
    """(mouth, right EAR, left EAR, turn, nod) of one (68, 2) iBUG landmark set in pixels."""
    gap = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in _IBUG_INNER_LIPS])
    mouth = float(gap / np.linalg.norm(points[_IBUG_MOUTH_CORNERS[0]] - points[_IBUG_MOUTH_CORNERS[1]]))
    right, left = points[list(_IBUG_RIGHT_EYE)], points[list(_IBUG_LEFT_EYE)]
    eyes_px = float(np.linalg.norm(left.mean(0) - right.mean(0)))
    yaw, pitch = _head_yaw_pitch(points, eyes_px)
    return mouth, _eye_aspect_ratio(right), _eye_aspect_ratio(left), yaw, pitch


def _head_yaw_pitch(points: np.ndarray, eyes_px: float) -> tuple[float, float]:
    """(yaw, pitch) in degrees of (68, 2) iBUG points: the generic head fitted with a near-orthographic camera
    (focal length 100 face widths, principal point on the points' centre), so moving or scaling the face in the
    picture does not read as a turn."""
    index = list(_IBUG_HEAD_MM)
    model = np.array([_IBUG_HEAD_MM[i] for i in index], np.float64)
    image = points[index].astype(np.float64)
    centre = image.mean(0)
    focal = 100.0 * 90.0 / 60.0 * eyes_px  # ~100 face widths
    camera = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], np.float64)
    rvec = np.zeros((3, 1))
    tvec = np.array([[0.0], [0.0], [focal * 60.0 / eyes_px]])  # eye centres ~60 mm apart
    ok, rvec, _ = cv2.solvePnP(model - model.mean(0), image, camera, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return float("nan"), float("nan")
    r, _ = cv2.Rodrigues(rvec)
    return float(np.degrees(np.arctan2(r[0, 2], r[2, 2]))), float(np.degrees(np.arcsin(np.clip(-r[1, 2], -1, 1))))


IBUG_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def landmark_predictor_path() -> Path:
    """dlib's 68-point shape predictor file from the installed `face-recognition-models` package.

    The package is found without being imported: its __init__ imports `pkg_resources`, which setuptools 81+ no
    longer provides, so importing it fails on a current environment although the model files are there.
    Raises ImportError naming the fix when the package or the file is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "models" / IBUG_PREDICTOR_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise ImportError(
        f"dlib's landmark model {IBUG_PREDICTOR_FILE} was not found{where}: install it with "
        "`python -m pip install face-recognition-models` (or `python tools/install.py --dev`)"
    )


class IndependentReader:
    """dlib face detector + 68-point predictor; `read(frame_bgr)` gives ibug_signals or None. Needs dlib."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise ImportError(
                f"the independent quality reader needs dlib ({exc}): install it with "
                "`python -m pip install dlib-bin face-recognition-models` (or `python tools/install.py --dev`)"
            ) from exc
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(landmark_predictor_path()))
        self._rectangle = dlib.rectangle

    def read(self, frame_bgr: np.ndarray) -> tuple[float, float, float, float, float] | None:
        """Signals of the largest face in an (H, W, 3) uint8 BGR frame, or None without a face."""
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        faces = self._detector(rgb, 0)
        if len(faces) == 0:
            faces = self._detector(rgb, 1)  # small faces: one upsampling pass
        if len(faces) == 0:
            return None
        face = max(faces, key=lambda r: r.width() * r.height())
        shape = self._predictor(rgb, face)
        return ibug_signals(np.array([(p.x, p.y) for p in shape.parts()], np.float64))

    def signals(self, frames) -> IndependentSignals:
        """Signals of an iterable of (H, W, 3) uint8 BGR frames."""
        rows = [self.read(f) or (np.nan,) * 5 for f in frames]
        a = np.array(rows, np.float64).reshape(-1, 5)
        return IndependentSignals(mouth=a[:, 0], eyes=a[:, 1:3], turn=a[:, 3], nod=a[:, 4])


def gain(driver: np.ndarray, output: np.ndarray) -> float:
    """Amplitude of the output's motion over the driver's: ratio of standard deviations where both are finite."""
    ok = np.isfinite(driver) & np.isfinite(output)
    return float(np.std(output[ok]) / max(float(np.std(driver[ok])), 1e-12))


def concordance(driver: np.ndarray, output: np.ndarray) -> float:
    """Lin's concordance of the mean-removed signals: 1 only when timing and amplitude both match."""
    ok = np.isfinite(driver) & np.isfinite(output)
    a, b = driver[ok] - driver[ok].mean(), output[ok] - output[ok].mean()
    return float(2.0 * (a * b).mean() / max(float(a.var() + b.var()), 1e-12))


def best_lag(driver: list[np.ndarray], output: list[np.ndarray], max_lag: int = 6) -> int:
    """Frames by which the outputs follow the drivers best (mean correlation over the signals; + is late)."""
    def mean_r(lag: int) -> float:
        rs = []
        for a, b in zip(driver, output):
            a, b = (a[: len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: len(b) + lag])
            rs.append(correlation(a, b))
        return float(np.nanmean(rs))

    return max(sorted(range(-max_lag, max_lag + 1), key=abs), key=mean_r)
