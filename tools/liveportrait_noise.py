"""Measure this implementation's distance to the LivePortrait parity fixture under legitimate fp32 CPU variations.

For torch threads 1 and 2, with oneDNN (mkldnn) on and off, every network is fed the fixture's stored inputs
("module alone") and the max abs difference to the original code's outputs is printed as one table row. The test
bounds in tests/test_liveportrait_parity.py must sit well above these numbers and far below the sensitivity misses.

    python tools/liveportrait_noise.py [--rows 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "liveportrait"


def measure(threads: int, mkldnn: bool, rows: list[int]) -> dict[str, float]:
    import torch

    from avatarcam.generators.liveportrait import motion as mo
    from avatarcam.generators.liveportrait.checkpoint import load_liveportrait
    from avatarcam.generators.liveportrait.model import set_sampler

    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    ref = dict(np.load(FIXTURE / "parity.npz"))
    lp = load_liveportrait(FIXTURE / "tiny-weights")

    def d(a, b) -> float:
        a = a.numpy() if hasattr(a, "numpy") else a
        return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())

    out: dict[str, float] = {}
    with torch.no_grad():
        out["f_s"] = d(lp.appearance(torch.from_numpy(ref["source"])), ref["f_s"])
        m = lp.motion(torch.from_numpy(ref["driving"]))
        out["logits"] = max(d(m[k], ref[f"me_driving_{k}_bins"]) for k in ("pitch", "yaw", "roll"))
        out["t_exp_scale_kp"] = max(d(m[k], ref[f"me_driving_{k}"]) for k in ("t", "exp", "scale", "kp"))
        out["degrees_from_bins"] = max(d(mo.headpose_degrees(ref[f"me_driving_{k}_bins"]),
                                         ref[f"me_driving_{k}_deg"].reshape(-1, 1)) for k in ("pitch", "yaw", "roll"))
        x_s = torch.from_numpy(ref["me_source_kp_transformed"])
        for sampler in ("torch", "slices"):
            set_sampler(lp.warping, sampler)
            occ, warped = 0.0, 0.0
            for row in rows:
                kp_driving = torch.from_numpy(ref["anim_kp_final"][row:row + 1])
                w = lp.warping(torch.from_numpy(ref["f_s"]), kp_driving=kp_driving, kp_source=x_s)
                occ = max(occ, d(w["occlusion_map"], ref["warp_occlusion"][row:row + 1]))
                warped = max(warped, d(w["out"], ref["warp_out"][row:row + 1]))
                if row == 1:
                    out[f"deformation_{sampler}"] = d(w["deformation"], ref["warp_deformation"])
            out[f"occlusion_{sampler}"], out[f"warped_{sampler}"] = occ, warped
        set_sampler(lp.warping, "torch")
        g = lp.generator(torch.from_numpy(ref["warp_out"][1:2])).numpy()
        out["generator_crop"] = d(g[:, :, :256, :256], ref["gen_out_crop"])
        feat = torch.cat([x_s.reshape(1, -1).expand(3, -1), torch.from_numpy(ref["anim_kp_expr"]).reshape(3, -1)], 1)
        out["stitch_delta"] = d(lp.stitching(feat), ref["anim_stitch_delta"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1], help="animation rows for the warp (0 1 2)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = {}
    for threads in (1, 2):
        for mkldnn in (True, False):
            start = time.perf_counter()
            results[f"threads={threads} onednn={'on' if mkldnn else 'off'}"] = measure(threads, mkldnn, args.rows)
            print(f"# threads={threads} onednn={mkldnn}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    keys = list(next(iter(results.values())))
    print("| variation | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.2g}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
