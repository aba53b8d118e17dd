"""Make the stylised avatars shipped in avatars/ from the public-domain astronaut portrait.

    python tools/make_avatars.py

Every output is derived here from avatars/astronaut.png (scikit-image's astronaut, a NASA portrait in the public
domain) with OpenCV filters, so all shipped avatars may be redistributed freely.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "avatars" / "astronaut.png"


def painting(image: np.ndarray) -> np.ndarray:
    """Painted look: OpenCV's edge-preserving stylisation, then contrib's oil filter with a small brush."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.2, 0, 255)
    vivid = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    return cv2.stylization(vivid, sigma_s=25, sigma_r=0.25)


def cartoon(image: np.ndarray) -> np.ndarray:
    """Flat colours with dark outlines."""
    smooth = image
    for _ in range(4):
        smooth = cv2.bilateralFilter(smooth, 9, 40, 7)
    quantised = (smooth // 32) * 32 + 16
    grey = cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), 5)
    edges = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(quantised.astype(np.uint8), cv2.cvtColor(edges, cv2.COLOR_GRAY2BGR))


def sketch(image: np.ndarray) -> np.ndarray:
    """Coloured pencil drawing: a colour-dodge line drawing multiplied over softened, paper-light colours."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    blurred = cv2.GaussianBlur(255.0 - grey, (0, 0), 6)
    lines = np.clip(grey * 255.0 / np.maximum(255.0 - blurred, 1.0), 0, 255) / 255.0
    soft = cv2.bilateralFilter(image, 9, 50, 9).astype(np.float32)
    paper = 0.6 * soft + 0.4 * 240.0
    return np.clip(paper * lines[..., None] ** 2.0, 0, 255).astype(np.uint8)


# The portrait window (x, y, side) around the face in the 512x512 original, and the size it is resampled to:
# styles are applied to the face at a useful resolution rather than to the whole scene.
WINDOW = (85, 0, 290)
OUT_SIDE = 576

STYLES = {"astronaut_painting": painting, "astronaut_cartoon": cartoon, "astronaut_sketch": sketch}


def main() -> int:
    image = cv2.imread(str(SOURCE))
    if image is None:
        print(f"error: {SOURCE} is missing", file=sys.stderr)
        return 2
    x, y, side = WINDOW
    portrait = cv2.resize(image[y:y + side, x:x + side], (OUT_SIDE, OUT_SIDE), interpolation=cv2.INTER_CUBIC)
    for name, style in STYLES.items():
        out = ROOT / "avatars" / f"{name}.png"
        cv2.imwrite(str(out), style(portrait))
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
