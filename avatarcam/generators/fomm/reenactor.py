"""The FOMM reenactor: Avatarify's relative-mode First Order Motion Model behind FaceMimic's Reenactor protocol.

Per avatar (prepare, off the render thread): crop the face, detect its keypoints, encode it once.
Per calibration (neutral_from): keypoints of the calibration window's last frame (FOMM's kp_driving_initial).
Per frame (render): crop the driver's face, detect keypoints, move the avatar's keypoints by the driver's motion since
the neutral (FOMM's `normalize_kp` with relative movement, relative jacobian and hull-adapted scale), generate,
and compose the generated crop back into the avatar canvas.

Cropping (generator.crop, default on): FOMM's vox models were trained on square crops in which the head fills most of
the frame. The driver crop is a square around MediaPipe's face landmarks, smoothed over time so that landmark jitter
does not shake the picture; the avatar crop is made the same way once, so both faces are framed alike, which is what
relative motion assumes. The generated crop is pasted back with a feathered edge. With crop off, driver frames and
the avatar image are used as given, resized to the model's size, and the canvas is the prediction resized: FOMM's
own demo, frame for frame (the offline parity test checks this against the original code's outputs).

FaceMimic controls: motion.intensity.face scales the relative motion (keypoint displacement and jacobian change;
1 is exactly FOMM); motion.smoothing runs a One Euro filter on the driving keypoints (0 is exactly FOMM; with crop
off the keypoints are never smoothed, so --no-crop is the unmodified FOMM animation); a lost face holds the last
output, then eases back to the avatar at rest.

Runtimes: each of the three models (fomm_export.MODEL_NAMES) goes through the backends layer on its own, with the
CPU runtime that measured faster for it; ONNX files are exported on first use into engines/fomm-<weights hash>/.
Input size: 256x256 for every checkpoint, as FOMM's demo and Avatarify, unless generator.fomm_size or the FOMM
YAML's frame_shape says otherwise (fomm_export.choose_image_size). Precision (generator.fomm_precision): on a CPU
with native bf16, backend auto runs the frame generator as a float32 motion half on ONNX Runtime and a bf16 decoder
on torch (fomm_fast, `generator_precision`); fp32 keeps the exact exported graphs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcam.avatars import Avatar, read_image
from avatarcam.errors import ConfigError, EngineError, FaceMimicError, ModelFileError
from avatarcam.filters import OneEuroFilter
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
from avatarcam.generators.common.runtime import LockedRunner, gpu_runs, needs_onnx, runtime_label
from avatarcam.generators.common.triton import check_backend, record_round_trip, triton_settings
from avatarcam.motion import MotionSettings
from avatarcam.paths import AVATARS_DIR, ENGINES_DIR, PROJECT_ROOT
from avatarcam.types import Observed

__all__ = [
    "CropBox",
    "FommKeypointArrays",
    "FommMotionControls",
    "FommNeutral",
    "FommPrepared",
    "FommReenactor",
    "FommSettings",
    "build_fomm_reenactor",
    "crop_square",
    "face_box",
    "keypoint_match_distance",
    "normalized_match_keypoints",
    "resolve_checkpoint",
]

log = logging.getLogger(__name__)

# Keypoint smoothing uses MotionTransfer's mapping of motion.smoothing onto the One Euro cutoff; beta is in keypoint
# units per second (the face is about one unit wide), hence larger than the mesh's beta in pixels.
KEYPOINT_BETA = 5.0
# The CPU runtime per model for backend "auto", measured with vox-256 on 2 cores (ms, isolated: ONNX Runtime kp 15-43,
# encoder 65-139, generator 336-342; torch 24, 138, 372). ONNX Runtime is as fast or faster and, above all, keeps its
# speed while another thread works (live, MediaPipe always does): torch's two OpenMP threads then slowed the keypoint
# detector from 19 to 1054 ms. Mixing the two runtimes is worse still: ONNX Runtime's spinning workers slowed torch's
# generator from 380 to 1000-2000 ms. So all three default to ONNX Runtime.
CPU_RUNTIMES = {
    "fomm_kp_detector": "onnxruntime",
    "fomm_source_encoder": "onnxruntime",
    "fomm_frame_generator": "onnxruntime",
}
# TensorRT precision per model: keypoints feed 2x2 inverses and a softmax at temperature 0.1, so the small detector
# stays in fp32; the encoder and generator are image-to-image and tolerate fp16 (not yet measured on a GPU).
TENSORRT_PRECISIONS = {
    "fomm_kp_detector": "fp32",
    "fomm_source_encoder": "fp16",
    "fomm_frame_generator": "fp16",
}

# generator.fomm_precision: fp32 is the exact port everywhere; bf16 runs the CPU frame generator's convolution stacks
# in bfloat16 (fomm_fast, CPUs with native bf16 only); int8 is bf16 with the bottleneck's convolutions in 8 bits
# (fomm_fast.Int8Bottleneck, CPUs with native bf16 and VNNI); auto picks int8, else bf16, when the frame generator
# runs on a CPU that has them, and fp32 otherwise (GPUs use TENSORRT_PRECISIONS).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
# Images whose identity-motion activations set the int8 bottleneck's fixed output scales (the built-in avatars);
# the ranges are cached per checkpoint in its engines folder.
INT8_CALIBRATION_AVATARS = ("astronaut.png", "astronaut_cartoon.png", "astronaut_painting.png", "astronaut_sketch.png")
_INT8_CACHE_VERSION = 1

_NOT_SHIPPED = (
    "Avatarify users usually have vox-adv-cpk.pth.tar (or vox-cpk.pth.tar) in their avatarify folder; FaceMimic never "
    "ships these weights (published under CC BY-NC 4.0, non-commercial; see the README's Responsible use)"
)


def _prediction_to_bgr(prediction: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float32 RGB in [0, 1] -> out (H, W, 3) uint8 BGR, rounded to nearest."""
    rgb = np.ascontiguousarray(prediction[0].transpose(1, 2, 0))
    cv2.cvtColor(cv2.convertScaleAbs(rgb, alpha=255.0), cv2.COLOR_RGB2BGR, dst=out)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Keypoints (numpy) and relative motion.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FommKeypointArrays:
    """FOMM keypoints of one image as numpy arrays (the runtimes' currency)."""

    value: np.ndarray
    """(1, K, 2) float32, (x, y) in FOMM's [-1, 1] crop frame."""
    jacobian: np.ndarray
    """(1, K, 2, 2) float32 local affine motion around each keypoint."""


def _inverse_2x2(m: np.ndarray) -> np.ndarray:
    """Inverse of (..., 2, 2) float32 matrices in closed form (the formula of fomm_model._inverse_2x2)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = (a * d - b * c)[..., None, None]
    adjugate = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2)
    return adjugate / det


def relative_motion(source: FommKeypointArrays, driving: FommKeypointArrays, initial: FommKeypointArrays, *,
                    scale: float, intensity: float = 1.0) -> FommKeypointArrays:
    """FOMM's relative keypoints (normalize_kp, relative jacobian) with the motion scaled by intensity.

    value = kp_source + intensity * scale * (kp_driving - kp_initial);
    jacobian = (I + intensity * (J_d J_0^-1 - I)) J_s. intensity 1 computes FOMM's formula exactly as written.
    """
    displacement = driving.value - initial.value
    if intensity != 1.0:
        displacement = displacement * np.float32(intensity)
    value = (displacement * np.float32(scale) + source.value).astype(np.float32)
    change = np.matmul(driving.jacobian, _inverse_2x2(initial.jacobian))
    if intensity != 1.0:
        identity = np.eye(2, dtype=np.float32)
        change = identity + np.float32(intensity) * (change - identity)
    return FommKeypointArrays(value=value, jacobian=np.matmul(change, source.jacobian).astype(np.float32))


def _movement_scale(source: FommKeypointArrays, initial: FommKeypointArrays) -> float:
    """FOMM's adapt_movement_scale (hull areas of the avatar's and the neutral's keypoints); 1 if undefined."""
    import torch

    from avatarcam.generators.fomm.model import movement_scale

    try:
        return movement_scale(torch.from_numpy(source.value), torch.from_numpy(initial.value))
    except ValueError as exc:  # collinear keypoints: FOMM would divide by zero; keep the motion unscaled instead
        log.warning("FOMM movement scale: %s; using 1", exc)
        return 1.0


def normalized_match_keypoints(value: np.ndarray) -> np.ndarray:
    """(K, 2) keypoints centred and divided by sqrt(hull area), as Avatarify normalises landmarks for its F key."""
    from avatarcam.generators.fomm.model import convex_hull_area

    points = np.asarray(value, np.float64).reshape(-1, 2)
    points = points - points.mean(0, keepdims=True)
    area = convex_hull_area(points)
    return points / math.sqrt(area) if area > 0 else points


def keypoint_match_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of squared differences of two normalized keypoint sets (Avatarify's comparison)."""
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum())


# --------------------------------------------------------------------------------------------------------------------
# Settings, prepared avatars, neutral.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FommSettings:
    """What the FOMM reenactor needs from the config (see build_fomm_reenactor)."""

    checkpoint: Path
    backend: str = "auto"
    """auto, tensorrt, onnxruntime or torch (avatarcam.backends.BACKEND_CHOICES)."""
    crop: bool = True
    canvas_size: int = 512
    engines_dir: Path = ENGINES_DIR
    image_size: int | None = None
    """Side of the model's square input (generator.fomm_size); None: fomm_config's frame_shape, else 256."""
    fomm_config: Path | None = None
    """FOMM's own YAML (generator.fomm_config), e.g. first-order-model/config/vox-adv-256.yaml; None: from shapes."""
    precision: str = "auto"
    """Frame generator on CPU (generator.fomm_precision): fp32 (exact), bf16 (fomm_fast), int8 (bf16 with an 8-bit
    bottleneck), auto (int8, else bf16, if native and backend is auto)."""
    cpu_runtimes: dict[str, str] = field(default_factory=lambda: dict(CPU_RUNTIMES))
    tensorrt_precisions: dict[str, str] = field(default_factory=lambda: dict(TENSORRT_PRECISIONS))
    triton: Any = None
    """backends.triton_runner.TritonSettings when backend is 'triton' (the server's address, TLS and token)."""

    def __post_init__(self) -> None:
        check_backend(self.backend, self.triton)
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"generator.fomm_precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        if self.precision in ("bf16", "int8") and self.backend not in ("auto", "torch"):
            raise ConfigError(
                f"generator.fomm_precision {self.precision} runs the frame generator on torch, but "
                f"generator.backend is {self.backend!r}: use backend auto or torch, or fomm_precision fp32 / auto"
            )
        if self.canvas_size < 64:
            raise ConfigError(f"generator.canvas_size {self.canvas_size} is too small: expected at least 64")
        tables = (("cpu_runtimes", self.cpu_runtimes), ("tensorrt_precisions", self.tensorrt_precisions))
        for field_name, table in tables:
            if set(table) != set(CPU_RUNTIMES):
                raise ConfigError(
                    f"FommSettings.{field_name} names {sorted(table)}: expected exactly {sorted(CPU_RUNTIMES)}"
                )


@dataclass(frozen=True)
class FommPrepared:
    """One avatar, ready for FOMM: its crop, encoding, keypoints and how the crop sits in the canvas."""

    avatar_name: str
    source: np.ndarray
    """(1, 3, H, W) float32 RGB in [0, 1]: the avatar crop the generator warps."""
    features: np.ndarray
    """(1, F, H/4, W/4) float32: source encoder output for `source`."""
    kp: FommKeypointArrays
    rest_canvas_bgr: np.ndarray
    """(S, S, 3) uint8 BGR: the avatar at rest (shown before calibration and after a lost face)."""
    crop_to_canvas: np.ndarray | None
    """(2, 3) float64 affine from crop pixels to canvas pixels; None without cropping (the crop is the canvas)."""
    alpha: np.ndarray | None
    """(S, S) float32 in [0, 1]: weight of the generated crop in the canvas (feathered); None without cropping."""
    rest_weight: np.ndarray | None
    """(S, S) float32: 1 - alpha, the weight of the avatar canvas."""
    match_kp: np.ndarray
    """(K, 2) float64 normalized keypoints for best_match."""


@dataclass(frozen=True)
class FommNeutral:
    """The driver's calibrated neutral: FOMM's kp_driving_initial, and the crop it was taken from."""

    kp: FommKeypointArrays
    box: CropBox | None
    frame_index: int


class FommMotionControls:
    """The user's motion settings as FOMM uses them (intensity.face, smoothing, lost-face timing).

    Duck-compatible with MotionTransfer's `settings` / `update_settings`, so the intensity hotkeys work unchanged.
    """

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._lock = threading.Lock()
        self._filter = self._make_filter()

    def _make_filter(self) -> OneEuroFilter | None:
        s = self.settings.smoothing
        if s <= 0:
            return None
        return OneEuroFilter(min_cutoff_hz=8.0 * (0.05**s), beta=KEYPOINT_BETA, derivative_cutoff_hz=1.0)

    @property
    def intensity(self) -> float:
        """The global FOMM motion gain (motion.intensity.face)."""
        return float(self.settings.intensity.get("face", 1.0))

    def update_settings(self, settings: MotionSettings) -> None:
        """Apply new user settings (a smoothing change restarts the filter)."""
        with self._lock:
            changed = settings.smoothing != self.settings.smoothing
            self.settings = settings
            if changed:
                self._filter = self._make_filter()

    def reset(self) -> None:
        """Forget the smoothing history."""
        with self._lock:
            if self._filter is not None:
                self._filter.reset()

    def smooth(self, kp: FommKeypointArrays, time_s: float) -> FommKeypointArrays:
        """The driving keypoints through the One Euro filter (unchanged when smoothing is 0)."""
        with self._lock:
            if self._filter is None:
                return kp
            num_kp = kp.value.shape[1]
            packed = np.concatenate([kp.value.reshape(num_kp, 2), kp.jacobian.reshape(num_kp, 4)], axis=1)
            smooth = self._filter(packed, time_s)
        return FommKeypointArrays(value=smooth[:, :2].reshape(1, num_kp, 2).copy(),
                                  jacobian=smooth[:, 2:].reshape(1, num_kp, 2, 2).copy())


# --------------------------------------------------------------------------------------------------------------------
# Runtimes.
# --------------------------------------------------------------------------------------------------------------------


def generator_precision(settings: FommSettings, hardware: Any, log_line: Callable[[str], None] = log.info) -> str:
    """'int8' or 'bf16' if the frame generator runs that fomm_fast path on this CPU, else 'fp32'; see
    FommSettings.precision.

    auto means int8, else bf16, only for backend auto on a CPU that runs it natively (else fp32, saying why when the
    CPU is the reason); an explicit bf16 or int8 that cannot run natively is an EngineError with the reason and the fix.
    """
    from avatarcam.generators.fomm.fast import bf16_native, int8_native

    if settings.precision == "fp32":
        return "fp32"
    if settings.precision == "auto" and (settings.backend != "auto" or gpu_runs(settings.backend, hardware)):
        return "fp32"  # a named backend runs the exported fp32 graphs, as it always did
    if gpu_runs(settings.backend, hardware):
        raise EngineError(
            f"generator.fomm_precision {settings.precision} is a CPU path, but backend {settings.backend!r} runs on "
            f"the GPU here: use fomm_precision auto (TensorRT fp16 / CUDA) or backend onnxruntime on CPU with fp32"
        )
    usable, reason = bf16_native()
    if usable and settings.precision in ("auto", "int8"):
        usable, reason = int8_native()
        if usable or settings.precision == "int8":
            precision = "int8"
        else:
            usable, reason, precision = True, f"bf16 only: {reason}", "bf16"
    else:
        precision = "bf16"
    if usable:
        log_line(f"fomm_frame_generator: {precision} on CPU ({reason}); --fomm-precision fp32 gives the exact path")
        return precision
    if settings.precision != "auto":
        raise EngineError(
            f"generator.fomm_precision {settings.precision} was requested but {reason}: use fomm_precision auto or "
            f"fp32 on this CPU"
        )
    log_line(f"fomm_frame_generator: fp32 ({reason})")
    return "fp32"


class FommRuntime:
    """The three FOMM models of one checkpoint, each opened on its selected runtime."""

    def __init__(self, *, models: Any, settings: FommSettings, hardware: Any = None,
                 log_line: Callable[[str], None] = log.info) -> None:
        from avatarcam.backends.hardware import detect_hardware
        from avatarcam.backends.selection import ModelSpec
        from avatarcam.generators.common.triton import open_runner
        from avatarcam.generators.fomm import export as fx

        hardware = detect_hardware() if hardware is None else hardware
        ios = fx.model_io(models)
        self.precision = generator_precision(settings, hardware, log_line)
        fast = {fx.FRAME_GENERATOR} if self.precision in ("bf16", "int8") else set()
        needs = tuple(n for n in fx.MODEL_NAMES
                      if n not in fast and needs_onnx(settings.backend, settings.cpu_runtimes[n], hardware))
        if fast and hardware.onnxruntime_available:
            needs += (fx.FRAME_MOTION,)
        paths = {}
        if needs:
            paths = fx.ensure_exported(models, engines_dir=settings.engines_dir, names=needs, log_line=log_line)
        folder = fx.export_folder(models, engines_dir=settings.engines_dir)
        runners: dict[str, LockedRunner] = {}
        try:
            for name in fx.MODEL_NAMES:
                if name in fast:
                    runners[name] = LockedRunner(_SplitGenerator(
                        models, ios, onnx_path=paths.get(fx.FRAME_MOTION), folder=folder, hardware=hardware,
                        log_line=log_line, int8=self.precision == "int8",
                    ))
                    log_line(f"{name}: using {runners[name].label}")
                    continue
                spec = ModelSpec(
                    name=name,
                    onnx_path=paths.get(name, folder / f"{name}.onnx"),
                    torch_module=fx.torch_module_factory(models, name),
                    io=ios[name],
                    cpu_runtime=settings.cpu_runtimes[name],
                    precision=settings.tensorrt_precisions[name],
                    engines_dir=folder,
                )
                runners[name] = LockedRunner(open_runner(settings.backend, spec, key=models.key,
                                                         triton=settings.triton, hardware=hardware, log_line=log_line))
        except BaseException:
            for runner in runners.values():
                runner.close()
            raise
        self.kp_detector = runners[fx.KP_DETECTOR]
        self.source_encoder = runners[fx.SOURCE_ENCODER]
        self.frame_generator = runners[fx.FRAME_GENERATOR]

    @property
    def labels(self) -> dict[str, str]:
        """model name -> runtime label, e.g. {'fomm_kp_detector': 'onnxruntime-cpu', ...}."""
        return {r.runner.name: r.label for r in (self.kp_detector, self.source_encoder, self.frame_generator)}

    def keypoints(self, image: np.ndarray) -> FommKeypointArrays:
        """(1, 3, H, W) float32 RGB -> keypoints."""
        out = self.kp_detector.run({"image": image})
        return FommKeypointArrays(value=out["kp_value"], jacobian=out["kp_jacobian"])

    def encode(self, source: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) float32 RGB -> source features."""
        return self.source_encoder.run({"source_image": source})["source_features"]

    def generate(self, prepared: FommPrepared, kp_driving: FommKeypointArrays) -> np.ndarray:
        """(1, 3, H, W) float32 RGB prediction (valid until the generator's next call)."""
        return self.frame_generator.run({
            "source_image": prepared.source,
            "source_features": prepared.features,
            "kp_source_value": prepared.kp.value,
            "kp_source_jacobian": prepared.kp.jacobian,
            "kp_driving_value": kp_driving.value,
            "kp_driving_jacobian": kp_driving.jacobian,
        }, copy=False)["prediction"]

    def close(self) -> None:
        """Close the three runners (idempotent)."""
        for runner in (self.kp_detector, self.source_encoder, self.frame_generator):
            runner.close()


# --------------------------------------------------------------------------------------------------------------------
# The reenactor.
# --------------------------------------------------------------------------------------------------------------------


def _project_path(value: str | Path | None) -> Path | None:
    """A user-given path as given (~ expanded), else relative to the project folder; None stays None."""
    if value is None or not str(value).strip():
        return None
    path = Path(str(value)).expanduser()
    return PROJECT_ROOT / path if not path.is_absolute() and not path.exists() else path


def int8_ranges(models: Any, folder: Path, log_line: Callable[[str], None] = log.info,
                avatars_dir: Path = AVATARS_DIR) -> list:
    """The int8 bottleneck's calibration (fomm_fast.int8_calibration_ranges) on the built-in avatars, cached.

    Cached as int8-ranges-<size>.npz in the checkpoint's engines folder (which is per weights hash); recomputed when
    the file is missing, unreadable or made from other images. Raises EngineError if no calibration image exists.
    """
    import torch

    from avatarcam.generators.fomm.fast import int8_calibration_ranges

    images = [avatars_dir / name for name in INT8_CALIBRATION_AVATARS if (avatars_dir / name).is_file()]
    if not images:
        raise EngineError(
            f"the int8 FOMM generator calibrates on the built-in avatars ({', '.join(INT8_CALIBRATION_AVATARS)}) but "
            f"none is in {avatars_dir}: restore them (git checkout avatars/) or use --fomm-precision bf16"
        )
    size = models.image_size
    key = f"v{_INT8_CACHE_VERSION} {size} " + " ".join(p.name for p in images)
    cache = folder / f"int8-ranges-{size}.npz"
    try:
        with np.load(cache, allow_pickle=False) as data:
            if str(data["key"]) == key:
                blocks = int(data["blocks"])
                return [tuple(torch.from_numpy(data[f"r{i}_{part}"]) for part in "abc") for i in range(blocks)]
    except (OSError, KeyError, ValueError):
        pass
    log_line(f"fomm_frame_generator: calibrating the int8 bottleneck on {len(images)} built-in avatars (once)")
    tensors = []
    for path in images:
        square = cv2.resize(read_image(path), (size, size), interpolation=cv2.INTER_AREA)
        tensors.append(torch.from_numpy(bgr_to_model_input(square, np.empty((1, 3, size, size), np.float32))))
    ranges = int8_calibration_ranges(models.generator, models.kp_detector, tensors)
    arrays = {f"r{i}_{part}": r.numpy() for i, block in enumerate(ranges) for part, r in zip("abc", block)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=np.array(key), blocks=np.array(len(ranges)), **arrays)
    except OSError as exc:
        log_line(f"fomm_frame_generator: could not cache the int8 calibration in {cache}: {exc}")
    return ranges


class _SplitGenerator:
    """The bf16 (or int8-bottleneck) frame generator: fomm_fast.FommFrameMotion (float32, ONNX Runtime, else torch),
    then fomm_fast.FommFastDecoder (bf16, torch). Runner-shaped: name, label, run(inputs) -> {'prediction': ...},
    close()."""

    def __init__(self, models: Any, ios: dict[str, Any], *, onnx_path: Path | None, folder: Path, hardware: Any,
                 log_line: Callable[[str], None], int8: bool = False) -> None:
        from avatarcam.backends.base import ModelIO, TensorSpec
        from avatarcam.backends.selection import ModelSpec, open_backend
        from avatarcam.backends.torch_runner import TorchRunner
        from avatarcam.generators.fomm import export as fx
        from avatarcam.generators.fomm.fast import FommFastDecoder

        self.name = fx.FRAME_GENERATOR
        motion_io = ios[fx.FRAME_MOTION]
        spec = ModelSpec(name=fx.FRAME_MOTION, onnx_path=onnx_path or folder / f"{fx.FRAME_MOTION}.onnx",
                         torch_module=fx.torch_module_factory(models, fx.FRAME_MOTION), io=motion_io,
                         cpu_runtime="onnxruntime", engines_dir=folder)
        # The bf16 path runs only when no GPU takes the generator, so auto here means ONNX Runtime, else torch, on CPU.
        self.motion = open_backend("auto", spec, hardware=replace(hardware, cuda_available=False), log=log_line)
        warped = motion_io.outputs[0]
        decoder_io = ModelIO(inputs=(TensorSpec(name=warped.name, shape=warped.shape, dtype="float32"),),
                             outputs=ios[fx.FRAME_GENERATOR].outputs)
        size = models.image_size
        self.precision = "int8" if int8 else "bf16"
        try:
            ranges = int8_ranges(models, folder, log_line) if int8 else None
            self.decoder = TorchRunner(module=lambda: FommFastDecoder(models.generator, size, ranges), io=decoder_io,
                                       device="cpu", name="fomm_fast_decoder").open()
        except BaseException:
            self.motion.close()
            raise

    @property
    def label(self) -> str:
        """e.g. 'onnxruntime-cpu+torch-cpu-bf16' or '...-int8' (int8 bottleneck, bf16 up blocks)."""
        return f"{self.motion.label}+{self.decoder.label}-{self.precision}"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        warped = self.motion.run(inputs)["warped_features"]
        return self.decoder.run({"warped_features": warped})

    def close(self) -> None:
        self.motion.close()
        self.decoder.close()


def resolve_checkpoint(value: str | Path | None) -> Path:
    """The checkpoint path from generator.checkpoint: as given (~ expanded), else relative to the project folder."""
    if value is None or not str(value).strip():
        raise ModelFileError(
            "generator.model is fomm but generator.checkpoint is not set: point it at your FOMM checkpoint, e.g. "
            f"`--checkpoint ~/avatarify/vox-adv-cpk.pth.tar`. {_NOT_SHIPPED}"
        )
    path = _project_path(value)
    assert path is not None
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModelFileError(
            f"FOMM checkpoint {path} {what}: expected a FOMM .pth.tar file. {_NOT_SHIPPED}: pass that file with "
            f"--checkpoint or generator.checkpoint"
        )
    return path


class FommReenactor:
    """Avatarify-style FOMM animation behind the Reenactor protocol; one instance per checkpoint."""

    name = "fomm"

    def __init__(self, *, settings: FommSettings, motion: MotionSettings | None = None, hardware: Any = None,
                 log_line: Callable[[str], None] = log.info) -> None:
        from avatarcam.generators.fomm.export import load_fomm_models

        self.settings = settings
        self.canvas_size = settings.canvas_size
        self.motion = FommMotionControls(motion)
        self.models = load_fomm_models(resolve_checkpoint(settings.checkpoint), image_size=settings.image_size,
                                       fomm_config=settings.fomm_config)
        self.image_size = self.models.image_size
        self.runners = FommRuntime(models=self.models, settings=settings, hardware=hardware, log_line=log_line)
        if not any(label.startswith("torch") for label in self.runners.labels.values()):
            self.models = self.models.without_modules()  # the runtimes hold their own copies of the weights
        size, canvas = self.image_size, self.canvas_size
        # Per-frame buffers, owned by the render thread (prepare and best_match allocate their own).
        self._crop_bgr = np.empty((size, size, 3), np.uint8)
        self._input = np.empty((1, 3, size, size), np.float32)
        self._generated_bgr = np.empty((size, size, 3), np.uint8)
        self._warped_bgr = np.empty((canvas, canvas, 3), np.uint8)
        self._last_canvas = np.empty((canvas, canvas, 3), np.uint8)
        self._tracker = CropTracker()
        self._scale_for: tuple[FommPrepared, FommNeutral, float] | None = None
        self._last_kp_norm: FommKeypointArrays | None = None
        self._last_driver: tuple[int, FommKeypointArrays] | None = None
        self._lost_since_s: float | None = None
        self.last_prediction: np.ndarray | None = None
        """(1, 3, H, W) float32 RGB: the newest raw generator output (a copy), for tools and tests."""

    @property
    def needs_landmarks(self) -> bool:
        """Whether render and neutral_from use the driver's face landmarks (only to crop)."""
        return self.settings.crop

    @property
    def last_kp_norm(self) -> FommKeypointArrays | None:
        """The keypoints the generator was last driven with (after relative motion), None after reset()."""
        return self._last_kp_norm

    @property
    def last_driver_kp(self) -> FommKeypointArrays | None:
        """The driver's raw keypoints (before smoothing) of the last rendered frame."""
        return None if self._last_driver is None else self._last_driver[1]

    @property
    def runtimes(self) -> dict[str, str]:
        """model name -> runtime label in use."""
        return self.runners.labels

    @property
    def runtime(self) -> str:
        """Where FOMM runs, as MeshReenactor.runtime says it: 'onnxruntime-cpu', or one label per model if mixed."""
        return runtime_label(self.runners.labels, "fomm_")

    def close(self) -> None:
        """Release the runtimes."""
        self.runners.close()

    def __enter__(self) -> FommReenactor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- per avatar

    def prepare(self, avatar: Avatar) -> FommPrepared:
        """Crop, keypoints and encoding of one avatar (thread-safe; runs on the avatar loader's thread)."""
        size, canvas_size = self.image_size, self.canvas_size
        canvas = avatar.canvas_bgr
        if self.settings.crop:
            if canvas.shape[:2] != (canvas_size, canvas_size):
                # Avatars are loaded at canvas_size; any other size is scaled, landmarks with it.
                factor = canvas_size / canvas.shape[0]
                canvas = resize_square(canvas, canvas_size)
                points = np.asarray(avatar.points, np.float64)[:, :2] * factor
            else:
                points = avatar.points
            box = face_box(points)
            crop_bgr = crop_square(canvas, box, size=size)
            crop_to_canvas: np.ndarray | None = box.crop_to_image(size)
            alpha: np.ndarray | None = cv2.warpAffine(feather_mask(size), crop_to_canvas, (canvas_size, canvas_size),
                                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            rest = np.ascontiguousarray(canvas).copy()
        else:
            # FOMM's demo: the image as given, resized to the model's size (not the aligned canvas).
            image = read_image(avatar.path) if avatar.path is not None and Path(avatar.path).is_file() else canvas
            crop_bgr = resize_square(image, size)
            rest = resize_square(image, canvas_size)
            crop_to_canvas = alpha = None
        source = bgr_to_model_input(crop_bgr, np.empty((1, 3, size, size), np.float32))
        kp = self.runners.keypoints(source)
        features = self.runners.encode(source)
        return FommPrepared(
            avatar_name=avatar.name, source=source, features=features, kp=kp, rest_canvas_bgr=rest,
            crop_to_canvas=crop_to_canvas, alpha=alpha, rest_weight=None if alpha is None else 1.0 - alpha,
            match_kp=normalized_match_keypoints(kp.value[0]),
        )

    # -- per calibration

    def neutral_from(self, window: list[Observed]) -> FommNeutral:
        """kp_driving_initial: keypoints of the window's last frame (with a face when cropping)."""
        usable = [o for o in window if o is not None and (o.face is not None or not self.settings.crop)]
        if not usable:
            raise FaceMimicError(
                f"FOMM calibration got {len(window)} frames but none with a face: look at the camera and recalibrate"
            )
        observed = usable[-1]
        image = np.empty((1, 3, self.image_size, self.image_size), np.float32)
        box = self._driver_crop(observed, None, image, np.empty_like(self._crop_bgr))
        kp = self.runners.keypoints(image)
        return FommNeutral(kp=kp, box=box, frame_index=observed.frame.index)

    # -- per frame

    def reset(self) -> None:
        """Forget temporal state: smoothing, crop tracking, the held frame (after recalibration or avatar switch)."""
        self.motion.reset()
        self._tracker.reset()
        self._last_kp_norm = None
        self._lost_since_s = None

    def _driver_crop(self, observed: Observed, time_s: float | None, image: np.ndarray,
                     crop_bgr: np.ndarray) -> CropBox | None:
        """Fill `image` with the model input for a driver frame; the box used (tracked when time_s is given)."""
        frame_bgr = observed.frame.image_bgr
        check_driver_frame(frame_bgr)
        if not self.settings.crop:
            bgr_to_model_input(resize_square(frame_bgr, self.image_size, out=crop_bgr), image)
            return None
        if observed.face is None:
            raise FaceMimicError("a cropped driver frame needs a face: render() checks this before cropping")
        box = face_box(observed.face.points_px)
        if time_s is not None:
            box = self._tracker(box, time_s)
        bgr_to_model_input(crop_square(frame_bgr, box, size=self.image_size, out=crop_bgr), image)
        return box

    def movement_scale(self, prepared: FommPrepared, neutral: FommNeutral) -> float:
        """FOMM's adapt_movement_scale for this avatar and neutral, computed once per pair."""
        # A new avatar with the kept neutral gets its own scale; switching back recomputes (a hull area is cheap).
        cached = self._scale_for
        if cached is None or cached[0] is not prepared or cached[1] is not neutral:
            cached = (prepared, neutral, _movement_scale(prepared.kp, neutral.kp))
            self._scale_for = cached
        return cached[2]

    def render(self, prepared: FommPrepared, observed: Observed | None, neutral: FommNeutral | None, time_s: float,
               out: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Animate the avatar for this driver frame into `out` (S, S, 3) uint8 BGR and return it."""
        if out.shape != (self.canvas_size, self.canvas_size, 3) or out.dtype != np.uint8:
            raise FaceMimicError(
                f"unexpected output canvas: shape {out.shape}, dtype {out.dtype}; expected "
                f"({self.canvas_size}, {self.canvas_size}, 3) uint8"
            )
        timings = {} if timings is None else timings
        if neutral is None:  # not calibrated yet: the avatar as it is
            out[...] = prepared.rest_canvas_bgr
            return out
        seen = observed is not None and (observed.face is not None or not self.settings.crop)
        if observed is None or not seen:
            return self._render_lost(prepared, time_s, out, timings)
        start = time.perf_counter()
        self._driver_crop(observed, time_s, self._input, self._crop_bgr)
        cropped = time.perf_counter()
        raw = self.runners.keypoints(self._input)
        detected = time.perf_counter()
        self._last_driver = (observed.frame.index, raw)
        # Smoothing exists for the jitter the tracked crop adds; without a crop the keypoints are FOMM's own.
        driving = self.motion.smooth(raw, time_s) if self.settings.crop else raw
        kp_norm = relative_motion(prepared.kp, driving, neutral.kp, scale=self.movement_scale(prepared, neutral),
                                  intensity=self.motion.intensity)
        moved = time.perf_counter()
        self._generate_into(prepared, kp_norm, out, timings)
        self._last_kp_norm = kp_norm
        self._lost_since_s = None
        self._last_canvas[...] = out
        timings["crop"] = (cropped - start) * 1000
        timings["kp_detector"] = (detected - cropped) * 1000
        timings["motion"] = (moved - start) * 1000
        return out

    def _generate_into(self, prepared: FommPrepared, kp_norm: FommKeypointArrays, out: np.ndarray,
                       timings: dict[str, float]) -> None:
        start = time.perf_counter()
        prediction = self.runners.generate(prepared, kp_norm)
        generated = time.perf_counter()
        self.last_prediction = np.array(prediction)
        self._compose(prepared, prediction, out)
        record_round_trip((self.runners.kp_detector, self.runners.frame_generator), timings)
        timings["generate"] = (generated - start) * 1000
        timings["compose"] = (time.perf_counter() - generated) * 1000

    def _compose(self, prepared: FommPrepared, prediction: np.ndarray, out: np.ndarray) -> None:
        if prepared.crop_to_canvas is None:
            # Without a crop the canvas is the prediction, resized in float so it is rounded once.
            rgb = np.ascontiguousarray(prediction[0].transpose(1, 2, 0))
            if rgb.shape[0] != self.canvas_size:
                rgb = cv2.resize(rgb, (self.canvas_size, self.canvas_size), interpolation=cv2.INTER_LINEAR)
            cv2.cvtColor(cv2.convertScaleAbs(rgb, alpha=255.0), cv2.COLOR_RGB2BGR, dst=out)
            return
        assert prepared.alpha is not None and prepared.rest_weight is not None  # set together with crop_to_canvas
        _prediction_to_bgr(prediction, self._generated_bgr)
        paste_into_canvas(self._generated_bgr, prepared.crop_to_canvas, prepared.rest_canvas_bgr, prepared.alpha,
                          prepared.rest_weight, out, warped=self._warped_bgr)

    def _render_lost(self, prepared: FommPrepared, time_s: float, out: np.ndarray,
                     timings: dict[str, float]) -> np.ndarray:
        """No face: hold the last output, then ease the keypoints back to the avatar's and fade to the avatar."""
        last = self._last_kp_norm
        if last is None:
            out[...] = prepared.rest_canvas_bgr
            return out
        if self._lost_since_s is None:
            self._lost_since_s = time_s
            self.motion.reset()  # the face may come back anywhere: do not smooth across the gap
            self._tracker.reset()
        settings = self.motion.settings
        ease = lost_face_ease(time_s - self._lost_since_s, settings.lost_face_hold_s, settings.lost_face_ease_s)
        if ease is None:
            out[...] = self._last_canvas
            return out
        if ease >= 1.0:
            out[...] = prepared.rest_canvas_bgr
            return out
        kp = FommKeypointArrays(
            value=((1 - ease) * last.value + ease * prepared.kp.value).astype(np.float32),
            jacobian=((1 - ease) * last.jacobian + ease * prepared.kp.jacobian).astype(np.float32),
        )
        self._generate_into(prepared, kp, out, timings)
        # The generator reproduces the avatar only approximately: fade into the exact picture towards the end.
        fade = ease**3
        cv2.addWeighted(out, 1.0 - fade, prepared.rest_canvas_bgr, fade, 0.0, dst=out)
        return out

    # -- Avatarify's F key

    def best_match(self, prepared_list: Sequence[FommPrepared], observed: Observed | None) -> int | None:
        """Index of the avatar whose keypoints are closest to the driver's current ones (None: nothing to rank).

        Keypoints are compared as Avatarify compares faces: centred, divided by sqrt(hull area), sum of squared
        differences. The driver's keypoints of the last rendered frame are reused when `observed` is that frame.
        """
        if not prepared_list or observed is None or (self.settings.crop and observed.face is None):
            return None
        cached = self._last_driver
        if cached is not None and cached[0] == observed.frame.index:
            driver = cached[1]
        else:
            image = np.empty((1, 3, self.image_size, self.image_size), np.float32)
            self._driver_crop(observed, None, image, np.empty_like(self._crop_bgr))
            driver = self.runners.keypoints(image)
        target = normalized_match_keypoints(driver.value[0])
        distances = [keypoint_match_distance(p.match_kp, target) for p in prepared_list]
        return int(np.argmin(distances))


def build_fomm_reenactor(config: Any, *, hardware: Any = None) -> FommReenactor:
    """The FOMM reenactor for config.generator (checkpoint, backend, crop, canvas_size, fomm_*) and config.motion."""
    g, m = config.generator, config.motion
    motion = MotionSettings(
        intensity=dict(vars(m.intensity)), head_rotation=m.head_rotation, head_translation=m.head_translation,
        scale_lock=m.scale_lock, smoothing=m.smoothing, lost_face_hold_s=m.lost_face_hold_s,
        lost_face_ease_s=m.lost_face_ease_s,
    )
    settings = FommSettings(
        checkpoint=resolve_checkpoint(g.checkpoint), backend=g.backend, crop=g.crop, canvas_size=g.canvas_size,
        image_size=g.fomm_size, fomm_config=_project_path(g.fomm_config), precision=g.fomm_precision,
        triton=triton_settings(g),
    )
    return FommReenactor(settings=settings, motion=motion, hardware=hardware)
