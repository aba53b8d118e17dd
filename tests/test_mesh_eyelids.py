"""Drawn eyelids (generators/mesh/model.draw_eyelids) on a drawn eye whose lids have dark margins, as paintings have."""

from __future__ import annotations

import numpy as np
import pytest

from avatarcam import landmarks as lm
from avatarcam.generators.mesh.model import draw_eyelids

SKIN, WHITE, INK = (150, 170, 200), (235, 235, 235), (30, 30, 30)
CORNERS_X, EYE_Y = (60.0, 140.0), 100.0
UPPER_MARGIN_PX, LOWER_MARGIN_PX = 5, 3


def _lid(height: float) -> np.ndarray:
    """(7, 2) lid points from corner to corner, `height` px from the corners' line at the middle (up is negative)."""
    u = np.linspace(1 / 8, 7 / 8, 7)
    return np.stack([CORNERS_X[0] + u * (CORNERS_X[1] - CORNERS_X[0]), EYE_Y + height * np.sin(np.pi * u)], 1)


def _eye_canvas() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 200x200 canvas with one drawn open eye (inked lid margins, an iris), its landmarks and its open lids."""
    canvas = np.full((200, 200, 3), SKIN, np.uint8)
    up, low = _lid(-18.0), _lid(12.0)
    xs = np.arange(200)[None, :]
    ys = np.arange(200)[:, None]
    up_y = np.interp(xs, np.r_[CORNERS_X[0], up[:, 0], CORNERS_X[1]], np.r_[EYE_Y, up[:, 1], EYE_Y])
    low_y = np.interp(xs, np.r_[CORNERS_X[0], low[:, 0], CORNERS_X[1]], np.r_[EYE_Y, low[:, 1], EYE_Y])
    inside = (xs > CORNERS_X[0]) & (xs < CORNERS_X[1])
    canvas[inside & (ys >= up_y) & (ys <= low_y)] = WHITE
    canvas[inside & ((xs - 100) ** 2 + (ys - 97) ** 2 < 81) & (ys >= up_y) & (ys <= low_y)] = INK
    canvas[inside & (ys >= up_y - UPPER_MARGIN_PX) & (ys < up_y)] = INK  # the upper lid's lashes
    canvas[inside & (ys > low_y) & (ys <= low_y + LOWER_MARGIN_PX)] = INK  # the lower lid's line
    points = np.zeros((478, 2), np.float32)
    right = (lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER, lm.RIGHT_EYE_CORNERS, lm.RIGHT_BROW)
    points[list(right[0])], points[list(right[1])] = up, low
    points[list(right[2])] = [(CORNERS_X[0], EYE_Y), (CORNERS_X[1], EYE_Y)]
    points[list(right[3])] = (100.0, 55.0)
    # The other eye is left out (corners together: no eye to draw).
    points[list(lm.LEFT_EYE_CORNERS)] = (180.0, 20.0)
    open_lids = np.zeros((2, 14, 2), np.float32)
    open_lids[0] = np.concatenate([up, low])
    open_lids[1] = (180.0, 20.0)
    return canvas, points, open_lids


def _dark_rows(canvas: np.ndarray, x: int) -> int:
    column = canvas[60:140, x].astype(np.float32).mean(1)
    return int((column < 100).sum())


@pytest.mark.parametrize("x", [90, 100, 110])
def test_a_shut_eye_shows_one_lash_line_not_both_lid_margins(x):
    canvas, points, open_lids = _eye_canvas()
    assert _dark_rows(canvas, x) >= UPPER_MARGIN_PX + LOWER_MARGIN_PX  # open: lashes, lower lid line (and iris)
    up, low = points[list(lm.RIGHT_EYE_UPPER)], points[list(lm.RIGHT_EYE_LOWER)]
    shut = points.copy()
    shut[list(lm.RIGHT_EYE_UPPER)] = shut[list(lm.RIGHT_EYE_LOWER)] = low + 0.2 * (up - low)
    draw_eyelids(canvas, shut, open_lids)
    column = canvas[60:140, x].astype(np.float32).mean(1)
    assert column.max() < 215  # no eyeball white left
    # The upper lid's lashes come down over the lower lid's line, as on a real face: the shut eye is a line about
    # as thick as the upper lashes (dlib then reads it as shut), where both margins stacked made a slit of 8+ px.
    assert _dark_rows(canvas, x) <= UPPER_MARGIN_PX + 2
