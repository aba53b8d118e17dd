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

FACE_CONTROL = np.arange(468)  # every mesh point but the irises, which would fold against closing lids
_OVAL = np.array(lm.FACE_OVAL)
_INNER_LIPS = np.array(lm.LIPS_INNER)


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
        face = AvatarFace.from_points(face_points)
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
        """(N, 2) float32 displacement of every control point, avatar -> driven, in canvas pixels."""
        face_d = driven.points[FACE_CONTROL] - prepared.face.points[FACE_CONTROL, :2]
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
        if self.settings.mouth_interior:
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
    """Paint a mouth cavity with teeth inside the (20, 2) inner-lip polygon, feathered at its edge.

    `rest_gap` is the avatar's own opening (gap over width): a mouth already open in the photo shows its own
    teeth until the driver opens wider than that.
    """
    poly = inner_lips.astype(np.float32)
    upper_mid, lower_mid = poly[5], poly[15]
    width = float(np.linalg.norm(poly[0] - poly[10]))
    gap = float(lower_mid[1] - upper_mid[1])
    opening = gap / max(width, 1.0) - rest_gap
    if width < 4 or opening < 0.04:
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
    feather = max(1, int(round(0.06 * gap)) | 1)
    mask = cv2.GaussianBlur(mask, (2 * feather + 1, 2 * feather + 1), 0)
    # Strength grows with the opening so that a barely parted mouth does not flash dark.
    strength = min(1.0, (opening - 0.04) / 0.12)
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
    across = np.clip(1.0 - np.abs(xx - local[[0, 10], 0].mean()) / (0.5 * width), 0, 1)
    # Dark cavity, a tongue towards the lower lip, a band of upper teeth and, when wide open, lower teeth.
    cavity = (lip_bgr * 0.18)[None, None, :] * (1.0 - 0.4 * depth[..., None])
    tongue_w = _smoothstep(0.55, 0.95, depth)[..., None] * 0.8
    cavity = cavity * (1 - tongue_w) + (lip_bgr * 0.55)[None, None, :] * tongue_w
    # Teeth are about a fifth of the mouth's width tall: a grin shows mostly teeth, a wide-open jaw mostly cavity.
    upper_band = min(0.4 * gap, 0.14 * width)
    upper_teeth = 1.0 - _smoothstep(upper_band * 0.75, upper_band, yy - upper_y)
    # Lower teeth only once the jaw is well open: in a narrow opening they would read as closed lips.
    lower_band = min(0.12 * gap, 0.08 * width) if gap > 0.3 * width else 0.0
    lower_teeth = _smoothstep(-lower_band, -0.7 * lower_band, yy - lower_y) if lower_band else 0.0
    teeth = np.clip((upper_teeth + 0.85 * lower_teeth) * across**0.35, 0, 1)[..., None]
    shade = 1.0 - 0.25 * np.clip((yy - upper_y) / max(upper_band, 1.0), 0, 1)[..., None]
    teeth_bgr = np.array([208, 218, 228], np.float32) * shade
    interior = cavity * (1 - teeth) + teeth_bgr * teeth
    blended = roi.astype(np.float32) * (1 - mask[..., None]) + interior * mask[..., None]
    np.copyto(roi, np.clip(blended, 0, 255).astype(np.uint8))
