"""The built-in mesh generator: exact identity at rest, accurate inverse warp, fixed background, mouth interior."""

from __future__ import annotations

import numpy as np
import pytest

from avatarcam import landmarks as lm
from avatarcam.generators.mesh.model import MeshGenerator, MeshSettings, draw_mouth_interior
from avatarcam.motion import DrivenFace, neutral_driven
from avatarcam.quality import psnr


@pytest.fixture(scope="module")
def generator():
    return MeshGenerator(MeshSettings())


@pytest.fixture(scope="module")
def prepared(generator, portrait_avatar):
    return generator.prepare(portrait_avatar.canvas_bgr, portrait_avatar.points)


def _rigid(prepared, *, shift=(0.0, 0.0), scale=1.0, yaw_deg=0.0):
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], np.float32)
    base = neutral_driven(prepared.face)
    driven = DrivenFace(points=base.points, rotation=rot, scale=scale, shift_px=np.array(shift, np.float32),
                        pivot=prepared.face.pivot)
    return DrivenFace(**{**driven.__dict__, "points": driven.transform_rigid(prepared.face.points)})


def test_rest_pose_reproduces_the_avatar_exactly(generator, prepared, portrait_avatar):
    out = generator.generate(prepared, neutral_driven(prepared.face))
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    assert psnr(out, portrait_avatar.canvas_bgr) > 40.0


def test_inverse_warp_lands_on_the_driven_landmarks(generator, prepared):
    driven = _rigid(prepared, shift=(14.0, -9.0), yaw_deg=12.0)
    map_x, map_y = generator.backward_maps(prepared, driven)
    size, grid = 512, generator.settings.grid_size
    import cv2

    full_x = cv2.resize(map_x, (size, size))
    full_y = cv2.resize(map_y, (size, size))
    interior = [i for i in range(468) if i not in lm.FACE_OVAL]
    errors = []
    for i in interior:
        x, y = driven.points[i]
        xi, yi = int(round(x)), int(round(y))
        src = np.array([full_x[yi, xi], full_y[yi, xi]]) + 0.0
        errors.append(np.linalg.norm(src - prepared.face.points[i, :2] - (np.array([x, y]) - [xi, yi])))
    # Sampling the output at a driven landmark reads the avatar at that landmark (within about a pixel).
    assert np.median(errors) < 1.0 and np.percentile(errors, 95) < 2.5


def test_background_stays_put_while_the_head_moves(generator, prepared, portrait_avatar):
    out = generator.generate(prepared, _rigid(prepared, shift=(25.0, 10.0), yaw_deg=15.0))
    canvas = portrait_avatar.canvas_bgr
    corners = [(slice(0, 40), slice(0, 40)), (slice(0, 40), slice(-40, None)), (slice(-40, None), slice(0, 40))]
    for ys, xs in corners:
        assert np.abs(out[ys, xs].astype(int) - canvas[ys, xs].astype(int)).mean() < 2.0
    nose = prepared.face.points[lm.NOSE_TIP, :2].astype(int)
    window = (slice(nose[1] - 30, nose[1] + 30), slice(nose[0] - 30, nose[0] + 30))
    assert np.abs(out[window].astype(int) - canvas[window].astype(int)).mean() > 5.0  # the face did move


def test_extreme_motion_stays_finite_and_hole_free(generator, prepared, portrait_avatar):
    driven = _rigid(prepared, shift=(120.0, 80.0), scale=1.4, yaw_deg=60.0)
    map_x, map_y = generator.backward_maps(prepared, driven)
    assert np.isfinite(map_x).all() and np.isfinite(map_y).all()
    out = generator.generate(prepared, driven)
    # Every pixel is sampled from the avatar: no black holes appear that the avatar does not have.
    assert (out.max(axis=2) == 0).sum() <= (portrait_avatar.canvas_bgr.max(axis=2) == 0).sum()


def test_open_mouth_gets_a_dark_cavity_and_teeth(generator, prepared):
    rest = neutral_driven(prepared.face)
    points = rest.points.copy()
    lower = [i for i in range(468) if points[i, 1] > points[lm.INNER_LIP_LOWER_MID, 1] - 1]
    points[lower, 1] += 45.0
    driven = DrivenFace(**{**rest.__dict__, "points": points})
    out = generator.generate(prepared, driven).astype(int)
    upper_lip = points[lm.INNER_LIP_UPPER_MID]
    lower_lip = points[lm.INNER_LIP_LOWER_MID]
    cx = int(upper_lip[0])
    column = out[int(upper_lip[1]) + 2:int(lower_lip[1]) - 2, cx - 3:cx + 3].mean(axis=1).sum(axis=1)
    mid = len(column) // 2
    assert column[mid] < 200  # dark cavity in the middle of the opening (sum of B, G, R)
    assert column[:4].max() > 450  # bright teeth just under the upper lip


def test_mouth_interior_respects_an_open_rest_mouth():
    canvas = np.full((100, 100, 3), 150, np.uint8)
    t = np.linspace(0, np.pi, 11)
    upper = np.stack([50 - 30 * np.cos(t), 50 - 2 * np.sin(t)], 1)
    lower = np.stack([50 + 30 * np.cos(t[1:-1]), 50 + 12 * np.sin(t[1:-1])], 1)
    poly = np.concatenate([upper, lower]).astype(np.float32)
    untouched = canvas.copy()
    draw_mouth_interior(untouched, poly, np.array([90, 80, 160], np.float32), rest_gap=0.3)
    assert (untouched == 150).all()  # the photo's own mouth is this open: nothing is painted
    draw_mouth_interior(canvas, poly, np.array([90, 80, 160], np.float32), rest_gap=0.0)
    assert (canvas != 150).any()


def test_wrong_canvas_is_rejected(generator, portrait_avatar):
    with pytest.raises(ValueError, match=r"expected \(512, 512, 3\)"):
        generator.prepare(portrait_avatar.canvas_bgr[:256, :256], portrait_avatar.points)
