"""Find the avatar whose face best matches the driver's current face (Avatarify's "F" key)."""

from __future__ import annotations

import numpy as np

from avatarcam.avatars import Avatar
from avatarcam.motion import similarity_transform
from avatarcam.types import FaceObservation


def shape_distance(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """Mean landmark distance after aligning a onto b by a similarity, in units of b's size."""
    a = np.asarray(points_a, np.float64)[:, :2]
    b = np.asarray(points_b, np.float64)[:, :2]
    scale, rotation, translation = similarity_transform(a, b)
    aligned = scale * a @ rotation.T + translation
    size = np.sqrt(((b - b.mean(0)) ** 2).sum(1).mean())
    return float(np.linalg.norm(aligned - b, axis=1).mean() / max(size, 1e-6))


def best_matching_avatar(face: FaceObservation, avatars: list[Avatar]) -> int | None:
    """Index of the avatar whose neutral landmarks are closest in shape and pose to `face`, or None."""
    if not avatars:
        return None
    distances = [shape_distance(face.points_px, a.points) for a in avatars]
    return int(np.argmin(distances))
