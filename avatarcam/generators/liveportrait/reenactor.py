"""The LivePortrait reenactor: LivePortrait's relative animation of one avatar, driven live by the webcam.

Per avatar (prepare, off the render thread): crop the face from its MediaPipe landmarks, run the appearance
extractor (feature volume f_s) and the motion extractor (source keypoints x_s) once, and measure its eye/lip ratios.
Per calibration (neutral_from): the motion of the window's last frame: LivePortrait's "first driving frame", so the
motion is relative to the calibrated neutral, not to frame 0 of a file.
Per frame (render): crop the driver's face, motion extractor, relative keypoints (motion.relative_keypoints, with
the expression-friendly multiplier as the original's image-source path), eye/lip retargeting, stitching, then the
warp + SPADE generator, and the 512x512 crop is pasted back into the avatar canvas with a feathered edge.

Cropping (generator.crop, default on) is FaceMimic's square MediaPipe-landmark crop shared with the FOMM generator
(no InsightFace, whose weights are non-commercial). With crop off, images are used as given, resized to 256x256 with
cv2.resize (bilinear) as LivePortrait's flag_do_crop=False / square-video branches do, nothing is smoothed or
retargeted, and the canvas is the generated image truncated to uint8 as LivePortrait's parse_output does: the
original's relative animation of pre-cropped inputs, frame for frame (tests/test_liveportrait_live.py).

FaceMimic's controls, LivePortrait-style:
  motion.intensity.face/eyes/mouth  gain on the expression change of every keypoint, of LivePortrait's eye keypoints
                                    (11, 13, 15, 16, 18) and of its lip keypoints (6, 12, 14, 17, 19, 20); all 1 is
                                    LivePortrait's relative motion exactly.
  retargeting (generator.crop on)   the eyes and the lips are driven by LivePortrait's eye and lip retargeting MLPs
                                    instead of by the expression change: the driver's eye- and mouth-opening ratios,
                                    measured on MediaPipe's landmarks relative to the neutral, scale the avatar's own
                                    ratios; intensity.eyes / intensity.mouth scale that change (0 freezes the region).
                                    The deltas are taken relative to the MLP at the avatar's own ratios, so a driver at
                                    its neutral moves nothing.
  motion.head_rotation / head_translation / scale_lock
                                    gain on the relative rotation angle / translation; scale_lock keeps the avatar's
                                    scale.
  motion.smoothing                  One Euro filter on the driven keypoints (crop mode only).
  lost face                         hold the last frame, then ease the keypoints back to the avatar's and fade to it.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcam.avatars import Avatar, read_image
from avatarcam.errors import ConfigError, FaceMimicError
from avatarcam.filters import OneEuroFilter

# The square face crop, its tracker and the runner plumbing are shared with the FOMM generator.
from avatarcam.generators.common.crop import (
    CropBox,
    CropTracker,
    bgr_to_model_input,
    check_driver_frame,
    crop_square,
    face_box,
    feather_mask,
    lost_face_ease,
    paste_into_canvas,
    resize_square,
)
from avatarcam.generators.common.runtime import LockedRunner, needs_onnx, runtime_label
from avatarcam.generators.common.triton import check_backend, record_round_trip, triton_settings
from avatarcam.generators.liveportrait import motion as mo
from avatarcam.motion import MotionSettings
from avatarcam.paths import ENGINES_DIR
from avatarcam.types import Observed

__all__ = [
    "CPU_RUNTIMES",
    "LivePortraitMotionControls",
    "LivePortraitNeutral",
    "LivePortraitPrepared",
    "LivePortraitReenactor",
    "LivePortraitRuntime",
    "LivePortraitSettings",
    "build_liveportrait_reenactor",
    "eye_lip_ratios",
    "random_full_size_models",
]

log = logging.getLogger(__name__)

INPUT_SIZE = 256
# ONNX Runtime is the CPU default for every graph, as for FOMM: it keeps its speed while MediaPipe works on the other
# core, and mixing it with torch's OpenMP pool slows both (see generators/fomm.py CPU_RUNTIMES).
CPU_RUNTIMES = {"lp_appearance": "onnxruntime", "lp_motion": "onnxruntime", "lp_warp_generate": "onnxruntime",
                "lp_stitching": "onnxruntime", "lp_retargeting": "onnxruntime"}
# Keypoints feed the warp's Gaussians and grids: the motion extractor and the MLPs stay fp32; the image-to-image
# graphs may run in fp16 (not measured on a GPU here).
TENSORRT_PRECISIONS = {"lp_appearance": "fp16", "lp_motion": "fp32", "lp_warp_generate": "fp16",
                       "lp_stitching": "fp32", "lp_retargeting": "fp32"}
KEYPOINT_BETA = 5.0
"""One Euro beta for the driven keypoints, in keypoint units per second (the face spans about one unit)."""

# MediaPipe face-mesh indices for LivePortrait's ratios (|a - b| / |c - d|): each eye's lid gap over its width, and the
# inner lips' gap over the mouth width. LivePortrait measures the same quantities on its own 203-point landmarks.
_EYE_LEFT = (386, 374, 362, 263)
_EYE_RIGHT = (159, 145, 33, 133)
_LIP = (13, 14, 61, 291)


def _ratio(points: np.ndarray, idx: tuple[int, int, int, int]) -> float:
    p = np.asarray(points, np.float64)[:, :2]
    a, b, c, d = idx
    return float(np.linalg.norm(p[a] - p[b]) / (np.linalg.norm(p[c] - p[d]) + 1e-6))


def eye_lip_ratios(points: np.ndarray) -> np.ndarray:
    """(3,) float32 [left eye, right eye, lip] opening ratios from (478, 2+) MediaPipe landmarks (any pixel scale)."""
    return np.array([_ratio(points, _EYE_LEFT), _ratio(points, _EYE_RIGHT), _ratio(points, _LIP)], np.float32)


PER_FRAME_GRAPHS = ("lp_motion", "lp_stitching", "lp_retargeting", "lp_warp_generate")

# --------------------------------------------------------------------------------------------------------------------
# Settings, prepared avatars, neutral, motion controls.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LivePortraitSettings:
    """What the LivePortrait reenactor needs from the config (see build_liveportrait_reenactor)."""

    checkpoint: Path
    """The weights folder (pretrained_weights/liveportrait, or a folder holding liveportrait/)."""
    backend: str = "auto"
    crop: bool = True
    canvas_size: int = 512
    retargeting: bool = True
    """Drive eyes and lips through the retargeting MLPs (crop mode only; see the module docstring)."""
    engines_dir: Path = ENGINES_DIR
    cpu_runtimes: dict[str, str] = field(default_factory=lambda: dict(CPU_RUNTIMES))
    tensorrt_precisions: dict[str, str] = field(default_factory=lambda: dict(TENSORRT_PRECISIONS))
    triton: Any = None
    """backends.triton_runner.TritonSettings when backend is 'triton' (the server's address, TLS and token)."""

    def __post_init__(self) -> None:
        check_backend(self.backend, self.triton)
        if self.canvas_size < 64:
            raise ConfigError(f"generator.canvas_size {self.canvas_size} is too small: expected at least 64")
        for name, table in (("cpu_runtimes", self.cpu_runtimes), ("tensorrt_precisions", self.tensorrt_precisions)):
            if set(table) != set(CPU_RUNTIMES):
                raise ConfigError(f"LivePortraitSettings.{name} names {sorted(table)}: expected {sorted(CPU_RUNTIMES)}")


@dataclass(frozen=True)
class LivePortraitPrepared:
    """One avatar, ready for LivePortrait."""

    avatar_name: str
    source: np.ndarray
    """(1, 3, 256, 256) float32 RGB in [0, 1]: the avatar crop."""
    feature_volume: np.ndarray
    """(1, C, D, 64, 64) float32: f_s."""
    info: mo.KeypointInfo
    x_s: np.ndarray
    """(1, K, 3) float32 source keypoints."""
    ratios: np.ndarray | None
    """(3,) the avatar's [left eye, right eye, lip] ratios; None without landmarks (no crop)."""
    rest_canvas_bgr: np.ndarray
    crop_to_canvas: np.ndarray | None
    """(2, 3) affine from generated-image pixels (512 side) to canvas pixels; None without cropping."""
    alpha: np.ndarray | None
    rest_weight: np.ndarray | None
    match: np.ndarray
    """(K, 3) x_s centred and scaled to unit RMS, for best_match."""


@dataclass(frozen=True)
class LivePortraitNeutral:
    """The driver's calibrated neutral: LivePortrait's first driving frame, with its crop and ratios."""

    info: mo.KeypointInfo
    box: CropBox | None
    ratios: np.ndarray | None
    frame_index: int


class LivePortraitMotionControls:
    """The user's motion settings as LivePortrait uses them; duck-compatible with MotionTransfer's settings."""

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._lock = threading.Lock()
        self._filter = self._make_filter()

    def _make_filter(self) -> OneEuroFilter | None:
        s = self.settings.smoothing
        return None if s <= 0 else OneEuroFilter(min_cutoff_hz=8.0 * (0.05**s), beta=KEYPOINT_BETA,
                                                 derivative_cutoff_hz=1.0)

    def update_settings(self, settings: MotionSettings) -> None:
        """Apply new settings (a smoothing change restarts the filter)."""
        with self._lock:
            changed = settings.smoothing != self.settings.smoothing
            self.settings = settings
            if changed:
                self._filter = self._make_filter()

    def reset(self) -> None:
        with self._lock:
            if self._filter is not None:
                self._filter.reset()

    def smooth(self, x: np.ndarray, time_s: float) -> np.ndarray:
        """(1, K, 3) keypoints through the One Euro filter (unchanged when smoothing is 0)."""
        with self._lock:
            if self._filter is None:
                return x
            return self._filter(x.reshape(-1, 3), time_s).reshape(x.shape).astype(np.float32)

    def gains(self, num_kp: int, *, retargeting: bool) -> mo.MotionGains:
        """Per-keypoint expression gains (eyes, lips, the rest) and the head gains."""
        s = self.settings
        gain = np.full(num_kp, s.intensity.get("face", 1.0), np.float32)
        eyes = 0.0 if retargeting else s.intensity.get("eyes", 1.0)
        lips = 0.0 if retargeting else s.intensity.get("mouth", 1.0)
        gain[[i for i in mo.EYE_KEYPOINTS if i < num_kp]] = eyes
        gain[[i for i in mo.LIP_KEYPOINTS if i < num_kp]] = lips
        expression: np.ndarray | float = 1.0 if np.all(gain == 1.0) else gain
        return mo.MotionGains(expression=expression, rotation=s.head_rotation, translation=s.head_translation,
                              scale_lock=s.scale_lock)


# --------------------------------------------------------------------------------------------------------------------
# Runtimes.
# --------------------------------------------------------------------------------------------------------------------


class LivePortraitRuntime:
    """The five graphs of one weights folder, each on its selected runtime (see export.py for the graphs)."""

    def __init__(self, *, models: Any, settings: LivePortraitSettings, hardware: Any = None,
                 log_line: Callable[[str], None] = log.info) -> None:
        from avatarcam.backends.hardware import detect_hardware
        from avatarcam.backends.selection import ModelSpec
        from avatarcam.generators.common.triton import open_runner
        from avatarcam.generators.liveportrait import export as lx

        hardware = detect_hardware() if hardware is None else hardware
        needs = tuple(n for n in lx.GRAPH_NAMES if needs_onnx(settings.backend, settings.cpu_runtimes[n], hardware))
        paths = lx.ensure_exported(models, engines_dir=settings.engines_dir, names=needs, log_line=log_line) \
            if needs else {}
        folder = lx.export_folder(models, engines_dir=settings.engines_dir)
        self.runners: dict[str, LockedRunner] = {}
        try:
            for name in lx.GRAPH_NAMES:
                spec = ModelSpec(
                    name=name, onnx_path=paths.get(name, folder / f"{name}.onnx"),
                    torch_module=functools.partial(lx.graph_module, models, name, sampler="torch"),
                    io=lx.graph_io(models, name), cpu_runtime=settings.cpu_runtimes[name],
                    precision=settings.tensorrt_precisions[name], engines_dir=folder,
                )
                self.runners[name] = LockedRunner(open_runner(settings.backend, spec, key=models.key,
                                                              triton=settings.triton, hardware=hardware,
                                                              log_line=log_line))
        except BaseException:
            self.close()
            raise

    @property
    def labels(self) -> dict[str, str]:
        return {name: r.label for name, r in self.runners.items()}

    def appearance(self, image: np.ndarray) -> np.ndarray:
        return self.runners["lp_appearance"].run({"source_image": image})["feature_volume"]

    def motion(self, image: np.ndarray) -> mo.KeypointInfo:
        return mo.KeypointInfo.from_outputs(self.runners["lp_motion"].run({"image": image}))

    def stitch(self, x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
        return self.runners["lp_stitching"].run({"kp_source": x_s, "kp_driving": x_d})["kp_stitched"]

    def retarget(self, x_s: np.ndarray, eye: np.ndarray, lip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.runners["lp_retargeting"].run({"kp_source": x_s, "eye_ratio": eye, "lip_ratio": lip})
        return out["eye_delta"], out["lip_delta"]

    def generate(self, f_s: np.ndarray, x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
        """(1, 3, 512, 512) float32 RGB in (0, 1) (valid until the next call)."""
        return self.runners["lp_warp_generate"].run({"feature_volume": f_s, "kp_source": x_s, "kp_driving": x_d},
                                                    copy=False)["image"]

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


# --------------------------------------------------------------------------------------------------------------------
# The reenactor.
# --------------------------------------------------------------------------------------------------------------------


def _match_vector(x: np.ndarray) -> np.ndarray:
    p = np.asarray(x, np.float64).reshape(-1, 3)
    p = p - p.mean(0, keepdims=True)
    return p / max(float(np.sqrt((p**2).sum(1).mean())), 1e-9)


def _resize_like_liveportrait(image_bgr: np.ndarray) -> np.ndarray:
    """cv2.resize(img, (256, 256)) with the default bilinear filter, as LivePortrait's no-crop branches."""
    return cv2.resize(image_bgr, (INPUT_SIZE, INPUT_SIZE))


class LivePortraitReenactor:
    """LivePortrait behind the Reenactor protocol; one instance per weights folder."""

    name = "liveportrait"

    def __init__(self, *, settings: LivePortraitSettings, motion: MotionSettings | None = None, hardware: Any = None,
                 models: Any = None, log_line: Callable[[str], None] = log.info) -> None:
        from avatarcam.generators.liveportrait.checkpoint import load_liveportrait

        self.settings = settings
        self.canvas_size = settings.canvas_size
        self._motion = LivePortraitMotionControls(motion)
        self.models = load_liveportrait(settings.checkpoint) if models is None else models
        self.runners = LivePortraitRuntime(models=self.models, settings=settings, hardware=hardware,
                                           log_line=log_line)
        if not any(label.startswith("torch") for label in self.runners.labels.values()):
            self.models = self.models.without_modules()  # the runtimes hold their own copies of the weights
        canvas = self.canvas_size
        self._input = np.empty((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
        self._crop_bgr = np.empty((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        self._last_canvas = np.empty((canvas, canvas, 3), np.uint8)
        self._tracker = CropTracker()
        self._reference: tuple[Any, Any, np.ndarray, float, tuple] | None = None
        self._last_x_d: np.ndarray | None = None
        self._last_driver: tuple[int, mo.KeypointInfo] | None = None
        self._lost_since_s: float | None = None
        self.last_prediction: np.ndarray | None = None
        """(1, 3, 512, 512) float32 RGB: the newest generator output (a copy), for tools and tests."""
        self.last_kp_driving: np.ndarray | None = None
        """(1, K, 3): the keypoints the generator was last driven with."""

    # -- protocol members

    @property
    def motion(self) -> LivePortraitMotionControls:
        return self._motion

    @property
    def needs_landmarks(self) -> bool:
        return self.settings.crop

    @property
    def runtimes(self) -> dict[str, str]:
        return self.runners.labels

    @property
    def runtime(self) -> str:
        return runtime_label(self.runners.labels, "lp_")

    def close(self) -> None:
        self.runners.close()

    def __enter__(self) -> LivePortraitReenactor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- per avatar

    def prepare(self, avatar: Avatar) -> LivePortraitPrepared:
        """Crop, feature volume, source keypoints and ratios of one avatar (thread-safe)."""
        size, canvas_size = INPUT_SIZE, self.canvas_size
        canvas = avatar.canvas_bgr
        ratios = None
        if self.settings.crop:
            points = np.asarray(avatar.points, np.float64)
            if canvas.shape[:2] != (canvas_size, canvas_size):
                points = points[:, :2] * (canvas_size / canvas.shape[0])
                canvas = resize_square(canvas, canvas_size)
            box = face_box(points)
            crop_bgr = crop_square(canvas, box, size=size)
            generated = INPUT_SIZE * 2  # the generator's output side for a 256 crop
            crop_to_canvas = box.crop_to_image(generated)
            alpha = cv2.warpAffine(feather_mask(generated), crop_to_canvas, (canvas_size, canvas_size),
                                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            rest = np.ascontiguousarray(canvas).copy()
            ratios = eye_lip_ratios(points)
        else:
            image = read_image(avatar.path) if avatar.path is not None and Path(avatar.path).is_file() else canvas
            crop_bgr = _resize_like_liveportrait(image)
            rest = resize_square(image, canvas_size)
            crop_to_canvas, alpha = None, None
        source = bgr_to_model_input(crop_bgr, np.empty((1, 3, size, size), np.float32))
        info = self.runners.motion(source)
        f_s = np.array(self.runners.appearance(source))
        x_s = mo.transform_keypoint(info)
        return LivePortraitPrepared(
            avatar_name=avatar.name, source=source, feature_volume=f_s, info=info, x_s=x_s, ratios=ratios,
            rest_canvas_bgr=rest, crop_to_canvas=crop_to_canvas, alpha=alpha,
            rest_weight=None if alpha is None else 1.0 - alpha, match=_match_vector(x_s),
        )

    # -- per calibration

    def neutral_from(self, window: list[Observed]) -> LivePortraitNeutral:
        """LivePortrait's first driving frame: the motion of the window's last usable frame."""
        usable = [o for o in window if o is not None and (o.face is not None or not self.settings.crop)]
        if not usable:
            raise FaceMimicError(
                f"LivePortrait calibration got {len(window)} frames but none with a face: look at the camera and "
                "recalibrate"
            )
        observed = usable[-1]
        image = np.empty((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
        box = self._driver_crop(observed, None, image, np.empty_like(self._crop_bgr))
        ratios = eye_lip_ratios(observed.face.points_px) if observed.face is not None else None
        return LivePortraitNeutral(info=self.runners.motion(image), box=box, ratios=ratios,
                                   frame_index=observed.frame.index)

    # -- per frame

    def reset(self) -> None:
        self._motion.reset()
        self._tracker.reset()
        self._last_x_d = None
        self._lost_since_s = None

    def _driver_crop(self, observed: Observed, time_s: float | None, image: np.ndarray,
                     crop_bgr: np.ndarray) -> CropBox | None:
        frame_bgr = observed.frame.image_bgr
        check_driver_frame(frame_bgr)
        if not self.settings.crop:
            crop_bgr[...] = _resize_like_liveportrait(frame_bgr)
            bgr_to_model_input(crop_bgr, image)
            return None
        if observed.face is None:
            raise FaceMimicError("LivePortrait crop needs the driver's face landmarks; this frame has none")
        box = face_box(observed.face.points_px)
        if time_s is not None:
            box = self._tracker(box, time_s)
        bgr_to_model_input(crop_square(frame_bgr, box, size=INPUT_SIZE, out=crop_bgr), image)
        return box

    def _reference_for(self, prepared: LivePortraitPrepared, neutral: LivePortraitNeutral,
                       gains: mo.MotionGains) -> tuple[np.ndarray, float]:
        """x_d_0_new (the neutral's keypoints on the avatar) and the expression-friendly multiplier, per pair."""
        expression = gains.expression
        key = (tuple(np.asarray(expression).reshape(-1).tolist()), gains.rotation, gains.translation, gains.scale_lock)
        cached = self._reference
        if cached is None or cached[0] is not prepared or cached[1] is not neutral or cached[4] != key:
            x_0 = mo.relative_keypoints(prepared.info, neutral.info, neutral.info, gains)
            try:
                multiplier = mo.motion_multiplier(prepared.x_s, x_0)
            except Exception as exc:  # degenerate hull (scipy QhullError): keep the motion unscaled
                log.warning("LivePortrait motion multiplier: %s; using 1", exc)
                multiplier = 1.0
            cached = (prepared, neutral, x_0, multiplier, key)
            self._reference = cached
        return cached[2], cached[3]

    def driven_keypoints(self, prepared: LivePortraitPrepared, driving: mo.KeypointInfo,
                         neutral: LivePortraitNeutral, ratios: np.ndarray | None) -> np.ndarray:
        """(1, K, 3) keypoints before stitching: relative motion, then eye/lip retargeting (see module docstring)."""
        c_s, c_0 = prepared.ratios, neutral.ratios
        retarget = self.settings.crop and self.settings.retargeting
        measured = ratios is not None and c_s is not None and c_0 is not None
        gains = self._motion.gains(prepared.x_s.shape[1], retargeting=retarget and measured)
        x_0, multiplier = self._reference_for(prepared, neutral, gains)
        x_d = mo.relative_keypoints(prepared.info, driving, neutral.info, gains)
        x_d = prepared.x_s + (x_d - x_0) * np.float32(multiplier)
        if retarget and ratios is not None and c_s is not None and c_0 is not None:
            s = self._motion.settings
            change = ratios / np.maximum(c_0, 1e-3)  # the driver's opening relative to its neutral
            eye_target = float(c_s[:2].mean()) * (1 + s.intensity.get("eyes", 1.0) * (float(change[:2].mean()) - 1))
            lip_target = float(c_s[2]) * (1 + s.intensity.get("mouth", 1.0) * (float(change[2]) - 1))
            eye_in = np.array([[c_s[0], c_s[1], max(0.0, eye_target)], [c_s[0], c_s[1], c_s[:2].mean()]], np.float32)
            lip_in = np.array([[c_s[2], max(0.0, lip_target)], [c_s[2], c_s[2]]], np.float32)
            eye_now, lip_now = self.runners.retarget(prepared.x_s, eye_in[:1], lip_in[:1])
            eye_rest, lip_rest = self.runners.retarget(prepared.x_s, eye_in[1:], lip_in[1:])
            x_d = x_d + (eye_now - eye_rest) + (lip_now - lip_rest)
        return x_d.astype(np.float32)

    def render(self, prepared: LivePortraitPrepared, observed: Observed | None, neutral: LivePortraitNeutral | None,
               time_s: float, out: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Animate the avatar for this driver frame into `out` (S, S, 3) uint8 BGR and return it."""
        if out.shape != (self.canvas_size, self.canvas_size, 3) or out.dtype != np.uint8:
            raise FaceMimicError(f"unexpected output canvas: shape {out.shape}, dtype {out.dtype}; expected "
                                 f"({self.canvas_size}, {self.canvas_size}, 3) uint8")
        timings = {} if timings is None else timings
        if neutral is None:
            out[...] = prepared.rest_canvas_bgr
            return out
        if observed is None or (observed.face is None and self.settings.crop):
            return self._render_lost(prepared, time_s, out, timings)
        start = time.perf_counter()
        self._driver_crop(observed, time_s, self._input, self._crop_bgr)
        cropped = time.perf_counter()
        driving = self.runners.motion(self._input)
        detected = time.perf_counter()
        self._last_driver = (observed.frame.index, driving)
        ratios = eye_lip_ratios(observed.face.points_px) if observed.face is not None else None
        x_d = self.driven_keypoints(prepared, driving, neutral, ratios)
        if self.settings.crop:
            x_d = self._motion.smooth(x_d, time_s)
        x_d = self.runners.stitch(prepared.x_s, x_d)
        moved = time.perf_counter()
        self._generate_into(prepared, x_d, out, timings)
        self._last_x_d = x_d
        self._lost_since_s = None
        self._last_canvas[...] = out
        timings["crop"] = (cropped - start) * 1000
        timings["motion_extractor"] = (detected - cropped) * 1000
        timings["motion"] = (moved - detected) * 1000
        return out

    def _generate_into(self, prepared: LivePortraitPrepared, x_d: np.ndarray, out: np.ndarray,
                       timings: dict[str, float]) -> None:
        start = time.perf_counter()
        image = self.runners.generate(prepared.feature_volume, prepared.x_s, x_d)
        generated = time.perf_counter()
        self.last_prediction = np.array(image)
        self.last_kp_driving = np.array(x_d)
        self._compose(prepared, image, out)
        record_round_trip([self.runners.runners[n] for n in PER_FRAME_GRAPHS], timings)
        timings["generate"] = (generated - start) * 1000
        timings["compose"] = (time.perf_counter() - generated) * 1000

    def _compose(self, prepared: LivePortraitPrepared, image: np.ndarray, out: np.ndarray) -> None:
        # LivePortrait's parse_output: clip(out * 255) then truncation to uint8 (not rounding).
        rgb = np.clip(image[0].transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        if prepared.crop_to_canvas is None:
            if bgr.shape[0] != self.canvas_size:
                bgr = cv2.resize(bgr, (self.canvas_size, self.canvas_size), interpolation=cv2.INTER_AREA)
            out[...] = bgr
            return
        assert prepared.alpha is not None and prepared.rest_weight is not None  # set together with crop_to_canvas
        paste_into_canvas(bgr, prepared.crop_to_canvas, prepared.rest_canvas_bgr, prepared.alpha, prepared.rest_weight,
                          out)

    def _render_lost(self, prepared: LivePortraitPrepared, time_s: float, out: np.ndarray,
                     timings: dict[str, float]) -> np.ndarray:
        """No face: hold the last output, then ease the keypoints back to the avatar's and fade to the avatar."""
        last = self._last_x_d
        if last is None:
            out[...] = prepared.rest_canvas_bgr
            return out
        if self._lost_since_s is None:
            self._lost_since_s = time_s
            self._motion.reset()
            self._tracker.reset()
        s = self._motion.settings
        ease = lost_face_ease(time_s - self._lost_since_s, s.lost_face_hold_s, s.lost_face_ease_s)
        if ease is None:
            out[...] = self._last_canvas
            return out
        if ease >= 1.0:
            out[...] = prepared.rest_canvas_bgr
            return out
        x_d = ((1 - ease) * last + ease * prepared.x_s).astype(np.float32)
        self._generate_into(prepared, x_d, out, timings)
        fade = ease**3
        cv2.addWeighted(out, 1.0 - fade, prepared.rest_canvas_bgr, fade, 0.0, dst=out)
        return out

    def best_match(self, prepared_list: Sequence[LivePortraitPrepared], observed: Observed | None) -> int | None:
        """Index of the avatar whose posed keypoints (centred, unit RMS) are closest to the driver's."""
        if not prepared_list or observed is None or (self.settings.crop and observed.face is None):
            return None
        cached = self._last_driver
        if cached is not None and cached[0] == observed.frame.index:
            driver = cached[1]
        else:
            image = np.empty((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
            self._driver_crop(observed, None, image, np.empty_like(self._crop_bgr))
            driver = self.runners.motion(image)
        target = _match_vector(mo.transform_keypoint(driver))
        return int(np.argmin([float(((p.match - target) ** 2).sum()) for p in prepared_list]))


def build_liveportrait_reenactor(sections: Any, *, hardware: Any = None) -> LivePortraitReenactor:
    """The reenactor for config sections `generator` (checkpoint, backend, crop, canvas_size) and `motion`."""
    from avatarcam.generators.liveportrait.checkpoint import resolve_folder

    g, m = sections.generator, sections.motion
    motion = MotionSettings(
        intensity=dict(vars(m.intensity)), head_rotation=m.head_rotation, head_translation=m.head_translation,
        scale_lock=m.scale_lock, smoothing=m.smoothing, lost_face_hold_s=m.lost_face_hold_s,
        lost_face_ease_s=m.lost_face_ease_s,
    )
    settings = LivePortraitSettings(checkpoint=resolve_folder(g.checkpoint), backend=g.backend, crop=g.crop,
                                    canvas_size=g.canvas_size, triton=triton_settings(g))
    return LivePortraitReenactor(settings=settings, motion=motion, hardware=hardware)


def random_full_size_models(seed: int = 0) -> Any:
    """LivePortraitModels with random weights of the published widths (for benchmarks; useless for animation).

    Batch norms get unit statistics, spectral-norm vectors unit random vectors, so the forward pass is finite.
    """
    import torch

    from avatarcam.generators.liveportrait import model as m
    from avatarcam.generators.liveportrait.checkpoint import LivePortraitModels, _weights_key

    torch.manual_seed(seed)
    spec = {
        "stitching": m.MlpConfig(126, (128, 128, 64), 65), "lip": m.MlpConfig(65, (128, 128, 64), 63),
        "eye": m.MlpConfig(66, (256, 256, 128, 128, 64), 63),
    }
    nets: dict[str, torch.nn.Module] = {
        "appearance_feature_extractor": m.AppearanceFeatureExtractor(m.AppearanceConfig()),
        "motion_extractor": m.MotionExtractor(m.MotionConfig()),
        "warping_module": m.WarpingNetwork(m.WarpingConfig()),
        "spade_generator": m.SPADEDecoder(m.GeneratorConfig()),
        **{k: m.StitchingRetargetingNetwork(c) for k, c in spec.items()},
    }
    with torch.no_grad():
        for module in nets["spade_generator"].modules():
            if isinstance(module, m.SpectralNormConv2d):
                weight = module.weight_orig
                torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                w = weight.reshape(weight.shape[0], -1)
                v = torch.randn(w.shape[1])
                for _ in range(3):  # a few power iterations, as training leaves u and v
                    u = torch.nn.functional.normalize(w @ v, dim=0)
                    v = torch.nn.functional.normalize(w.t() @ u, dim=0)
                module.weight_u.copy_(u)
                module.weight_v.copy_(v)
    for net in nets.values():
        net.eval().requires_grad_(False)
    return LivePortraitModels(
        appearance=nets["appearance_feature_extractor"], motion=nets["motion_extractor"],
        warping=nets["warping_module"], generator=nets["spade_generator"], stitching=nets["stitching"],
        eye=nets["eye"], lip=nets["lip"], folder=Path("<random>"), files={}, key=_weights_key(nets),
    )
