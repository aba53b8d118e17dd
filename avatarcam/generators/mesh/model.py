"""The built-in landmark-driven generator: a smooth dense warp of the avatar image, plus a synthetic mouth interior.

How it works. The avatar's landmarks (plus rings of anchor points around the head and fixed points on the canvas
border) are the control points of a regularised thin-plate spline. Because the control points sit at fixed places
in the avatar image, the spline's weights are solved once per avatar: each frame the forward displacement field
on a coarse grid is one matrix product, `field = W @ displacements`. The field is inverted on the coarse grid with
a few Newton steps (output pixel -> avatar pixel), upsampled, and applied with one `cv2.remap`. The head ring moves
rigidly with the head, an outer ring moves a little (hair, neck), the border never moves, so the background stays
put and nothing tears at the face boundary. Where the driven inner lips open, a mouth interior is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarcam import landmarks as lm
from avatarcam.motion import AvatarFace, DrivenFace, mouth_openness

FACE_CONTROL = np.arange(478)  # every mesh point and the irises (the lids close over the eye, not in the warp)
_OVAL = np.array(lm.FACE_OVAL)
_INNER_LIPS = np.array(lm.LIPS_INNER)
_EYES = tuple((np.array(upper), np.array(lower), np.array(corners)) for upper, lower, corners in (
    (lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER, lm.RIGHT_EYE_CORNERS),
    (lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER, lm.LEFT_EYE_CORNERS),
))
_BROWS = (np.array(lm.RIGHT_BROW), np.array(lm.LEFT_BROW))


@dataclass(frozen=True)
class MeshSettings:
    """Quality knobs of the mesh generator."""

    canvas_size: int = 512
    grid_size: int = 128
    smoothness: float = 2e-5
    """Thin-plate spline regularisation; larger is smoother but follows landmarks less exactly."""
    head_ring_scale: float = 1.35
    outer_ring_scale: float = 2.1
    outer_ring_motion: float = 0.25
    neck_motion: float = 0.8
    newton_steps: int = 3
    mouth_interior: bool = True
    turn_gain: tuple[float, float, float] = (1.45, 1.3, 1.0)
    """Extra head rotation about the image x (nod), y (turn) and z (tilt) axes. A 2D warp of a flat picture shows
    less of a turn than the 3D rotation it is given: read back by an independent detector (dlib 68-point landmarks,
    solvePnP) it shows 0.69-0.82 of a yaw and 0.54-0.70 of a pitch on five avatars (photo, paintings, cartoon), so
    the warp is asked for this much more to look as turned as the driver. In-plane tilt needs no help."""


@dataclass(frozen=True)
class PreparedMesh:
    """Everything the generator precomputes for one avatar."""

    image_bgr: np.ndarray
    """(S, S, 3) uint8 BGR avatar canvas."""
    face: AvatarFace
    weights: np.ndarray
    """(G*G, N) float32 spline weights: coarse forward field = weights @ control displacements (N, 2)."""
    rings: np.ndarray
    """(R, 3) float32 avatar-space anchor points that move with the head (head ring, then outer ring)."""
    ring_motion: np.ndarray
    """(R,) float32 how much of the head's rigid motion each ring point follows."""
    jaw_follow: np.ndarray
    """(R,) float32 share of the chin's expression motion each ring point follows (only points under the jaw)."""
    num_border: int
    grid_px: np.ndarray
    """(G, G, 2) float32 canvas-pixel coordinates of the coarse grid points."""
    mouth_palette: np.ndarray
    """(3,) float32 BGR base colour of the mouth interior, taken from the avatar's lips."""
    rest_mouth_gap: float
    """The avatar's own inner-lip gap over mouth width: only opening beyond it gets a drawn interior."""
    draw_features: bool = True
    """Draw eyelids and a mouth interior; False for avatars whose face mesh does not fit (avatars.MeshFit)."""


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 0.5 * r2 * np.log(r2)
    out[r2 < 1e-12] = 0.0
    return out


def _scaled_polygon(points: np.ndarray, center: np.ndarray, scale_x: float, scale_up: float, scale_down: float):
    rel = points - center
    factor_y = np.where(rel[:, 1] < 0, scale_up, scale_down)
    return center + rel * np.stack([np.full(len(rel), scale_x), factor_y], 1)


class MeshGenerator:
    """Warps a prepared avatar to driven landmarks; CPU only, no downloads, real time at 512x512."""

    def __init__(self, settings: MeshSettings | None = None, *, warp_runner=None):
        self.settings = settings or MeshSettings()
        # An open MeshWarpRunner (torch_warp.py) runs the warp on a GPU runtime; None keeps the numpy/cv2 path,
        # which is the fastest on CPU (tools/bench_backends.py).
        self.warp_runner = warp_runner
        size, grid = self.settings.canvas_size, self.settings.grid_size
        centers = (np.arange(grid, dtype=np.float32) + 0.5) * size / grid - 0.5
        gx, gy = np.meshgrid(centers, centers)
        self._grid_px = np.stack([gx, gy], -1).astype(np.float32)
        self._identity_x = np.ascontiguousarray(gx.astype(np.float32))
        self._identity_y = np.ascontiguousarray(gy.astype(np.float32))

    def prepare(self, image_bgr: np.ndarray, face_points: np.ndarray) -> PreparedMesh:
        """Precompute the spline weights for an avatar canvas and its (478, 3) landmarks in canvas pixels."""
        s = self.settings
        size = s.canvas_size
        if image_bgr.shape != (size, size, 3):
            raise ValueError(f"avatar canvas has shape {image_bgr.shape}, expected ({size}, {size}, 3)")
        face = AvatarFace.from_points(face_points, turn_gain=s.turn_gain)
        pts = face.points
        oval = pts[_OVAL]
        center = oval[:, :2].mean(0)
        mean_z = float(pts[:, 2].mean())
        head = _scaled_polygon(oval[:, :2], center, s.head_ring_scale, s.head_ring_scale * 1.12, s.head_ring_scale)
        outer = _scaled_polygon(oval[:, :2], center, s.outer_ring_scale, s.outer_ring_scale, s.outer_ring_scale)
        below_chin = (oval[:, 1] - center[1]) > 0.25 * (oval[:, 1].max() - center[1])
        head_motion = np.where(below_chin, s.neck_motion, 1.0)
        outer_motion = np.full(len(outer), s.outer_ring_motion) * np.where(below_chin, 0.5, 1.0)
        rings = np.concatenate([head, outer])
        # Ring points sit at the depth of the face-oval point they extend, so that a turning head moves the face
        # edge and the hair beside it together instead of squeezing the gap between them.
        ring_z = np.concatenate([oval[:, 2], 0.5 * (oval[:, 2] + mean_z)])
        rings3 = np.concatenate([rings, ring_z[:, None]], 1).astype(np.float32)
        ring_motion = np.concatenate([head_motion, outer_motion]).astype(np.float32)
        jaw_follow = np.concatenate([np.where(below_chin, 0.75, 0.0), np.where(below_chin, 0.2, 0.0)])
        edge = np.linspace(-0.1 * size, 1.1 * size, BORDER_POINTS_PER_SIDE)
        border = np.array(
            [(x, -0.1 * size) for x in edge] + [(x, 1.1 * size) for x in edge]
            + [(-0.1 * size, y) for y in edge[1:-1]] + [(1.1 * size, y) for y in edge[1:-1]], np.float32,
        )
        control = np.concatenate([pts[FACE_CONTROL, :2], rings, border]).astype(np.float64) / size
        n = len(control)
        d2 = ((control[:, None, :] - control[None, :, :]) ** 2).sum(-1)
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = _tps_kernel(d2) + s.smoothness * np.eye(n)
        system[:n, n] = 1.0
        system[:n, n + 1:] = control
        system[n, :n] = 1.0
        system[n + 1:, :n] = control.T
        inverse = np.linalg.inv(system)[:, :n]  # maps control values to spline coefficients
        # The grid side is large (G*G x N): squared distances by expansion and float32 keep this well under a second.
        grid = self._grid_px.reshape(-1, 2).astype(np.float64) / size
        g2 = (grid**2).sum(1)[:, None] + (control**2).sum(1)[None, :] - 2.0 * grid @ control.T
        np.maximum(g2, 0.0, out=g2)
        basis = np.concatenate([_tps_kernel(g2), np.ones((len(grid), 1)), grid], 1)
        weights = (basis @ inverse).astype(np.float32)
        return PreparedMesh(
            image_bgr=np.ascontiguousarray(image_bgr), face=face, weights=weights, rings=rings3,
            ring_motion=ring_motion, jaw_follow=jaw_follow.astype(np.float32), num_border=len(border),
            grid_px=self._grid_px,
            mouth_palette=_mouth_colour(image_bgr, pts), rest_mouth_gap=mouth_openness(pts),
        )

    def control_displacements(self, prepared: PreparedMesh, driven: DrivenFace) -> np.ndarray:
        """(N, 2) float32 displacement of every control point, avatar -> driven, in canvas pixels.

        The lids go to DrivenFace.open_lids when given: the warp keeps the eye open and draw_eyelids closes it.
        """
        targets = driven.points
        if driven.open_lids is not None:
            targets = targets.copy()
            for (upper, lower, _), lids in zip(_EYES, driven.open_lids):
                targets[np.concatenate([upper, lower])] = lids
        face_d = targets[FACE_CONTROL] - prepared.face.points[FACE_CONTROL, :2]
        ring_d = driven.transform_rigid(prepared.rings, prepared.ring_motion) - prepared.rings[:, :2]
        # The skin under the jaw follows the chin part of the way, so an opening mouth stretches the neck
        # instead of folding it.
        chin_expression = face_d[lm.CHIN] - (driven.transform_rigid(prepared.face.points[[lm.CHIN]])[0]
                                             - prepared.face.points[lm.CHIN, :2])
        ring_d += prepared.jaw_follow[:, None] * chin_expression[None, :]
        border_d = np.zeros((prepared.num_border, 2), np.float32)
        return np.concatenate([face_d, ring_d, border_d]).astype(np.float32)

    def backward_maps(self, prepared: PreparedMesh, driven: DrivenFace) -> tuple[np.ndarray, np.ndarray]:
        """Coarse (G, G) maps giving, for each output grid point, the avatar pixel to sample."""
        g = self.settings.grid_size
        size = self.settings.canvas_size
        field = (prepared.weights @ self.control_displacements(prepared, driven)).reshape(g, g, 2)
        fx = np.ascontiguousarray(field[..., 0])
        fy = np.ascontiguousarray(field[..., 1])
        step = size / g
        fx, fy, (dfx_dx, dfx_dy, dfy_dx, dfy_dy) = _unfold(fx, fy, step)
        target_x, target_y = self._identity_x, self._identity_y
        x = target_x - fx
        y = target_y - fy
        to_grid = g / size
        for _ in range(self.settings.newton_steps):
            gx = (x + 0.5) * to_grid - 0.5
            gy = (y + 0.5) * to_grid - 0.5

            def sample(a: np.ndarray, gx: np.ndarray = gx, gy: np.ndarray = gy) -> np.ndarray:
                return cv2.remap(a, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

            rx = x + sample(fx) - target_x
            ry = y + sample(fy) - target_y
            a11 = 1.0 + sample(dfx_dx)
            a12 = sample(dfx_dy)
            a21 = sample(dfy_dx)
            a22 = 1.0 + sample(dfy_dy)
            det = a11 * a22 - a12 * a21
            ok = det > NEWTON_MIN_DET  # where the forward map folds or collapses, keep the damped estimate
            inv_det = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
            step_x = (a22 * rx - a12 * ry) * inv_det
            step_y = (a11 * ry - a21 * rx) * inv_det
            x = x - np.where(ok, step_x, 0.5 * rx)
            y = y - np.where(ok, step_y, 0.5 * ry)
        # Where the forward map folds, Newton cannot converge: fall back to the first-order inverse there.
        gx = (x + 0.5) * to_grid - 0.5
        gy = (y + 0.5) * to_grid - 0.5
        rx = x + cv2.remap(fx, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) - target_x
        ry = y + cv2.remap(fy, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) - target_y
        bad = ((rx * rx + ry * ry) > (0.5 * step) ** 2).astype(np.float32)
        if bad.any():
            # Blend towards a locally smoothed map rather than switching per pixel, which would speckle.
            weight = np.minimum(1.0, cv2.GaussianBlur(bad, (7, 7), 0) * 3.0)
            x = x + weight * (cv2.GaussianBlur(x, (7, 7), 0) - x)
            y = y + weight * (cv2.GaussianBlur(y, (7, 7), 0) - y)
        return x.astype(np.float32), y.astype(np.float32)

    def generate(self, prepared: PreparedMesh, driven: DrivenFace, out: np.ndarray | None = None) -> np.ndarray:
        """The (S, S, 3) uint8 BGR avatar canvas posed as `driven`; written into `out` when given."""
        size = self.settings.canvas_size
        if out is None:
            out = np.empty((size, size, 3), np.uint8)
        if self.warp_runner is not None:
            self.warp_runner.warp(prepared=prepared, displacements=self.control_displacements(prepared, driven),
                                  out_bgr_uint8=out)
        else:
            map_x, map_y = self.backward_maps(prepared, driven)
            full_x = cv2.resize(map_x, (size, size), interpolation=cv2.INTER_LINEAR)
            full_y = cv2.resize(map_y, (size, size), interpolation=cv2.INTER_LINEAR)
            cv2.remap(prepared.image_bgr, full_x, full_y, cv2.INTER_LINEAR, dst=out,
                      borderMode=cv2.BORDER_REPLICATE)
        if driven.open_lids is not None and prepared.draw_features:
            draw_eyelids(out, driven.points, driven.open_lids)
        if self.settings.mouth_interior and prepared.draw_features:
            draw_mouth_interior(out, driven.points[_INNER_LIPS], prepared.mouth_palette, prepared.rest_mouth_gap)
        return out


FOLD_DET = 0.3
BORDER_POINTS_PER_SIDE = 9
NEWTON_MIN_DET = 0.05
UNFOLD_PASSES = 6


def _jacobian(fx: np.ndarray, fy: np.ndarray, step: float):
    dfx_dy, dfx_dx = np.gradient(fx, step)
    dfy_dy, dfy_dx = np.gradient(fy, step)
    return dfx_dx, dfx_dy, dfy_dx, dfy_dy


def _unfold(fx: np.ndarray, fy: np.ndarray, step: float):
    """Smooth the forward field locally where it folds or nearly collapses, so it stays invertible."""
    jac = _jacobian(fx, fy, step)
    for _ in range(UNFOLD_PASSES):
        det = (1.0 + jac[0]) * (1.0 + jac[3]) - jac[1] * jac[2]
        folded = (det < FOLD_DET).astype(np.float32)
        if not folded.any():
            break
        weight = np.minimum(1.0, cv2.GaussianBlur(folded, (9, 9), 0) * 4.0)
        fx = fx + weight * (cv2.GaussianBlur(fx, (9, 9), 0) - fx)
        fy = fy + weight * (cv2.GaussianBlur(fy, (9, 9), 0) - fy)
        jac = _jacobian(fx, fy, step)
    return fx, fy, jac


def _mouth_colour(image_bgr: np.ndarray, points: np.ndarray) -> np.ndarray:
    mask = np.zeros(image_bgr.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points[np.array(lm.LIPS_OUTER), :2]).astype(np.int32)], 255)
    cv2.fillPoly(mask, [np.round(points[_INNER_LIPS, :2]).astype(np.int32)], 0)
    if mask.any():
        lips = image_bgr[mask > 0].astype(np.float32).mean(0)
    else:
        lips = np.array([90, 80, 160], np.float32)
    return lips


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / max(edge1 - edge0, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def draw_mouth_interior(canvas: np.ndarray, inner_lips: np.ndarray, lip_bgr: np.ndarray,
                        rest_gap: float = 0.0) -> None:
    """Paint a mouth interior inside the (20, 2) inner-lip polygon (lm.LIPS_INNER order, canvas px), in place.

    canvas: (S, S, 3) uint8 BGR. lip_bgr: (3,) float32 the avatar's lip colour, which tints the cavity and tongue
    so that the interior suits the avatar. Upper teeth hang from the upper lip and lower teeth stand on the lower
    lip (so they move with the jaw), with seams between the front teeth; a wide opening shows a tongue and a dark
    throat with soft shading towards the lips and corners. The edge is feathered. `rest_gap` is the avatar's own
    opening (gap over width): a mouth already open in the photo shows its own teeth until the driver opens wider.
    """
    poly = inner_lips.astype(np.float32)
    upper_mid, lower_mid = poly[5], poly[15]
    width = float(np.linalg.norm(poly[0] - poly[10]))
    gap = float(lower_mid[1] - upper_mid[1])
    opening = gap / max(width, 1.0) - rest_gap
    if width < 4 or opening < MOUTH_MIN_OPENING:
        return
    h, w = canvas.shape[:2]
    x0, y0 = np.floor(poly.min(0)).astype(int) - 3
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 4
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    local = poly - np.array([x0, y0], np.float32)
    roi = canvas[y0:y1, x0:x1]
    shape = roi.shape[:2]
    mask = np.zeros(shape, np.float32)
    cv2.fillPoly(mask, [np.round(local * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    feather = max(1, int(round(0.05 * gap)) | 1)
    mask = cv2.GaussianBlur(mask, (2 * feather + 1, 2 * feather + 1), 0)
    # Strength grows over the first few percent of opening so that a barely parted mouth does not flash dark.
    strength = min(1.0, (opening - MOUTH_MIN_OPENING) / 0.05)
    mask *= strength
    yy = np.arange(shape[0], dtype=np.float32)[:, None]
    xx = np.arange(shape[1], dtype=np.float32)[None, :]

    def edge_y(half: np.ndarray) -> np.ndarray:
        order = np.argsort(half[:, 0])
        return np.interp(xx[0], half[order, 0], half[order, 1])[None, :]

    upper_y = edge_y(local[:11])  # inner upper lip, corner to corner
    lower_y = edge_y(np.concatenate([local[10:], local[:1]]))  # inner lower lip
    local_gap = np.maximum(lower_y - upper_y, 1.0)
    depth = np.clip((yy - upper_y) / local_gap, 0, 1)
    centre_x = float(local[[0, 10], 0].mean())
    from_centre = (xx - centre_x) / (0.5 * width)  # -1 .. 1 corner to corner
    across = np.clip(1.0 - np.abs(from_centre), 0, 1)
    lip = np.asarray(lip_bgr, np.float32)
    # Cavity: the lip colour darkened, darkest in the throat (middle, a little below the upper teeth), lighter
    # towards the lips and the corners, where light falls in.
    throat = np.exp(-((from_centre / 0.55) ** 2) - ((depth - 0.45) / 0.4) ** 2)
    cavity = lip[None, None, :] * (0.34 - 0.24 * throat)[..., None]
    # Tongue: a rounded hump rising from the lower lip once the mouth is well open, lit from above.
    open_ratio = gap / max(width, 1.0)
    tongue_top = 1.0 - (0.2 + 0.3 * _smoothstep(0.15, 0.45, np.array(open_ratio))) * (1.0 - from_centre**2)
    tongue_share = float(_smoothstep(0.12, 0.3, np.array(open_ratio)))
    tongue = _smoothstep(-0.04, 0.04, depth - tongue_top)[..., None] * tongue_share
    tongue_lit = 0.55 + 0.25 * np.clip(1.0 - (depth - tongue_top) / 0.3, 0, 1)[..., None]
    tongue_bgr = (0.6 * lip + 0.4 * np.array([120, 110, 190], np.float32))[None, None, :] * tongue_lit
    interior = cavity * (1 - tongue) + tongue_bgr * tongue
    # Teeth are about a seventh of the mouth's width tall: a grin shows mostly teeth, a wide-open jaw mostly cavity.
    upper_band = min(0.45 * gap, 0.14 * width)
    upper_teeth = 1.0 - _smoothstep(upper_band * 0.8, upper_band, yy - upper_y)
    # Lower teeth only once the jaw is open: in a narrow opening they would read as closed lips.
    lower_band = min(0.18 * gap, 0.07 * width) * float(_smoothstep(0.18, 0.3, np.array(open_ratio)))
    lower_teeth = _smoothstep(-lower_band, -0.75 * lower_band, yy - lower_y) if lower_band > 0.5 else 0.0
    # The side teeth turn away into the cheeks' shadow; fewer lower teeth show than upper ones.
    teeth = np.clip(upper_teeth * _smoothstep(0.0, 0.4, across) + 0.9 * lower_teeth * _smoothstep(0.3, 0.65, across),
                    0, 1)
    # Seams between teeth: one on the midline, the teeth narrowing (turning away) towards the corners.
    phase = (np.abs(xx - centre_x) / max(0.15 * width, 1.0)) ** 1.2
    seam = np.abs(phase - np.round(phase))
    seam_shade = 1.0 - 0.22 * np.exp(-((seam / 0.05) ** 2)) * across
    gum_shadow = 1.0 - 0.3 * np.exp(-np.maximum(yy - upper_y, 0) / max(0.15 * upper_band, 0.5))
    side_shade = 0.7 + 0.3 * across
    teeth_bgr = np.array([200, 212, 224], np.float32)[None, None, :] * (seam_shade * gum_shadow * side_shade)[..., None]
    teeth = teeth[..., None]
    interior = interior * (1 - teeth) + teeth_bgr * teeth
    blended = roi.astype(np.float32) * (1 - mask[..., None]) + interior * mask[..., None]
    np.copyto(roi, np.clip(blended + 0.5, 0, 255).astype(np.uint8))


MOUTH_MIN_OPENING = 0.03
"""Inner-lip gap over mouth width beyond the avatar's own below which no interior is drawn."""

EYELID_SKIN_BAND = 0.4
"""Height of the upper-lid skin (above the open lid) that stretches down over a closing eye, in eye widths."""
LOWER_LID_BAND = 0.18
LASH_WIDTH = 0.045
"""Thickness of the drawn lash line of a closed eye, in eye widths."""
LID_MARGIN = 0.09
"""The lid's edge (lashes, a drawn lid line) that moves with the lid without stretching, in eye widths."""


def _lid_curve(u_points: np.ndarray, v_points: np.ndarray, u: np.ndarray, width: float) -> np.ndarray:
    """v of a lid at positions u along the eye axis: the lid points joined to both corners (u 0 and width, v 0)."""
    order = np.argsort(u_points)
    knots_u = np.concatenate([[0.0], u_points[order], [width]])
    knots_v = np.concatenate([[0.0], v_points[order], [0.0]])
    return np.interp(u, knots_u, knots_v, left=0.0, right=0.0)


def _to_eye_uv(p: np.ndarray, origin: np.ndarray, axis: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """(N, 2) canvas points -> (N, 2) coordinates along the eye's corner-to-corner axis and its normal."""
    return np.stack([(p - origin) @ axis, (p - origin) @ normal], -1)


def draw_eyelids(canvas: np.ndarray, points: np.ndarray, open_lids: np.ndarray) -> None:
    """Close the eyes of a warped canvas by drawing the lids over them, in place.

    canvas: (S, S, 3) uint8 BGR, warped so that each eye is open as `open_lids` (2, 14, 2) says (per eye the lid
    points lm.*_EYE_UPPER then *_LOWER, canvas pixels). points: (478, 2) the driven landmarks; their lid points say
    where the lids should be. Where a lid is lower than its open position, the skin above the open upper lid
    (EYELID_SKIN_BAND eye widths of it, or half the way up to the brow, lashes at its edge) is stretched down to the
    driven lid, and the skin below the lower lid up to its driven lid, so the eyeball is covered rather than
    squashed; a closed eye gets a soft lash line where the lids meet. Works in each eye's own axis (corner to
    corner), so a rolled head is handled.
    """
    height, width_px = canvas.shape[:2]
    for (upper, lower, corners), brow, lids in zip(_EYES, _BROWS, open_lids):
        c0, c1 = points[corners[0]].astype(np.float64), points[corners[1]].astype(np.float64)
        axis = c1 - c0
        eye_w = float(np.linalg.norm(axis))
        if eye_w < 4.0:
            continue
        axis /= eye_w
        normal = np.array([-axis[1], axis[0]])
        open_up, open_low = lids[:7].astype(np.float64), lids[7:].astype(np.float64)
        if (open_low - c0).mean(0) @ normal < (open_up - c0).mean(0) @ normal:
            normal = -normal  # v grows from the upper lid towards the lower lid
        ou, ol = _to_eye_uv(open_up, c0, axis, normal), _to_eye_uv(open_low, c0, axis, normal)
        tu = _to_eye_uv(points[upper].astype(np.float64), c0, axis, normal)
        tl = _to_eye_uv(points[lower].astype(np.float64), c0, axis, normal)
        open_gap = float(np.mean(ol[:, 1] - ou[:, 1]))
        closure = 1.0 - float(np.mean(tl[:, 1] - tu[:, 1])) / max(open_gap, 1e-6)
        if open_gap < 1.0 or closure < 0.02:
            continue
        # The stretched skin stays under the brow: at most about half way from the lid up to the brow's middle.
        brow_v = float(_to_eye_uv(points[brow].astype(np.float64), c0, axis, normal)[:, 1].mean())
        band_up = max(2.5 * LID_MARGIN * eye_w, min(EYELID_SKIN_BAND * eye_w, 0.5 * (float(ou[:, 1].min()) - brow_v)))
        band_low = LOWER_LID_BAND * eye_w
        # The region that can change, in eye coordinates, and its pixel bounding box.
        v_min = min(ou[:, 1].min(), 0.0) - band_up - 2.0
        v_max = max(ol[:, 1].max(), 0.0) + band_low + 2.0
        box = np.array([c0 + a * axis * eye_w + b * normal for a in (-0.1, 1.1) for b in (v_min, v_max)])
        x0, y0 = np.maximum(np.floor(box.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(box.max(0)).astype(int) + 1, (width_px, height))
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        xx, yy = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
        rel_x, rel_y = xx - c0[0], yy - c0[1]
        u = rel_x * axis[0] + rel_y * axis[1]
        v = rel_x * normal[0] + rel_y * normal[1]
        # A lid's skin band is as tall as the eye is wide at the middle and thins towards the corners.
        taper = np.sqrt(np.clip(1.0 - (2.0 * u / eye_w - 1.0) ** 2, 0.0, 1.0))
        lid_open = _lid_curve(ou[:, 0], ou[:, 1], u, eye_w)
        low_open = _lid_curve(ol[:, 0], ol[:, 1], u, eye_w)
        lid_edge = np.maximum(_lid_curve(tu[:, 0], tu[:, 1], u, eye_w), lid_open)
        low_edge = np.minimum(_lid_curve(tl[:, 0], tl[:, 1], u, eye_w), low_open)
        low_edge = np.maximum(low_edge, lid_edge)  # the lids meet, they never cross
        top = lid_open - band_up * taper
        bottom = low_open + band_low * taper
        # Backward maps. Each lid's margin (lashes, the drawn lid line of a painting or cartoon) travels with the
        # lid unchanged; the skin between it and the band's far edge stretches to follow.
        margin_up = LID_MARGIN * eye_w * taper
        margin_low = 0.6 * LID_MARGIN * eye_w * taper
        skin_up = top + (v - top) * (band_up * taper - margin_up) / np.maximum(lid_edge - margin_up - top, 1e-6)
        src_up = np.where(v >= lid_edge - margin_up, v - (lid_edge - lid_open), skin_up)
        skin_low = bottom - (bottom - v) * (band_low * taper - margin_low) / np.maximum(
            bottom - low_edge - margin_low, 1e-6)
        src_low = np.where(v <= low_edge + margin_low, v + (low_open - low_edge), skin_low)
        src_up = np.where(v < top, v, src_up)
        src_low = np.where(v > bottom, v, src_low)
        # How much of each pixel a lid covers, anti-aliased over a pixel; the lids' sums never exceed 1.
        cover_up = np.clip(lid_edge - v + 0.5, 0.0, 1.0)
        cover_low = np.clip(v - low_edge + 0.5, 0.0, 1.0)
        src_v = np.where(v < 0.5 * (lid_edge + low_edge), src_up, src_low)
        cover = (cover_up + cover_low)[..., None]
        if np.abs(src_v - v).max() < 0.05:
            continue
        map_x = (c0[0] + u * axis[0] + src_v * normal[0] - x0).astype(np.float32)
        map_y = (c0[1] + u * axis[1] + src_v * normal[1] - y0).astype(np.float32)
        roi = canvas[y0:y1, x0:x1]
        lidded = cv2.remap(roi, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        lidded = lidded * cover + roi.astype(np.float32) * (1.0 - cover)
        # Where the lids meet, a lash line (darker the more the eye is closed).
        lash_w = max(1.0, LASH_WIDTH * eye_w)
        meet = 0.5 * (lid_edge + low_edge)
        lash = np.exp(-(((v - meet) / lash_w) ** 2)) * (taper > 0) * np.clip(taper * 3.0, 0.0, 1.0)
        strength = 0.7 * _smoothstep(0.5, 0.95, np.array(closure))
        shade = (1.0 - strength * lash)[..., None]
        np.copyto(roi, np.clip(lidded * shade + 0.5, 0, 255).astype(np.uint8))
