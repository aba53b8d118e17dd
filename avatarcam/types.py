"""Frozen dataclasses that cross stage boundaries. Every array field states shape, dtype, range and order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# MediaPipe Face Landmarker blendshape categories, in its output order.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
BLENDSHAPE_INDEX = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}


@dataclass(frozen=True)
class Frame:
    """One frame from a capture source."""

    image_bgr: np.ndarray
    """(H, W, 3) uint8, BGR, 0..255."""
    index: int
    """0-based position in the source (files: the frame number; cameras: a running count)."""
    capture_time_s: float
    """time.perf_counter() when the frame was read from the device."""
    decode_ms: float = 0.0
    """How long reading and decoding the frame took."""


@dataclass(frozen=True)
class FaceObservation:
    """One detected face: MediaPipe Face Landmarker output, converted to pixels."""

    points_px: np.ndarray
    """(478, 3) float32: x, y in pixels of the analysed image; z in the same pixel scale, smaller is nearer."""
    blendshapes: np.ndarray
    """(52,) float32 in 0..1, in the order of BLENDSHAPE_NAMES."""
    head_matrix: np.ndarray
    """(4, 4) float32 facial transformation matrix (canonical face model -> camera, centimetres)."""
    image_size: tuple[int, int]
    """(width, height) of the analysed image in pixels."""

    def blendshape(self, name: str) -> float:
        """Score of one named blendshape, 0..1."""
        return float(self.blendshapes[BLENDSHAPE_INDEX[name]])


@dataclass(frozen=True)
class Observed:
    """A frame together with what the landmark stage found in it (face is None when no face was found)."""

    frame: Frame
    face: FaceObservation | None
    landmarks_ms: float = 0.0
    more_faces: tuple[FaceObservation, ...] = ()
    """Further faces in the frame, when the landmarker looks for more than one (generator families that use
    several faces, GeneratorFamily.multi_face); reenactors use `face` only."""

    @property
    def faces(self) -> tuple[FaceObservation, ...]:
        """Every face found: `face` first, then more_faces; () when none."""
        return () if self.face is None else (self.face, *self.more_faces)
