"""The face-swap generator: the camera frame itself, with the avatar's face drawn on every face in it.

Per face: the user's landmarks take on the avatar's face shape (geometry.identity_shape), geometry.build_map (the
avatar's mesh triangles onto the user's, at low resolution over the face box), colour statistics at that low
resolution (colour.ColourMatch, smoothed over time), the occlusion cue (occlusion.OcclusionModel), then at full
resolution only inside the face box: one resize of the map and the mask, one cv2.remap, the Lab transform and a
feathered blend (cv2.blendLinear) into the frame; the user's own eyes, closing lids and mouth are carried to where
the shape moved them (one more remap, over their rectangle only). Where the mesh is unreliable the face fades back
to the user's: triangles seen edge-on or from behind are left out of the mask (geometry), and the whole face fades
out as the head turns towards a profile (FADE_START_DEG to FADE_END_DEG of head turn) and fades in when a face
appears. A face lost for a moment (HOLD_S) holds the last swapped picture and keeps its place when found again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from avatarcam.avatars import Avatar
from avatarcam.generators.base import GeneratorSections
from avatarcam.generators.swap.colour import ColourMatch, apply_lab_transform, lab_stats
from avatarcam.generators.swap.geometry import (
    FaceBox,
    FaceMap,
    SwapFace,
    avatar_turn,
    build_map,
    eye_openness,
    face_box,
    frontal_avatar,
    frontal_shape,
    head_rotation,
    head_turn_deg,
    identity_shape,
    prepare_face,
)
from avatarcam.generators.swap.occlusion import OcclusionModel, triangle_features
from avatarcam.matching import shape_distance
from avatarcam.motion import MotionSettings
from avatarcam.types import FaceObservation, Observed

FADE_START_DEG = 38.0
"""Head turn (geometry.head_turn_deg) where the swapped face starts to fade back to the user's."""
FADE_END_DEG = 58.0
"""Head turn where only the user's face is left (MediaPipe's mesh of the hidden cheek is a guess by then)."""
FEATHER = 0.05
"""Width of the feathered face edge as a share of the face box (blur sigma; the mask is eroded as much first, so
the seam lies inside the face and the blend never reaches past the mesh)."""
APPEAR_S = 0.12
"""Time constant of the fade-in of a face that appears."""
MATCH_WIDTHS = 0.75
"""A face is the same as a remembered one when its centre is within this many face widths of it (a skipped frame
or two of a quick turn moves it further than half a width; two faces side by side are about one width apart)."""
HOLD_S = 0.5
"""A face lost for up to this long (seconds) is held: the output repeats the last swapped picture instead of showing
the user's bare face, and a face found again within it keeps its place (no fade-in, colour and occlusion models
kept). The landmark model loses a moving face for a frame now and then, more often when a busy machine skips camera
frames (every third frame of the sample clip: the face lost at a quick turn, then faded in over 4 frames that
showed the user's own face under the "virtual avatar" badge)."""
SHAPE_TIME_S = 1.5
"""Time constant of the user's mean face shape (a slow average: expressions pass through, identity stays; the
shape is measured turned to the camera, so a held head turn does not leak into it)."""
AVATAR_TURN_TIME_S = 10.0
"""Time constant of the avatar's head rotation as seen through the user's (a property of the picture: a running
mean over the first frames, then this slow average)."""
COVER_GROW = 0.03
"""The covered region is grown by this share of the face box (past the unjudged lid and lip triangles and the
cover's own edge) and feathered as much."""
LID_CLOSING = (0.8, 0.45)
"""Eye opening (geometry.eye_openness) as a share of the user's usual opening where the user's own lids start to
show instead of the avatar's, and where only the user's show: the avatar's lashes and lid lines lie partly outside
its eye contour, so on the user's closing contour they would still draw an open eye."""
EYE_TIME_S = 2.0
"""Time constant of the user's usual eye opening (blinks are short and barely move it)."""
SPECK = 0.025
"""Covered regions narrower than about twice this share of the face box (a triangle or two) are noise, not a cover."""


def _smoothstep(edge0: float, edge1: float, x: float) -> float:
    t = min(max((x - edge0) / (edge1 - edge0), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class SwapSettings:
    """Options of the face swap (config: generator.swap_*)."""

    max_faces: int = 4
    avatar_eyes_mouth: bool = False
    """True: the avatar's eyes and mouth interior are drawn too; False: the user's show through."""
    colour_time_s: float = 0.3
    """Time constant of the colour statistics' moving average (0: per-frame statistics)."""
    shape: float = 0.7
    """How far the user's face shape (outline, nose, brows, cheeks) is moved to the avatar's, 0..1: a face is
    recognised by its shape as much as by its skin. The eye and inner-lip contours stay the user's while their
    openings show the user's own eyes and mouth."""
    occlusion: bool = True
    """Fade the swap out where something covers the user's face (occlusion.OcclusionModel)."""


@dataclass(frozen=True)
class PreparedSwap:
    """One avatar, ready to be swapped in."""

    image_bgr: np.ndarray
    """(S, S, 3) uint8 BGR avatar canvas."""
    points: np.ndarray
    """(478, 3) float32 avatar landmarks in canvas pixels."""
    face: SwapFace


@dataclass
class _Slot:
    """What is remembered about one face across frames (matched by position)."""

    centre: np.ndarray
    colour: ColourMatch
    presence: float = 0.0
    last_time_s: float | None = None
    mean_shape: np.ndarray | None = None
    """(478, 2) float32 the user's face shape over recent frames, turned to the camera, on the avatar's (turned to the
    camera too: geometry.frontal_avatar)."""
    avatar_turn: np.ndarray | None = None
    """(3, 3) float64 the avatar's head rotation as seen over recent frames (geometry.avatar_turn)."""
    shape_frames: int = 0
    occlusion: OcclusionModel = field(default_factory=OcclusionModel)
    eye_open: np.ndarray | None = None
    """(2,) float32 the user's usual opening of the right and the left eye (geometry.eye_openness)."""


@dataclass
class _Controls:
    """Motion settings holder: the swap follows the user's face exactly, so intensity changes nothing here."""

    settings: MotionSettings = field(default_factory=MotionSettings)

    def update_settings(self, settings: MotionSettings) -> None:
        self.settings = settings


class SwapReenactor:
    """Face swap (a Reenactor[PreparedSwap, np.ndarray] whose family draws on the driver frame)."""

    name = "swap"
    needs_landmarks = True
    runtime = "numpy/cv2 (CPU)"

    def __init__(self, *, canvas_size: int = 512, settings: SwapSettings | None = None,
                 motion: MotionSettings | None = None):
        self.canvas_size = canvas_size
        self.settings = settings or SwapSettings()
        self.motion = _Controls(motion or MotionSettings())
        self._slots: list[_Slot] = []
        self._started = False
        self._held: np.ndarray | None = None
        """The last output with a face drawn, repeated while a face is lost for up to HOLD_S."""
        self._held_time_s = -math.inf
        self.last_weights: list[float] = []
        """The blend weight of each face drawn in the last render (pose fade x fade-in), for tests and logs."""
        self.last_colour: list[np.ndarray | None] = []
        """The (3, 4) Lab transform applied to each face in the last render."""
        self.last_covered: list[np.ndarray | None] = []
        """The (h, w) float32 0..1 covered share of each face's low-resolution box in the last render."""

    def prepare(self, avatar: Avatar) -> PreparedSwap:
        """The avatar's triangles (its landmarks were found once, by avatars.load_avatar)."""
        return PreparedSwap(image_bgr=np.ascontiguousarray(avatar.canvas_bgr), points=avatar.points,
                            face=prepare_face(avatar.points, avatar_eyes_mouth=self.settings.avatar_eyes_mouth))

    def neutral_from(self, window: list[Observed]) -> np.ndarray:
        """(478, 3) float32 mean landmarks of the window's first faces (zero rows when none): kept so the pipeline
        counts the swap as calibrated; the swap itself follows the user's face as it is and needs no neutral."""
        faces = [o.face.points_px for o in window if o.face is not None]
        return np.mean(faces, 0).astype(np.float32) if faces else np.zeros((0, 3), np.float32)

    def render(self, prepared: PreparedSwap, observed: Observed | None, neutral: np.ndarray | None, time_s: float,
               out: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """The driver frame with the avatar's face on each of its faces, into `out` ((H, W, 3) uint8 BGR, the
        frame's shape); without an observation, the avatar at rest filling `out`."""
        start = time.perf_counter()
        if observed is None:
            _cover(prepared.image_bgr, out)
            return out
        frame = observed.frame.image_bgr
        if out.shape != frame.shape:
            raise ValueError(f"swap output has shape {out.shape}, expected the driver frame's {frame.shape}: "
                             "allocate it with generators.output_shape(reenactor, frame.shape)")
        faces = observed.faces[: self.settings.max_faces]
        if not faces and self._held is not None and self._held.shape == out.shape \
                and 0.0 <= time_s - self._held_time_s <= HOLD_S:
            np.copyto(out, self._held)  # a face lost for a moment: never the user's bare face in between
            self.last_weights, self.last_colour, self.last_covered = [], [], []
            return out
        np.copyto(out, frame)
        slots = self._match_slots(faces, time_s)
        self.last_weights, self.last_colour, self.last_covered = [], [], []
        stage = {"map": 0.0, "colour": 0.0, "blend": 0.0}
        for face, slot in zip(faces, slots):
            self._draw_face(prepared, face, slot, frame, out, time_s, stage)
        if any(weight > 1e-3 for weight in self.last_weights):
            if self._held is None or self._held.shape != out.shape:
                self._held = np.empty_like(out)
            np.copyto(self._held, out)
            self._held_time_s = time_s
        else:
            self._held_time_s = -math.inf  # a profile or a faded face: what is shown now is the user's own
        if timings is not None:
            timings["motion"] = 0.0
            timings.update({f"swap_{k}": v for k, v in stage.items()})
            timings["generate"] = (time.perf_counter() - start) * 1000
        return out

    def _match_slots(self, faces: Sequence[FaceObservation], time_s: float) -> list[_Slot]:
        """Each face's slot: the nearest remembered face within MATCH_WIDTHS face widths (one face and one remembered
        face: that one, wherever it is), else a new one; faces not seen now are remembered for HOLD_S."""
        free = list(self._slots)
        alone = len(faces) == 1 and len(free) == 1
        chosen = []
        for face in faces:
            centre = face.points_px[:, :2].mean(0)
            width = float(np.ptp(face.points_px[:, 0]))
            best = min(free, key=lambda s: float(np.linalg.norm(s.centre - centre)), default=None)
            if best is not None and (alone or np.linalg.norm(best.centre - centre) < MATCH_WIDTHS * width):
                free = [slot for slot in free if slot is not best]
                best.centre = centre
            else:
                # The first face after a start or reset shows at once; one that appears later fades in.
                best = _Slot(centre=centre, colour=ColourMatch(time_s=self.settings.colour_time_s),
                             presence=0.0 if self._started else 1.0)
            chosen.append(best)
        recent = [slot for slot in free if slot.last_time_s is not None and 0.0 <= time_s - slot.last_time_s <= HOLD_S]
        self._slots = chosen + recent
        self._started = self._started or bool(faces)
        return chosen

    def _draw_face(self, prepared: PreparedSwap, face: FaceObservation, slot: _Slot, frame: np.ndarray,
                   out: np.ndarray, time_s: float, stage: dict[str, float]) -> None:
        t0 = time.perf_counter()
        height, width = frame.shape[:2]
        points = face.points_px
        dt = 0.0 if slot.last_time_s is None else min(max(time_s - slot.last_time_s, 0.0), 1.0)
        slot.last_time_s = time_s
        slot.presence += (1.0 - slot.presence) * (1.0 - math.exp(-dt / APPEAR_S))
        frontal = _smoothstep(FADE_END_DEG, FADE_START_DEG, head_turn_deg(points))
        weight = slot.presence * frontal
        self.last_weights.append(weight)
        if self.settings.shape > 0 and weight > 1e-3:
            points = self._reshaped(prepared.face, face, slot, dt, frontal)
        box = face_box(points, (width, height))  # around the reshaped face, which may reach past the user's
        if box is None or weight <= 1e-3:
            self.last_colour.append(None)
            self.last_covered.append(None)
            return
        own_eyes_mouth = not self.settings.avatar_eyes_mouth
        moved = points is not face.points_px and own_eyes_mouth
        fmap = build_map(prepared.face, points, box, with_holes=own_eyes_mouth,
                         source_points=face.points_px if moved else None)
        t1 = time.perf_counter()
        low_w, low_h = box.low_size
        inside = fmap.covered & (1 - fmap.holes)
        radius = max(1, round(FEATHER * max(low_w, low_h)))
        kernel = _disc(radius)
        core = cv2.erode(inside, kernel)
        user_box = frame[box.y0:box.y1, box.x0:box.x1]
        avatar_low = cv2.remap(prepared.image_bgr, fmap.map_x, fmap.map_y, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        user_low = cv2.resize(user_box, (low_w, low_h), interpolation=cv2.INTER_AREA)
        user_lab = cv2.cvtColor(user_low, cv2.COLOR_BGR2LAB)
        covered = self._covered(prepared.face, face.points_px, box, fmap, user_lab, slot, time_s)
        self.last_covered.append(covered)
        if covered is not None:
            core &= (covered < 0.5).astype(np.uint8)
        slot.colour.update(lab_stats(avatar_low, core), lab_stats(user_low, core, lab=user_lab), time_s)
        matrix = slot.colour.matrix()
        self.last_colour.append(matrix)
        t2 = time.perf_counter()
        outer = cv2.GaussianBlur(cv2.erode(fmap.covered, kernel).astype(np.float32), (0, 0), radius)
        holes = cv2.GaussianBlur(fmap.holes.astype(np.float32), (0, 0), 0.6)
        if own_eyes_mouth:
            holes = np.maximum(holes, self._closing_lids(fmap, face.points_px, slot, dt))
        mask_low = outer * (1.0 - holes) * np.float32(weight)
        if covered is not None:
            mask_low *= 1.0 - covered
        size = box.size
        map_x = cv2.resize(fmap.map_x, size, interpolation=cv2.INTER_LINEAR)
        map_y = cv2.resize(fmap.map_y, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask_low, size, interpolation=cv2.INTER_LINEAR)
        warped = cv2.remap(prepared.image_bgr, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if matrix is not None:
            warped = apply_lab_transform(warped, matrix)
        roi = out[box.y0:box.y1, box.x0:box.x1]
        own = user_box if fmap.user_x is None else _own_face(frame, fmap, holes, covered, user_box)
        np.copyto(roi, cv2.blendLinear(warped, own, mask, 1.0 - mask))
        t3 = time.perf_counter()
        stage["map"] += (t1 - t0) * 1000
        stage["colour"] += (t2 - t1) * 1000
        stage["blend"] += (t3 - t2) * 1000

    def _closing_lids(self, fmap: FaceMap, user_points: np.ndarray, slot: _Slot, dt: float) -> np.ndarray:
        """(h, w) float32 0..1 where the user's own lids show, feathered: on each eye's lid triangles, as much as
        that eye is closing against the user's usual opening (LID_CLOSING)."""
        opening = eye_openness(user_points)
        if slot.eye_open is None:
            slot.eye_open = opening.copy()
        else:
            slot.eye_open += (1.0 - math.exp(-dt / EYE_TIME_S)) * (opening - slot.eye_open)
        relative = opening / np.maximum(slot.eye_open, 1e-6)
        closing = [_smoothstep(LID_CLOSING[0], LID_CLOSING[1], float(r)) for r in relative]
        table = np.array([0.0, *closing], np.float32)
        return cv2.GaussianBlur(table[fmap.lids], (0, 0), 1.5)

    def _covered(self, face: SwapFace, user_points: np.ndarray, box: FaceBox, fmap: FaceMap, user_lab: np.ndarray,
                 slot: _Slot, time_s: float) -> np.ndarray | None:
        """(h, w) float32 0..1 how surely each low-resolution box pixel is covered (grown and feathered); None with
        the option off or when nothing is. The user's own (not reshaped) triangles are sampled, so each keeps its
        place on the face."""
        if not self.settings.occlusion:
            return None
        low_w, low_h = box.low_size
        scale = np.array([low_w / box.size[0], low_h / box.size[1]], np.float32)
        low = (user_points[:, :2] - np.array([box.x0, box.y0], np.float32) + 0.5) * scale - 0.5
        mesh = face.triangles[: face.mesh_count]
        centroids = low[mesh].mean(1)
        inside = (centroids >= 0).all(1) & (centroids[:, 0] <= low_w - 1) & (centroids[:, 1] <= low_h - 1)
        judged = face.judged & fmap.front[: face.mesh_count] & inside
        per_triangle = slot.occlusion.update(triangle_features(user_lab, centroids), judged, time_s)
        if not per_triangle.any():
            return None
        table = np.zeros(len(face.triangles) + 1, np.float32)
        table[1: face.mesh_count + 1] = per_triangle
        side = max(low_w, low_h)
        # Opening first: a lone triangle that reads as covered (a glint, a compression block) is noise; a hand
        # covers several neighbours. Then grown past the cover's edge and feathered.
        speck, grow = max(1, round(SPECK * side)), max(1, round(COVER_GROW * side))
        covered = cv2.erode(table[fmap.index], _disc(speck))
        return cv2.GaussianBlur(cv2.dilate(covered, _disc(speck + grow)), (0, 0), grow)

    def _reshaped(self, face: SwapFace, observed: FaceObservation, slot: _Slot, dt: float,
                  frontal: float) -> np.ndarray:
        """The user's landmarks with the avatar's face shape (SwapSettings.shape), less of it as the head turns
        (the shape difference is measured on faces turned to the camera; far from it that is a guess)."""
        points = observed.points_px
        rotation = head_rotation(observed.head_matrix)
        turn = avatar_turn(face, points, rotation)
        slot.shape_frames += 1
        steady = max(1.0 / slot.shape_frames, 1.0 - math.exp(-dt / AVATAR_TURN_TIME_S))
        slot.avatar_turn = turn if slot.avatar_turn is None else slot.avatar_turn + steady * (turn - slot.avatar_turn)
        alpha = 1.0 - math.exp(-dt / SHAPE_TIME_S)
        avatar = frontal_avatar(face, slot.avatar_turn)
        shape, linear = frontal_shape(points, rotation, avatar)
        slot.mean_shape = shape if slot.mean_shape is None else slot.mean_shape + alpha * (shape - slot.mean_shape)
        return identity_shape(face, points, rotation, avatar, (shape, linear), slot.mean_shape,
                              self.settings.shape * frontal)

    def reset(self) -> None:
        """Forget the faces' colour statistics, fades and the held picture (an avatar switch re-measures the avatar's
        colours)."""
        self._slots = []
        self._started = False
        self._held_time_s = -math.inf

    def best_match(self, prepared: Sequence[PreparedSwap], observed: Observed) -> int | None:
        """The avatar whose landmarks are closest in shape and pose to the user's face (matching.shape_distance)."""
        if observed.face is None or not prepared:
            return None
        distances = [shape_distance(observed.face.points_px, p.points) for p in prepared]
        return int(np.argmin(distances))

    def close(self) -> None:
        """Nothing to release (numpy/cv2 only); idempotent."""


def _own_face(frame: np.ndarray, fmap: FaceMap, holes_low: np.ndarray, covered_low: np.ndarray | None,
              user_box: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 the user's face box, with the user's own eyes, lids and mouth (where `holes_low` shows them,
    not where something covers them) carried to where the shape transfer moved the openings. Only the rectangle
    around them is resampled."""
    assert fmap.user_x is not None and fmap.user_y is not None
    own_low = holes_low if covered_low is None else holes_low * (1.0 - covered_low)
    ys, xs = np.nonzero(own_low > 1e-3)
    if len(xs) == 0:
        return user_box
    low_h, low_w = own_low.shape
    height, width = user_box.shape[:2]
    sx, sy = width / low_w, height / low_h
    # Low-resolution pixel k covers full-resolution pixels k * s .. (k + 1) * s; one pixel of margin for the
    # bilinear resize.
    lx0, ly0, lx1, ly1 = max(xs.min() - 1, 0), max(ys.min() - 1, 0), min(xs.max() + 2, low_w), min(ys.max() + 2, low_h)
    x0, y0, x1, y1 = int(lx0 * sx), int(ly0 * sy), min(int(np.ceil(lx1 * sx)), width), min(int(np.ceil(ly1 * sy)),
                                                                                            height)
    # The same samples as a bilinear resize of the whole maps to the box (pixel centres aligned), for the part only.
    to_low = np.array([[1.0 / sx, 0.0, (x0 + 0.5) / sx - 0.5], [0.0, 1.0 / sy, (y0 + 0.5) / sy - 0.5]])
    part = np.s_[y0:y1, x0:x1]

    def upscale(low: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(low, to_low, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    own, user_x, user_y = upscale(own_low), upscale(fmap.user_x), upscale(fmap.user_y)
    moved = cv2.remap(frame, user_x, user_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    result = user_box.copy()
    result[part] = cv2.blendLinear(moved, np.ascontiguousarray(user_box[part]), own, 1.0 - own)
    return result


def _disc(radius: int) -> np.ndarray:
    """An elliptic structuring element of the given radius in pixels."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _cover(image_bgr: np.ndarray, out: np.ndarray) -> None:
    """`image_bgr` scaled to cover `out` and centre-cropped (no observation yet: the avatar at rest)."""
    h, w = out.shape[:2]
    ih, iw = image_bgr.shape[:2]
    scale = max(w / iw, h / ih)
    cw, ch = min(iw, round(w / scale)), min(ih, round(h / scale))
    x0, y0 = (iw - cw) // 2, (ih - ch) // 2
    cv2.resize(image_bgr[y0:y0 + ch, x0:x0 + cw], (w, h), dst=out, interpolation=cv2.INTER_AREA)


def build_swap_reenactor(sections: GeneratorSections) -> SwapReenactor:
    """The swap reenactor for generator.{canvas_size, swap_max_faces, swap_eyes_mouth, swap_colour_time_s,
    swap_occlusion}."""
    g = sections.generator
    settings = SwapSettings(max_faces=g.swap_max_faces, avatar_eyes_mouth=g.swap_eyes_mouth == "avatar",
                            colour_time_s=g.swap_colour_time_s, occlusion=g.swap_occlusion)
    return SwapReenactor(canvas_size=g.canvas_size, settings=settings,
                         motion=MotionSettings.from_section(sections.motion))
