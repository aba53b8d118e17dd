#!/usr/bin/env python3
"""Make tests/fixtures/fomm/parity-256.npz: the original FOMM code's relative animation at 256x256 with the tiny
checkpoint (narrower layers than vox-256), from the user's own first-order-model checkout.

    python tools/make_fomm_parity256.py --original ~/first-order-model [--out tests/fixtures/fomm/parity-256.npz]

FOMM's demo and Avatarify run every checkpoint at 256x256; this fixture lets the tests check that FaceMimic does too
for a checkpoint whose widths are not the published ones. Inputs: avatars/astronaut.png (public domain) sampled
through square windows into 256x256 uint8 frames. Call sequence (FOMM's demo.make_animation, relative mode): kp of
the source and of driving frame 0 (the initial frame), then per frame kp_detector, normalize_kp(relative movement,
relative jacobian, adapted movement scale), generator. Tensors are contiguous NCHW float32 = uint8 / 255.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from fomm_original import build_original, load_original  # a sibling tool: a script runs with its own folder importable

ROOT = Path(__file__).resolve().parent.parent

FIXTURES = ROOT / "tests" / "fixtures" / "fomm"
SIZE = 256
# (shift x, shift y) in image pixels, rotation in degrees, zoom (window side divided by this).
WINDOWS = {
    "source": ((0, 0), 0.0, 1.0),
    "driving0": ((4, 3), 0.0, 1.0),
    "driving1": ((4, 3), 8.0, 1.0),
    "driving2": ((-6, 8), 0.0, 1.12),
}
CENTER, SIDE = (256.0, 236.0), 300.0  # the face in the 512x512 astronaut canvas


def window(image_bgr: np.ndarray, shift: tuple[int, int], degrees: float, zoom: float) -> np.ndarray:
    """A SIZE x SIZE uint8 BGR view of a square window around the face (bilinear, edges replicated)."""
    cx, cy = CENTER[0] + shift[0], CENTER[1] + shift[1]
    scale = SIZE * zoom / SIDE
    matrix = cv2.getRotationMatrix2D((cx, cy), degrees, scale)
    matrix[:, 2] += (SIZE / 2 - cx, SIZE / 2 - cy)
    return cv2.warpAffine(image_bgr, matrix, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def to_tensor(bgr: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, type=Path, help="a first-order-model checkout")
    parser.add_argument("--out", type=Path, default=FIXTURES / "parity-256.npz")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    original = load_original(args.original, prefer_optim=False)
    model_params = json.loads((FIXTURES / "tiny-config.json").read_text())["model_params"]
    state = torch.load(FIXTURES / "tiny-checkpoint.pth.tar", map_location="cpu", weights_only=True)
    kp_detector, generator = build_original(original, model_params, state)
    canvas = cv2.imread(str(ROOT / "avatars" / "astronaut.png"))
    frames = {name: window(canvas, *spec) for name, spec in WINDOWS.items()}
    driving = [frames[f"driving{i}"] for i in range(3)]
    out: dict[str, np.ndarray] = {
        "source_bgr": frames["source"],
        "driving_bgr": np.stack(driving),
    }
    with torch.no_grad():
        source = to_tensor(frames["source"])
        kp_source = kp_detector(source)
        kp_initial = kp_detector(to_tensor(driving[0]))
        predictions, values, jacobians = [], [], []
        for frame in driving:
            kp_driving = kp_detector(to_tensor(frame))
            kp_norm = original.normalize_kp(kp_source=kp_source, kp_driving=kp_driving, kp_driving_initial=kp_initial,
                                            use_relative_movement=True, use_relative_jacobian=True,
                                            adapt_movement_scale=True)
            predictions.append(generator(source, kp_source=kp_source, kp_driving=kp_norm)["prediction"][0].numpy())
            values.append(kp_norm["value"][0].numpy())
            jacobians.append(kp_norm["jacobian"][0].numpy())
    out["prediction_relative"] = np.stack(predictions).astype(np.float32)
    out["kp_norm_value"] = np.stack(values).astype(np.float32)
    out["kp_norm_jacobian"] = np.stack(jacobians).astype(np.float32)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): " +
          ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
