"""Responsible use: the first-start notice (shown once, remembered) and the "virtual avatar" disclosure badge.

The notice's state is a small JSON file in the user's config folder (FACEMIMIC_CONFIG_DIR, else
$XDG_CONFIG_HOME/facemimic or ~/.config/facemimic; %APPDATA%\\facemimic on Windows). The badge is stamped on the
frames sent to the virtual camera and recordings, on by default in swap mode (output.badge), and toggled with the
`badge` hotkey.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

log = logging.getLogger(__name__)

NOTICE_VERSION = 1
NOTICE_FILE = "notice.json"
NOTICE_TEXT = """\
FaceMimic: a note before the first start
  FaceMimic puts an avatar on your webcam: it animates a portrait with your face's motion, or (swap mode) puts
  the avatar's face on your own live head, and sends the result to a virtual camera that calls and recordings see.
  Use only faces you have the right to use: your own, or a person's who has agreed, or an image whose licence
  allows it. Do not use it to impersonate or deceive anyone. In swap mode a small "virtual avatar" label is
  stamped on the camera picture; leave it on whenever people could take the picture for the real you.
  This note is shown once (see README, "Responsible use")."""
BADGE_TEXT = "virtual avatar"


def config_dir() -> Path:
    """The user's FaceMimic config folder (not created here)."""
    override = os.environ.get("FACEMIMIC_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "facemimic"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "facemimic"


def show_first_start_notice(*, folder: Path | None = None, stream: TextIO | None = None) -> bool:
    """Print NOTICE_TEXT to `stream` (stderr) unless it was shown before, and remember that it was; True when shown.

    A config folder that cannot be written means the notice is shown again next time (a warning says why); it never
    stops FaceMimic from starting.
    """
    path = (folder or config_dir()) / NOTICE_FILE
    try:
        seen = json.loads(path.read_text(encoding="utf-8")).get("notice_version", 0) >= NOTICE_VERSION
    except (OSError, ValueError, AttributeError):
        seen = False
    if seen:
        return False
    print(NOTICE_TEXT, file=stream or sys.stderr, flush=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"notice_version": NOTICE_VERSION, "shown_at": time.time()}), encoding="utf-8")
    except OSError as exc:
        log.warning("could not remember that the first-start notice was shown (%s): it will show again; set "
                    "FACEMIMIC_CONFIG_DIR to a writable folder", exc)
    return True


class DisclosureBadge:
    """Stamps a small "virtual avatar" label in the bottom-left corner of outgoing frames' picture while enabled."""

    @classmethod
    def for_output(cls, badge: str, draws_on_frame: bool) -> DisclosureBadge:
        """The badge as output.badge says: "on", "off", or "auto" (on when the generator draws on the camera
        picture, i.e. face swap)."""
        return cls(enabled=badge == "on" or (badge == "auto" and draws_on_frame))

    def __init__(self, *, enabled: bool, text: str = BADGE_TEXT) -> None:
        self.enabled = enabled
        self.text = text
        self._buffer: np.ndarray | None = None
        self._label: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None
        """(picture (width, height) it was sized for, label BGR, alpha)."""

    def toggle(self) -> bool:
        """Switch the badge on or off; returns the new state."""
        self.enabled = not self.enabled
        return self.enabled

    def _make_label(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(label BGR, alpha) sized for a (width, height) frame: text height about 3 % of the frame height."""
        scale = max(0.35, height / 720 * 0.7)
        thickness = max(1, round(scale * 2))
        (tw, th), base = cv2.getTextSize(self.text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        pad = max(3, th // 2)
        w, h = min(tw + 2 * pad, width), min(th + base + 2 * pad, height)
        label = np.zeros((h, w, 3), np.uint8)
        label[:] = (40, 40, 40)
        cv2.putText(label, self.text, (pad, h - pad - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
        alpha = np.full((h, w, 1), 0.75, np.float32)
        return label, alpha

    def region(self, width: int, height: int,
               within: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) pixel box the badge covers on a (width, height) frame: in the bottom-left corner of
        `within` (x0, y0, x1, y1: the part of the frame that shows the picture, e.g. FrameComposer.picture_box when
        the picture is letterboxed; default the whole frame), sized for that picture's height."""
        bx0, by0, bx1, by1 = within if within is not None else (0, 0, width, height)
        box_w, box_h = max(1, min(bx1, width) - max(bx0, 0)), max(1, min(by1, height) - max(by0, 0))
        bx0, by1 = max(bx0, 0), min(by1, height)
        if self._label is None or self._label[0] != (box_w, box_h):
            self._label = ((box_w, box_h), *self._make_label(box_w, box_h))
        h, w = self._label[1].shape[:2]
        margin = max(2, box_h // 60)
        y0, x0 = max(0, by1 - h - margin), bx0 + min(margin, box_w - w)
        return x0, y0, x0 + w, y0 + h

    def stamp(self, frame_bgr: np.ndarray, within: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 BGR frame with the badge inside `within` (see region; default the whole frame) as a
        copy in an internal buffer, overwritten next call; the frame itself while disabled."""
        if not self.enabled:
            return frame_bgr
        height, width = frame_bgr.shape[:2]
        x0, y0, x1, y1 = self.region(width, height, within)
        assert self._label is not None
        _, label, alpha = self._label
        if self._buffer is None or self._buffer.shape != frame_bgr.shape:
            self._buffer = np.empty_like(frame_bgr)
        out = self._buffer
        np.copyto(out, frame_bgr)
        roi = out[y0:y1, x0:x1]
        np.copyto(roi, (roi * (1.0 - alpha) + label * alpha + 0.5).astype(np.uint8))
        return out
