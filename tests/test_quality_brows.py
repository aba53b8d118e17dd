"""tools/judge_brows.py: the brow height it reads from dlib's 68 landmarks (pure geometry; no dlib needed here)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "judge_brows.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("judge_brows", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _face() -> np.ndarray:
    """(68, 2) a frontal iBUG face in pixels: eye corners 60 px apart on y = 100, brows 20 px above them."""
    points = np.zeros((68, 2))
    points[36:42] = [(70, 100), (80, 96), (90, 96), (100, 100), (90, 104), (80, 104)]
    points[42:48] = [(130, 100), (140, 96), (150, 96), (160, 100), (150, 104), (140, 104)]
    points[17:22] = np.stack([np.linspace(65, 105, 5), np.full(5, 80.0)], 1)
    points[22:27] = np.stack([np.linspace(125, 165, 5), np.full(5, 80.0)], 1)
    points[:17] = np.stack([np.linspace(50, 180, 17), np.full(17, 150.0)], 1)
    points[27:36] = (115, 130)
    points[48:68] = (115, 170)
    return points


def _move(points: np.ndarray, roll_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = math.radians(roll_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points - points.mean(0)) @ rot.T * scale + points.mean(0) + np.array(shift)


def test_brow_height_is_in_eye_distances_and_ignores_roll_size_and_position(tool):
    face = _face()
    heights = tool.brow_heights(np.stack([face, _move(face, 20.0, 1.7, (40.0, -25.0))]))
    np.testing.assert_allclose(heights, 20.0 / 60.0, atol=1e-9)


def test_raised_and_single_brows_are_read_per_side(tool):
    face, raised, one = _face(), _face(), _face()
    raised[17:27, 1] -= 6.0  # both brows up by a tenth of the eye distance
    one[22:27, 1] -= 6.0  # the subject's left brow only
    heights = tool.brow_heights(np.stack([face, raised, one]))
    np.testing.assert_allclose(heights[1] - heights[0], [0.1, 0.1], atol=1e-9)
    np.testing.assert_allclose(heights[2] - heights[0], [0.0, 0.1], atol=1e-9)


def test_frames_without_a_face_stay_unread(tool):
    heights = tool.brow_heights(np.stack([_face(), np.full((68, 2), np.nan)]))
    assert np.isfinite(heights[0]).all() and np.isnan(heights[1]).all()
