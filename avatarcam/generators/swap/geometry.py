"""Face-swap geometry: the avatar's face-mesh triangles mapped onto the user's, as one dense backward map.

Each of MediaPipe's 852 face-mesh triangles (landmarks.tesselation_triangles) has its three corners in the avatar
canvas and in the driver frame; the affine map of each user triangle onto its avatar triangle is solved for all
triangles at once. The user's triangles are rasterised, far ones first (landmark z), into a triangle-index image
at low resolution over the face's box, and every pixel of it gets its triangle's affine map: a backward map (frame
pixel -> avatar canvas pixel) that is exact at the samples and piecewise linear between them, so one bilinear
resize to the box's full size and one cv2.remap draw the avatar's face on the user's. Triangles that face away
from the camera or collapse (a profile) are left out, so the face fades back to the user's there instead of
tearing. The mesh has holes at the eyes and the inner lips; the user's own eyes and mouth show through them, or
(eyes_mouth="avatar") the avatar's, drawn by fan and strip triangles that fill them.

Before that the user's landmarks take on the avatar's face shape (identity_shape): both faces are turned to face
the camera (the user's by MediaPipe's facial transformation matrix, head_rotation; the avatar's by its turn as seen
through the user's, avatar_turn), their difference is taken there and turned back with the user's head.
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


FEATURE_RINGS = (np.array(lm.RIGHT_EYE_RING), np.array(lm.LEFT_EYE_RING), np.array(lm.LIPS_OUTER))
"""The right eye, the left eye and the mouth: near its openings the shape transfer moves each eye as a whole
(position, size, tilt: a similarity fitted on its contour), so the user's blinks stay the user's. The mouth stays
where the user's is: moved and scaled to the avatar's, the teeth and lip gap read half as open to dlib (d14)."""
MOVED_FEATURES = 2
"""The first MOVED_FEATURES of FEATURE_RINGS are moved as a whole; the others stay in place."""
EYE_GAP_PAIRS = (((160, 144), (159, 145), (158, 153)), ((385, 380), (386, 374), (387, 373)))
"""Upper and lower lid landmarks facing each other across the right and the left eye's opening."""
EYE_CORNERS = ((33, 133), (362, 263))
"""Outer and inner corner of the right and the left eye."""


def eye_openness(points: np.ndarray) -> np.ndarray:
    """(2,) float32 opening of the right and the left eye from (478, >=2) landmarks: mean lid gap over the eye's
    width (about 0.3 open, under 0.1 closed, as the eye aspect ratio of Soukupova and Cech 2016)."""
    pairs = np.array(EYE_GAP_PAIRS)  # (2 eyes, 3 pairs, 2)
    corners = np.array(EYE_CORNERS)  # (2 eyes, 2)
    gaps = np.linalg.norm(points[pairs[..., 0], :2] - points[pairs[..., 1], :2], axis=-1).mean(1)
    widths = np.linalg.norm(points[corners[:, 0], :2] - points[corners[:, 1], :2], axis=-1)
    return (gaps / np.maximum(widths, 1e-6)).astype(np.float32)


def _lid_bands(mesh: np.ndarray) -> np.ndarray:
    """(T,) uint8 1 for the mesh triangles within three rings of triangles around the right eye's contour (its
    lids, lashes, lid fold and the skin up to the brow), 2 for the left eye's, else 0."""
    band = np.zeros(len(mesh), np.uint8)
    for value, ring in ((1, lm.RIGHT_EYE_RING), (2, lm.LEFT_EYE_RING)):
        first = np.isin(mesh, ring).any(1)
        second = np.isin(mesh, mesh[first]).any(1)
        band[np.isin(mesh, mesh[second]).any(1)] = value
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
    """(mesh_count,) uint8 1 / 2 on the right / left eye's lid triangles (three rings of triangles around the eye's
    contour), 0 elsewhere: where the user's own lids show as the eye closes."""
    judged: np.ndarray
    """(mesh_count,) bool mesh triangles whose look is steady enough to judge occlusion by (none of their corners on
    an eye or inner-lip contour or an iris, which move with every blink and word, nor on the face's outline)."""
    feature: np.ndarray
    """(478,) int64 the nearest of FEATURE_RINGS to each landmark (0 right eye, 1 left eye, 2 mouth)."""
    shape_weight: np.ndarray
    """(478,) float32 how much of the avatar's face shape each user landmark takes on (0 on the eye and inner-lip
    contours whose openings show the user's own eyes and mouth, rising to 1 a quarter eye distance away)."""


def prepare_face(points: np.ndarray, *, avatar_eyes_mouth: bool) -> SwapFace:
    """The avatar's triangles from its (478, 3) canvas-pixel landmarks."""
    mesh = lm.tesselation_triangles()
    # The eye and mouth fills are drawn in both modes: with the user's eyes and mouth the mask leaves them out, but
    # they carry the user's own eyes and mouth to where the shape transfer moved the openings.
    triangles = np.concatenate([mesh, _hole_fill_triangles()])
    corners = np.ascontiguousarray(points[triangles][..., :2].astype(np.float32))
    xy = points[:, :2].astype(np.float32)
    if avatar_eyes_mouth:
        weight = np.ones(len(xy), np.float32)
    else:
        eye_distance = float(np.linalg.norm(xy[lm.RIGHT_IRIS[0]] - xy[lm.LEFT_IRIS[0]])) or 1.0
        nearest = np.sqrt(((xy[:, None, :] - xy[None, OPENINGS, :]) ** 2).sum(-1)).min(1) / eye_distance
        t = np.clip((nearest - 0.05) / 0.2, 0.0, 1.0)
        weight = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    nearest_feature = np.stack([np.sqrt(((xy[:, None, :] - xy[None, ring, :]) ** 2).sum(-1)).min(1)
                                for ring in FEATURE_RINGS], 1).argmin(1)
    moving = np.zeros(len(xy), bool)
    moving[OPENINGS] = True
    moving[list(lm.FACE_OVAL)] = True  # the outline's triangles take in hair and background as the head moves
    return SwapFace(triangles=triangles, mesh_count=len(mesh), avatar_corners=corners,
                    lid_band=_lid_bands(mesh), judged=~moving[mesh].any(1),
                    avatar_area=signed_areas(corners),
                    avatar_rigid=np.ascontiguousarray(points[list(lm.RIGID_POINTS), :2].astype(np.float32)),
                    avatar_points=np.ascontiguousarray(points[:, :3].astype(np.float32)), feature=nearest_feature,
                    shape_weight=weight)


_IMAGE_AXES = np.diag([1.0, -1.0, -1.0])
"""MediaPipe's camera frame (y up, z towards the viewer) to the landmarks' image frame (y down, z away)."""


def head_rotation(head_matrix: np.ndarray) -> np.ndarray:
    """(3, 3) float64 rotation of the head from facing the camera, in the landmarks' image axes (x right, y down, z
    away from the camera), from MediaPipe's (4, 4) facial transformation matrix: points_px - centre ~ frontal
    shape @ rotation.T."""
    rotation = _IMAGE_AXES @ head_matrix[:3, :3].astype(np.float64) @ _IMAGE_AXES
    u, _, vt = np.linalg.svd(rotation)
    return u @ vt


def avatar_turn(face: SwapFace, user_points: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(3, 3) float64 the avatar's head rotation from facing the camera (avatar points - centre ~ frontal shape @
    result, row vectors), seen through the user's: the 3D similarity of the user's rigid landmarks onto the
    avatar's after the user's own `rotation` (head_rotation). The avatar's picture has no facial transformation
    matrix of its own here; averaged over frames it is steady."""
    rigid = list(lm.RIGID_POINTS)
    to_avatar = similarity(user_points[rigid, :3].astype(np.float32), face.avatar_points[rigid]).astype(np.float64)
    return rotation.T @ _orthonormal(to_avatar[:3])


def frontal_avatar(face: SwapFace, turn: np.ndarray) -> np.ndarray:
    """(478, 2) float32 the avatar's landmarks turned to face the camera (`turn` undone, avatar_turn), about their
    centre, in canvas pixels."""
    centred = face.avatar_points - face.avatar_points.mean(0)
    return (centred @ _orthonormal(turn).T)[:, :2].astype(np.float32)


def _orthonormal(matrix: np.ndarray) -> np.ndarray:
    """The rotation nearest to a (3, 3) matrix (a scaled rotation, or an average of rotations)."""
    u, _, vt = np.linalg.svd(matrix)
    return u @ vt


def frontal_shape(user_points: np.ndarray, rotation: np.ndarray, avatar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The user's face turned to face the camera ((478, 3) landmarks about their centre, times the rotation) and
    mapped onto the `avatar` ((478, 2) frontal_avatar) by the 2D similarity on the rigid landmarks: (478, 2) float32
    points there, and the (2, 2) float64 linear part of that similarity."""
    frontal = (user_points[:, :3] - user_points[:, :3].mean(0)) @ rotation
    rigid = list(lm.RIGID_POINTS)
    to_avatar = similarity(frontal[rigid, :2].astype(np.float32), avatar[rigid])
    return (frontal[:, :2] @ to_avatar[:2] + to_avatar[2]).astype(np.float32), to_avatar[:2].astype(np.float64)


def identity_shape(face: SwapFace, user_points: np.ndarray, rotation: np.ndarray, avatar: np.ndarray,
                   shape: tuple[np.ndarray, np.ndarray], user_mean: np.ndarray, amount: float) -> np.ndarray:
    """(478, 3) float32 user landmarks moved `amount` (0..1) of the way from the user's own face shape to the
    avatar's, keeping the user's pose and expression.

    Each point moves by amount x (shape_weight x (avatar point - the user's mean point) + (1 - shape_weight) x the
    move of its eye as a whole), both faces turned to the camera (`avatar` is frontal_avatar, `shape`
    frontal_shape of this frame, `user_mean` its (478, 2) average over recent frames). An eye moves by the
    similarity that takes the user's mean eye contour onto the avatar's, applied to this frame's points: the
    avatar's eye spacing, size and tilt, with the user's lid gap scaled along. The mouth stays the user's. The
    difference is carried back by the inverse similarity and turned with the head (`rotation`, head_rotation). A
    difference that stayed flat in the image would pull a turned head's outline and nose back towards the avatar's
    frontal ones, and dlib's pose estimate with them; a mean of shapes not turned to the camera would take a held
    turn in as the user's own shape.
    """
    current, linear = shape
    det = float(np.linalg.det(linear))
    if abs(det) < 1e-12:
        return user_points
    fits = np.stack([similarity(user_mean[ring], avatar[ring]) if k < MOVED_FEATURES
                     else np.eye(3, 2, dtype=np.float32) for k, ring in enumerate(FEATURE_RINGS)])
    m = fits[face.feature]  # (478, 3, 2)
    feature_move = current[:, :1] * m[:, 0] + current[:, 1:2] * m[:, 1] + m[:, 2] - current
    weight = face.shape_weight[:, None]
    difference = weight * (avatar - user_mean) + (1.0 - weight) * feature_move
    flat = difference @ np.linalg.inv(linear)
    offset = np.concatenate([flat, np.zeros((len(flat), 1))], 1) @ rotation.T
    moved = user_points.copy()
    moved[:, :3] += amount * offset.astype(np.float32)
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
    user_x: np.ndarray | None
    """(h, w) float32 frame x of the user's own face for every low-resolution box pixel (the shape transfer
    undone), or None when not asked for: where the user's eyes, lids and mouth show, they are taken from here."""
    user_y: np.ndarray | None
    """(h, w) float32 frame y of the same."""
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


def build_map(face: SwapFace, user_points: np.ndarray, box: FaceBox, *, with_holes: bool,
              source_points: np.ndarray | None = None) -> FaceMap:
    """The backward map of one user face ((478, 3) frame-pixel landmarks) over `box` at its low resolution.

    Pixels that no front-facing triangle covers get the face's overall similarity map, so the map is smooth
    everywhere and the mask alone decides what is drawn. With `source_points` (the user's landmarks before the
    shape transfer moved them to `user_points`), also the map back to the user's own face (FaceMap.user_x/y).
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
    user_x = user_y = None
    if source_points is not None:
        back = triangle_affines(user, source_points[face.triangles, :2].astype(np.float32))
        # Entry 0 (no triangle): the low-resolution pixel's own place in the frame.
        none = np.array([[[1.0 / sx, 0.0], [0.0, 1.0 / sy],
                          [box.x0 + 0.5 / sx - 0.5, box.y0 + 0.5 / sy - 0.5]]], np.float32)
        u = np.concatenate([none, back], 0)[index]
        user_x = (u[..., 0, 0] * grid_x + u[..., 1, 0] * grid_y + u[..., 2, 0]).astype(np.float32)
        user_y = (u[..., 0, 1] * grid_x + u[..., 1, 1] * grid_y + u[..., 2, 1]).astype(np.float32)
    holes = np.zeros((h, w), np.uint8)
    if with_holes:
        cv2.fillPoly(holes, [np.round(low[ring] * 16).astype(np.int32) for ring in HOLE_POLYGONS], 1,
                     lineType=cv2.LINE_8, shift=4)
    return FaceMap(map_x=map_x.astype(np.float32), map_y=map_y.astype(np.float32), covered=covered, holes=holes,
                   user_x=user_x, user_y=user_y, index=index, lids=lid_table(face)[index], front=front)

