"""Face-swap geometry: the avatar's face-mesh triangles mapped onto the user's, as one dense backward map.

Each of MediaPipe's 852 face-mesh triangles (landmarks.tesselation_triangles) has its three corners in the avatar
canvas and in the driver frame; the affine map of each user triangle onto its avatar triangle is solved for all
triangles at once. The user's triangles are rasterised, far ones first (landmark z), into a triangle-index image
at low resolution over the face's box, and every pixel of it gets its triangle's affine map: a backward map (frame
pixel -> avatar canvas pixel) that is exact at the samples and piecewise linear between them, so one bilinear
resize to the box's full size and one cv2.remap draw the avatar's face on the user's. Triangles that face away
from the camera or collapse (a profile) are left out, so the face fades back to the user's there instead of
tearing. The mesh has holes at the eyes and the inner lips; the user's own eyes and mouth show through them, or
(eyes_mouth="avatar") fan and strip triangles fill them with the avatar's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarcam import landmarks as lm

MAP_SIDE = 128
"""Longest side of the low-resolution map over a face box, in pixels (about 6 map pixels per triangle)."""
MIN_AREA_RATIO = 0.08
"""A user triangle smaller than this share of its avatar triangle's area (relative to the whole face's ratio) is
seen edge-on: it is left out of the map and the mask."""
BOX_MARGIN = 0.04
"""Share of the face's size added around its landmarks' bounding box (room for the feathered edge)."""

_RIGHT_CHEEK, _LEFT_CHEEK = 234, 454


def _hole_fill_triangles() -> np.ndarray:
    """(K, 3) int32 triangles that close the mesh's eye holes (fans around the iris centres) and the mouth opening
    (a strip between the upper and the lower inner lip)."""
    tris = []
    for ring, centre in ((lm.RIGHT_EYE_RING, lm.RIGHT_IRIS[0]), (lm.LEFT_EYE_RING, lm.LEFT_IRIS[0])):
        for a, b in zip(ring, ring[1:] + ring[:1]):
            tris.append((centre, a, b))
    inner = lm.LIPS_INNER
    upper = list(inner[:11])  # corner 78 to corner 308 along the upper lip
    lower = [inner[0], *inner[:10:-1], inner[10]]  # 78 to 308 along the lower lip
    for k in range(len(upper) - 1):
        tris.append((upper[k], upper[k + 1], lower[k + 1]))
        tris.append((upper[k], lower[k + 1], lower[k]))
    return np.array(tris, np.int32)


HOLE_POLYGONS = (np.array(lm.RIGHT_EYE_RING), np.array(lm.LEFT_EYE_RING), np.array(lm.LIPS_INNER))
"""Landmark rings of the user's eyes and inner lips: where the user's own eyes and mouth show through."""
OPENINGS = np.concatenate([*HOLE_POLYGONS, np.array(lm.RIGHT_IRIS + lm.LEFT_IRIS)])
"""Landmarks of the eye and inner-lip contours and the irises (they move with every blink and word)."""


EYE_GAP_PAIRS = (((160, 144), (159, 145), (158, 153)), ((385, 380), (386, 374), (387, 373)))
"""Upper and lower lid landmarks facing each other across the right and the left eye's opening."""
EYE_CORNERS = ((33, 133), (362, 263))
"""Outer and inner corner of the right and the left eye."""


def eye_openness(points: np.ndarray) -> np.ndarray:
    """(2,) float32 opening of the right and the left eye from (478, >=2) landmarks: mean lid gap over the eye's
    width (about 0.3 open, under 0.1 closed, as the eye aspect ratio of Soukupova and Cech 2016)."""
    out = np.empty(2, np.float32)
    for k, (pairs, (a, b)) in enumerate(zip(EYE_GAP_PAIRS, EYE_CORNERS)):
        gap = np.mean([np.linalg.norm(points[u, :2] - points[v, :2]) for u, v in pairs])
        out[k] = gap / max(float(np.linalg.norm(points[a, :2] - points[b, :2])), 1e-6)
    return out


def _lid_bands(mesh: np.ndarray) -> np.ndarray:
    """(T,) uint8 1 for the mesh triangles within two rings of triangles around the right eye's contour (its lids,
    lashes and lid fold), 2 for the left eye's, else 0."""
    band = np.zeros(len(mesh), np.uint8)
    for value, ring in ((1, lm.RIGHT_EYE_RING), (2, lm.LEFT_EYE_RING)):
        first = np.isin(mesh, ring).any(1)
        band[np.isin(mesh, mesh[first]).any(1)] = value
    return band


@dataclass(frozen=True)
class SwapFace:
    """The avatar side of the swap, computed once per avatar."""

    triangles: np.ndarray
    """(T, 3) int32 landmark indices: the face mesh, plus the eye and mouth fill when those come from the avatar."""
    mesh_count: int
    """The first mesh_count triangles are MediaPipe's face mesh; the rest fill the eye and mouth holes."""
    avatar_corners: np.ndarray
    """(T, 3, 2) float32 triangle corners in avatar canvas pixels."""
    avatar_area: np.ndarray
    """(T,) float32 signed triangle areas in the avatar (square pixels; the sign gives the winding)."""
    avatar_rigid: np.ndarray
    """(R, 2) float32 avatar canvas positions of landmarks.RIGID_POINTS (the face's overall similarity map)."""
    avatar_points: np.ndarray
    """(478, 3) float32 avatar canvas positions (x, y and MediaPipe's depth z, pixels) of every landmark: the
    avatar's face shape in 3D."""
    lid_band: np.ndarray
    """(mesh_count,) uint8 1 / 2 on the right / left eye's lid triangles (two rings of triangles around the eye's
    contour), 0 elsewhere: where the user's own lids show as the eye closes."""
    judged: np.ndarray
    """(mesh_count,) bool mesh triangles whose look is steady enough to judge occlusion by (none of their corners on
    an eye or inner-lip contour or an iris, which move with every blink and word, nor on the face's outline)."""
    shape_weight: np.ndarray
    """(478,) float32 how much of the avatar's face shape each user landmark takes on (0 on the eye and inner-lip
    contours whose openings show the user's own eyes and mouth, rising to 1 a quarter eye distance away)."""


def prepare_face(points: np.ndarray, *, avatar_eyes_mouth: bool) -> SwapFace:
    """The avatar's triangles from its (478, 3) canvas-pixel landmarks."""
    mesh = lm.tesselation_triangles()
    triangles = np.concatenate([mesh, _hole_fill_triangles()]) if avatar_eyes_mouth else mesh
    corners = np.ascontiguousarray(points[triangles][..., :2].astype(np.float32))
    xy = points[:, :2].astype(np.float32)
    if avatar_eyes_mouth:
        weight = np.ones(len(xy), np.float32)
    else:
        eye_distance = float(np.linalg.norm(xy[lm.RIGHT_IRIS[0]] - xy[lm.LEFT_IRIS[0]])) or 1.0
        nearest = np.sqrt(((xy[:, None, :] - xy[None, OPENINGS, :]) ** 2).sum(-1)).min(1) / eye_distance
        t = np.clip((nearest - 0.05) / 0.2, 0.0, 1.0)
        weight = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    moving = np.zeros(len(xy), bool)
    moving[OPENINGS] = True
    moving[list(lm.FACE_OVAL)] = True  # the outline's triangles take in hair and background as the head moves
    return SwapFace(triangles=triangles, mesh_count=len(mesh), avatar_corners=corners,
                    lid_band=_lid_bands(mesh), judged=~moving[mesh].any(1),
                    avatar_area=signed_areas(corners),
                    avatar_rigid=np.ascontiguousarray(points[list(lm.RIGID_POINTS), :2].astype(np.float32)),
                    avatar_points=np.ascontiguousarray(points[:, :3].astype(np.float32)), shape_weight=weight)


def user_to_avatar(face: SwapFace, user_points: np.ndarray) -> np.ndarray:
    """(4, 3) float32 3D similarity from the user's landmarks (frame pixels and depth) to the avatar's, fitted on
    the rigid landmarks: [x, y, z, 1] @ M is the point in the avatar's head frame, whatever the head's pose."""
    rigid = list(lm.RIGID_POINTS)
    return similarity(user_points[rigid, :3].astype(np.float32), face.avatar_points[rigid])


@dataclass
class UserShape:
    """The user's face over recent frames (a slow average, so expressions pass through), as the shape transfer
    measures it: landmarks in the avatar's 3D frame, and the mean pose and size there."""

    points: np.ndarray
    """(478, 3) float32 the user's landmarks in the avatar's frame (3D similarity on the rigid landmarks)."""
    rotation: np.ndarray
    """(3, 3) float64 mean rotation of that similarity (row vectors: avatar = user @ rotation x scale + shift)."""
    scale: float
    """Mean scale of that similarity (avatar pixels per frame pixel)."""
    plane: np.ndarray
    """(2, 2) float64 mean linear part of the 2D similarity user -> avatar (the face's roll and size in the image)."""

    @classmethod
    def start(cls, face: SwapFace, user_points: np.ndarray) -> UserShape:
        """The average of one frame."""
        points, rotation, scale, plane = _pose(face, user_points)
        return cls(points=points, rotation=rotation, scale=scale, plane=plane)

    def update(self, face: SwapFace, user_points: np.ndarray, alpha: float) -> None:
        """Blend one frame in with weight alpha (0..1)."""
        points, rotation, scale, plane = _pose(face, user_points)
        self.points += np.float32(alpha) * (points - self.points)
        self.rotation += alpha * (rotation - self.rotation)
        self.scale += alpha * (scale - self.scale)
        self.plane += alpha * (plane - self.plane)


def _pose(face: SwapFace, user_points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """The user's landmarks in the avatar's 3D frame, the rotation and scale of that 3D similarity, and the linear
    part of the 2D similarity."""
    m3 = user_to_avatar(face, user_points).astype(np.float64)
    scale = float(np.cbrt(np.linalg.det(m3[:3])))
    rigid = list(lm.RIGID_POINTS)
    plane = similarity(user_points[rigid, :2].astype(np.float32), face.avatar_points[rigid, :2])[:2]
    points = (user_points[:, :3] @ m3[:3] + m3[3]).astype(np.float32)
    return points, m3[:3] / max(scale, 1e-9), scale, plane.astype(np.float64)


def _orthonormal(matrix: np.ndarray) -> np.ndarray:
    """The rotation nearest to a (3, 3) matrix (an average of rotations is not one)."""
    u, _, vt = np.linalg.svd(matrix)
    return u @ vt


def identity_shape(face: SwapFace, user_points: np.ndarray, mean: UserShape, amount: float) -> np.ndarray:
    """(478, 3) float32 user landmarks moved `amount` (0..1) of the way from the user's own face shape to the
    avatar's, keeping the user's pose and expression.

    Each point moves by shape_weight x amount x (avatar point - the user's mean point), both in the avatar's 3D
    frame. At the user's mean pose that difference is carried into the frame as a 2D similarity would (the
    avatar's face as it looks in its picture, whatever its own pose); as the head turns away from its mean pose the
    difference turns with it (the rotation since the mean pose, from the 3D similarity). A difference that stayed
    flat would pull a turned head's outline and nose back towards the avatar's frontal ones, and dlib's pose
    estimate with them; the mean in 3D, unlike a 2D mean, does not take a held turn in as the user's shape.
    """
    m3 = user_to_avatar(face, user_points).astype(np.float64)
    scale = float(np.cbrt(np.linalg.det(m3[:3])))
    plane_det = float(np.linalg.det(mean.plane))
    if scale < 1e-9 or plane_det <= 1e-12:
        return user_points
    turn = _orthonormal(mean.rotation) @ (m3[:3] / scale).T  # mean-pose frame -> this frame (row vectors)
    back = np.eye(3)
    back[:2, :2] = np.linalg.inv(mean.plane)
    back[2, 2] = 1.0 / np.sqrt(plane_det)
    offset = (face.avatar_points - mean.points) @ back @ turn * (mean.scale / scale)
    moved = user_points.copy()
    moved[:, :3] += (amount * face.shape_weight)[:, None] * offset.astype(np.float32)
    return moved


def signed_areas(corners: np.ndarray) -> np.ndarray:
    """(T,) float32 signed areas of (T, 3, 2) triangles (positive: counter-clockwise in image coordinates)."""
    e1 = corners[:, 1] - corners[:, 0]
    e2 = corners[:, 2] - corners[:, 0]
    return (0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])).astype(np.float32)


def triangle_affines(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(T, 3, 2) float32 M with dst = [x, y, 1] @ M for every point of each (T, 3, 2) src triangle (affine maps
    solved in closed form); a collapsed src triangle gets the translation of its centroid."""
    x0, y0 = src[:, 0, 0], src[:, 0, 1]
    e1 = src[:, 1] - src[:, 0]
    e2 = src[:, 2] - src[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-6
    inv_det = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    # Barycentric (u, v) of a point p: [u, v] = inverse([e1 e2]) (p - p0); dst = d0 + u (d1 - d0) + v (d2 - d0).
    d1 = dst[:, 1] - dst[:, 0]
    d2 = dst[:, 2] - dst[:, 0]
    iu = np.stack([e2[:, 1], -e2[:, 0]], 1) * inv_det[:, None]  # du/dx, du/dy
    iv = np.stack([-e1[:, 1], e1[:, 0]], 1) * inv_det[:, None]  # dv/dx, dv/dy
    linear = iu[:, :, None] * d1[:, None, :] + iv[:, :, None] * d2[:, None, :]  # (T, 2 [x, y], 2 [dst x, y])
    offset = dst[:, 0] - x0[:, None] * linear[:, 0] - y0[:, None] * linear[:, 1]
    centroid_shift = dst.mean(1) - src.mean(1)
    linear = np.where(ok[:, None, None], linear, np.eye(2, dtype=np.float32)[None])
    offset = np.where(ok[:, None], offset, centroid_shift)
    return np.concatenate([linear, offset[:, None, :]], 1).astype(np.float32)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(D + 1, D) float32 M, dst ~ [p, 1] @ M: the least-squares similarity (rotation, scale, shift) of (N, D)
    points, D = 2 or 3 (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.diag([1.0] * (src.shape[1] - 1) + [float(np.sign(np.linalg.det(u @ vt)))])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip) / max((s**2).sum() / len(src), 1e-9))
    a = scale * rot
    return np.concatenate([a.T, (mu_d - mu_s @ a.T)[None]], 0).astype(np.float32)


@dataclass(frozen=True)
class FaceBox:
    """Where one user face is drawn: a box of the frame and its low-resolution sampling."""

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float
    """Low-resolution map pixels per frame pixel (<= 1)."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the box in frame pixels."""
        return self.x1 - self.x0, self.y1 - self.y0

    @property
    def low_size(self) -> tuple[int, int]:
        """(width, height) of the low-resolution map."""
        w, h = self.size
        return max(2, round(w * self.scale)), max(2, round(h * self.scale))


def face_box(points: np.ndarray, frame_size: tuple[int, int], map_side: int = MAP_SIDE) -> FaceBox | None:
    """The box around (478, >=2) frame-pixel landmarks with a margin, clipped to (width, height); None if empty."""
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    margin = BOX_MARGIN * float((hi - lo).max())
    x0, y0 = np.floor(lo - margin).astype(int)
    x1, y1 = np.ceil(hi + margin).astype(int) + 1
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(x1), frame_size[0]), min(int(y1), frame_size[1])
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    return FaceBox(x0, y0, x1, y1, min(1.0, map_side / max(x1 - x0, y1 - y0)))


def head_turn_deg(points: np.ndarray) -> float:
    """How far the face is turned from the camera, in degrees, from the depth of the cheeks: atan of the z
    difference of landmarks 234 and 454 over their distance in the image (0 frontal, about 90 a profile)."""
    d = points[_LEFT_CHEEK] - points[_RIGHT_CHEEK]
    return float(np.degrees(np.arctan2(abs(float(d[2])), float(np.hypot(d[0], d[1])) + 1e-6)))


@dataclass
class FaceMap:
    """One user face's low-resolution backward map and masks (reused buffers; overwritten by the next face)."""

    map_x: np.ndarray
    """(h, w) float32 avatar canvas x for every low-resolution box pixel."""
    map_y: np.ndarray
    """(h, w) float32 avatar canvas y."""
    covered: np.ndarray
    """(h, w) uint8 1 where a front-facing triangle of the face mesh covers the pixel, else 0."""
    holes: np.ndarray
    """(h, w) uint8 1 inside the user's eyes and inner lips (the user shows through), else 0."""
    index: np.ndarray
    """(h, w) uint16 the number + 1 of the triangle drawn at each pixel, 0 where none is."""
    lids: np.ndarray
    """(h, w) uint8 1 / 2 on the right / left eye's lid triangles, else 0."""
    front: np.ndarray
    """(T,) bool triangles drawn (facing the camera and not seen edge-on)."""


def lid_table(face: SwapFace) -> np.ndarray:
    """(T + 1,) uint8 SwapFace.lid_band by triangle number + 1 (entry 0: no triangle), for a triangle-index image."""
    table = np.zeros(len(face.triangles) + 1, np.uint8)
    table[1: face.mesh_count + 1] = face.lid_band
    return table


def build_map(face: SwapFace, user_points: np.ndarray, box: FaceBox, *, with_holes: bool) -> FaceMap:
    """The backward map of one user face ((478, 3) frame-pixel landmarks) over `box` at its low resolution.

    Pixels that no front-facing triangle covers get the face's overall similarity map, so the map is smooth
    everywhere and the mask alone decides what is drawn.
    """
    w, h = box.low_size
    sx, sy = w / box.size[0], h / box.size[1]
    # User corners in low-resolution pixel coordinates (pixel centres at integers).
    low = np.empty((len(user_points), 2), np.float32)
    low[:, 0] = (user_points[:, 0] - box.x0 + 0.5) * sx - 0.5
    low[:, 1] = (user_points[:, 1] - box.y0 + 0.5) * sy - 0.5
    user = low[face.triangles]
    affines = triangle_affines(user, face.avatar_corners)
    area = signed_areas(user)
    mesh = slice(0, face.mesh_count)
    # Winding and size against the avatar's (whole-face ratio, so a small face is not "collapsed").
    ratio = area / np.where(np.abs(face.avatar_area) > 1e-6, face.avatar_area, 1e-6)
    overall = float(np.abs(area[mesh]).sum() / max(float(np.abs(face.avatar_area[mesh]).sum()), 1e-6))
    front = ratio > MIN_AREA_RATIO * overall
    front[face.mesh_count:] = True  # hole fills may be thin slivers (a closed mouth); they are inside the face
    depth = user_points[face.triangles, 2].mean(1)
    order = np.argsort(-depth)  # far first: the near side of a turned head paints over the far side
    index = np.zeros((h, w), np.uint16)  # triangle number + 1; 0 = none
    pts16 = np.round(user * 16).astype(np.int32)
    for t in order:
        if front[t]:
            cv2.fillConvexPoly(index, pts16[t], int(t) + 1, lineType=cv2.LINE_8, shift=4)
    grid_x = np.arange(w, dtype=np.float32)[None, :]
    grid_y = np.arange(h, dtype=np.float32)[:, None]
    overall_map = similarity(low[list(lm.RIGID_POINTS)], face.avatar_rigid)
    table = np.concatenate([overall_map[None], affines], 0)  # entry 0: pixels no triangle covers
    m = table[index]  # (h, w, 3, 2)
    map_x = m[..., 0, 0] * grid_x + m[..., 1, 0] * grid_y + m[..., 2, 0]
    map_y = m[..., 0, 1] * grid_x + m[..., 1, 1] * grid_y + m[..., 2, 1]
    covered = (index > 0).astype(np.uint8)
    holes = np.zeros((h, w), np.uint8)
    if with_holes:
        cv2.fillPoly(holes, [np.round(low[ring] * 16).astype(np.int32) for ring in HOLE_POLYGONS], 1,
                     lineType=cv2.LINE_8, shift=4)
    return FaceMap(map_x=map_x.astype(np.float32), map_y=map_y.astype(np.float32), covered=covered, holes=holes,
                   index=index, lids=lid_table(face)[index], front=front)

