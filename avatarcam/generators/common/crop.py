"""Crops shared by the neural generators (FOMM, LivePortrait): the face window from MediaPipe landmarks, its
One Euro tracking, the square crop and resize into a model input, and the feathered mask that blends the generated
crop back into the avatar canvas.

The crop geometry follows FOMM's VoxCeleb preprocessing and Avatarify's "fit your face here" window (see
CROP_SCALE); it is used for any model trained on such face crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatarcam.errors import FaceMimicError
from avatarcam.filters import OneEuroFilter

# Side of the crop as a multiple of the landmarks' larger extent (forehead to chin, cheek to cheek). At 1.6 the face
# fills about 60 % of the crop, as in FOMM's VoxCeleb crops and inside Avatarify's "fit your face here" rectangle
# (60 % of the width, 80 % of the height, hair included).
CROP_SCALE = 1.6
# MediaPipe's mesh ends at the hairline; vox crops centre the head, hair included, so the window sits a little higher.
CROP_RAISE = 0.06
# The generated crop blends into the avatar canvas over this share of the crop side at each edge; FOMM's output is
# weakest at the crop border (grid_sample pads with zeros there).
FEATHER_SHARE = 0.12
# The crop window follows the face through a One Euro filter in units of the window side: strong smoothing when the
# head is still, little lag when it moves (1 side per second raises the cutoff by CROP_BETA Hz).
CROP_MIN_CUTOFF_HZ = 1.5
CROP_BETA = 4.0


@dataclass(frozen=True)
class CropBox:
    """A square window of an image: centre and side in pixels (pixel i covers [i - 0.5, i + 0.5])."""

    center_x: float
    center_y: float
    side: float

    def crop_to_image(self, size: int) -> np.ndarray:
        """(2, 3) float64 affine taking crop pixel coordinates (size x size crop) to image pixel coordinates."""
        step = self.side / size
        left, top = self.center_x - self.side / 2, self.center_y - self.side / 2
        # Crop pixel j covers [j/size, (j+1)/size] of the window, so its centre sits at left + (j + 0.5) * step.
        return np.array([[step, 0.0, left + 0.5 * step], [0.0, step, top + 0.5 * step]])

    def as_array(self) -> np.ndarray:
        """(3,) float64 [center_x, center_y, side]."""
        return np.array([self.center_x, self.center_y, self.side])


def face_box(points_px: np.ndarray) -> CropBox:
    """The square FOMM-style window around a face from its (N, 2+) landmarks in pixels."""
    xy = np.asarray(points_px, np.float64)[:, :2]
    low, high = xy.min(0), xy.max(0)
    extent = float(max(high - low))
    if not math.isfinite(extent) or extent <= 0:
        raise FaceMimicError(f"face landmarks span {extent} pixels: expected a positive, finite face size")
    center = (low + high) / 2
    return CropBox(center_x=float(center[0]), center_y=float(center[1] - CROP_RAISE * extent),
                   side=CROP_SCALE * extent)


def crop_square(image_bgr: np.ndarray, box: CropBox, *, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The box resampled to (size, size, 3) uint8 (area-averaged when shrinking; replicated edges outside the image)."""
    height, width = image_bgr.shape[:2]
    # Only the window (plus a pixel) is resampled, so a 4K frame costs what its face region costs.
    half = box.side / 2 + 1
    x0, y0 = max(0, math.floor(box.center_x - half)), max(0, math.floor(box.center_y - half))
    x1, y1 = min(width, math.ceil(box.center_x + half) + 1), min(height, math.ceil(box.center_y + half) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the window is (almost) entirely outside the image: use the nearest edge
        x0, x1 = min(max(0, x0), width - 2), max(min(width, x1), 2)
        y0, y1 = min(max(0, y0), height - 2), max(min(height, y1), 2)
    region = image_bgr[y0:y1, x0:x1]
    step = box.side / size  # image pixels per crop pixel
    fx = fy = 1.0
    if step > 1.0:
        # Shrink by area first, then a bilinear warp does only the sub-pixel remainder: no aliasing, no jitter.
        small_w, small_h = max(2, round((x1 - x0) / step)), max(2, round((y1 - y0) / step))
        fx, fy = small_w / (x1 - x0), small_h / (y1 - y0)
        region = cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
    to_image = box.crop_to_image(size)
    to_region = np.array([
        [fx * to_image[0, 0], 0.0, fx * (to_image[0, 2] - x0 + 0.5) - 0.5],
        [0.0, fy * to_image[1, 1], fy * (to_image[1, 2] - y0 + 0.5) - 0.5],
    ])
    if out is None:
        out = np.empty((size, size, 3), np.uint8)
    cv2.warpAffine(region, to_region, (size, size), dst=out, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                   borderMode=cv2.BORDER_REPLICATE)
    return out


def resize_square(image: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Whole image to (size, size): area-averaged when shrinking, bilinear when enlarging (aspect not kept)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        if out is None:
            return image.copy()
        out[...] = image
        return out
    interpolation = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), dst=out, interpolation=interpolation)


def bgr_to_model_input(image_bgr: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> out (1, 3, H, W) float32 RGB in [0, 1], exactly uint8 / 255 as FOMM's input."""
    np.divide(image_bgr[..., ::-1].transpose(2, 0, 1), np.float32(255.0), out=out[0], dtype=np.float32)
    return out



def feather_mask(size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]: 1 inside, a smooth ramp to 0 over FEATHER_SHARE of the side at each edge."""
    centers = np.arange(size, dtype=np.float64) + 0.5
    ramp = np.clip(np.minimum(centers, size - centers) / (FEATHER_SHARE * size), 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible kink where the ramp starts
    return np.outer(ramp, ramp).astype(np.float32)


class CropTracker:
    """Follows the driver's face box through a One Euro filter (in units of the first box's side)."""

    def __init__(self) -> None:
        self._filter = OneEuroFilter(min_cutoff_hz=CROP_MIN_CUTOFF_HZ, beta=CROP_BETA, derivative_cutoff_hz=1.0)
        self._unit: float | None = None

    def reset(self) -> None:
        """Forget the history; the next box passes unchanged."""
        self._filter.reset()
        self._unit = None

    def __call__(self, box: CropBox, time_s: float) -> CropBox:
        """The smoothed box for this frame."""
        first = self._unit is None
        unit = self._unit = box.side if self._unit is None else self._unit
        smooth = self._filter(box.as_array() / unit, time_s).astype(np.float64) * unit
        if first:
            return box  # exactly the calibration crop when the neutral frame is rendered (the filter is float32)
        return CropBox(center_x=float(smooth[0]), center_y=float(smooth[1]), side=float(smooth[2]))


def check_driver_frame(frame_bgr: np.ndarray) -> None:
    """FaceMimicError unless frame_bgr is (H, W, 3) uint8 (a driver frame as capture delivers it)."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise FaceMimicError(
            f"unexpected driver frame: shape {frame_bgr.shape}, dtype {frame_bgr.dtype}; expected (H, W, 3) uint8"
        )


def paste_into_canvas(generated_bgr: np.ndarray, crop_to_canvas: np.ndarray, rest_canvas_bgr: np.ndarray,
                      alpha: np.ndarray, rest_weight: np.ndarray, out: np.ndarray,
                      warped: np.ndarray | None = None) -> np.ndarray:
    """Blend a generated crop ((s, s, 3) uint8 BGR) back into the avatar canvas, in place in out ((S, S, 3) uint8).

    crop_to_canvas: (2, 3) affine from crop to canvas pixels (CropBox.crop_to_image, scaled); alpha and rest_weight:
    (S, S) float32 feathered weights that sum to 1 (feather_mask warped to the canvas). warped: an optional (S, S, 3)
    uint8 scratch buffer, so that nothing is allocated per frame.
    """
    size = out.shape[1], out.shape[0]
    warped = cv2.warpAffine(generated_bgr, crop_to_canvas, size, dst=warped, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    cv2.blendLinear(warped, rest_canvas_bgr, alpha, rest_weight, dst=out)
    return out


def lost_face_ease(elapsed_s: float, hold_s: float, ease_s: float) -> float | None:
    """How far back to the avatar's own pose the output is, `elapsed_s` after the driver's face was lost.

    None while the last output is held (elapsed <= hold_s); then 0..1 along a raised cosine (smooth start and stop)
    over ease_s seconds; 1.0 once the avatar is at rest.
    """
    if elapsed_s <= hold_s:
        return None
    t = min(1.0, (elapsed_s - hold_s) / max(ease_s, 1e-3))
    return 1.0 if t >= 1.0 else 0.5 - 0.5 * math.cos(math.pi * t)
