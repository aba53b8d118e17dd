"""Check FaceMimic's FOMM port against a parity fixture made by the original FOMM code; print max-abs errors.

    python tools/fomm_parity.py                                  # the committed tiny fixture, both variants
    python tools/fomm_parity.py --checkpoint C --config vox-256.yaml --parity P --align-corners false

The parity npz holds inputs and the original code's outputs (layout of tests/fixtures/fomm/parity.npz). Exit status:
0 when every array is within its bound, 1 when one is not, 2 when an input could not be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from avatarcam.errors import FaceMimicError
from avatarcam.generators.fomm.checkpoint import (
    infer_fomm_config,
    load_fomm_checkpoint,
    read_fomm_state_dicts,
)
from avatarcam.generators.fomm.model import FommConfig, movement_scale, normalize_kp

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fomm"

# fp32 bounds set from measured noise with at least 10x headroom (tests/tolerances.py has the measurements and
# `python tools/measure_float_noise.py` remeasures them). Max-abs, per unit of magnitude: a bound is multiplied by
# max(1, max |reference|). The movement scale's is relative; the *_MEAN_* bound is on mean |diff|.
KP_BOUND, SCALE_REL_BOUND, MAP_BOUND, PREDICTION_BOUND = 3e-4, 2e-5, 2e-4, 4e-3
PREDICTION_MEAN_BOUND = 1e-4
KEYPOINT_ARRAYS = {
    "kp_source_value": KP_BOUND, "kp_source_jacobian": KP_BOUND,
    "kp_driving_value": KP_BOUND, "kp_driving_jacobian": KP_BOUND,
    "kp_norm_value": KP_BOUND, "kp_norm_jacobian": KP_BOUND,
}
GENERATOR_ARRAYS = {
    "deformation_relative": MAP_BOUND, "occlusion_map_relative": MAP_BOUND, "mask_relative": MAP_BOUND,
    "prediction_relative": PREDICTION_BOUND, "prediction_absolute": PREDICTION_BOUND,
}
MEAN_ARRAYS = {"prediction_relative": PREDICTION_MEAN_BOUND, "prediction_absolute": PREDICTION_MEAN_BOUND}
ALIGN_CORNERS_TRUE_SUFFIX = "_align_corners_true"


@dataclass(frozen=True)
class Row:
    """One line of the error table."""

    name: str
    shape: tuple[int, ...]
    error: float
    bound: float
    kind: str = ""
    """'' for max |diff|, 'rel' for a relative error, 'mean' for mean |diff|."""

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def run_sequence(kp_detector, generator, source: np.ndarray, driving: np.ndarray) -> dict[str, np.ndarray]:
    """FOMM demo.make_animation's sequence, frame by frame: keypoints, relative and absolute generator outputs."""
    source_t = torch.from_numpy(source)
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        kp_source = kp_detector.detect(source_t)
        kp_initial = kp_detector.detect(torch.from_numpy(driving[0:1]))
        features = generator.encode_source(source_t)
        out["kp_source_value"], out["kp_source_jacobian"] = [kp_source.value.numpy()], [kp_source.jacobian.numpy()]
        out["adapt_movement_scale"] = [np.array([movement_scale(kp_source.value, kp_initial.value)])]
        for i in range(driving.shape[0]):
            kp_driving = kp_detector.detect(torch.from_numpy(driving[i : i + 1]))
            kp_norm = normalize_kp(kp_source, kp_driving, kp_initial)
            relative = generator(source_t, features, kp_source.value, kp_source.jacobian,
                                 kp_norm.value, kp_norm.jacobian)
            absolute = generator(source_t, features, kp_source.value, kp_source.jacobian,
                                 kp_driving.value, kp_driving.jacobian)
            frame = {
                "kp_driving_value": kp_driving.value, "kp_driving_jacobian": kp_driving.jacobian,
                "kp_norm_value": kp_norm.value, "kp_norm_jacobian": kp_norm.jacobian,
                "prediction_relative": relative[0], "occlusion_map_relative": relative[1],
                "mask_relative": relative[2], "deformation_relative": relative[3],
                "prediction_absolute": absolute[0],
            }
            for name, tensor in frame.items():
                out.setdefault(name, []).append(tensor.numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def compare(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], bounds: dict[str, float],
            suffix: str = "", *, mean: bool = False) -> list[Row]:
    """Max-abs (or mean-abs) error of each named array against the reference array `name + suffix`.

    Each bound applies per unit of magnitude: it is multiplied by max(1, max |reference|).
    """
    rows = []
    for name, bound in bounds.items():
        want = reference.get(name + suffix)
        if want is None:
            continue  # e.g. the fixture has no align_corners=True mask
        if want.shape != ours[name].shape:
            raise ValueError(f"{name + suffix}: the parity file has shape {want.shape}, ours {ours[name].shape}")
        difference = np.abs(ours[name].astype(np.float64) - want.astype(np.float64))
        error = float(difference.mean() if mean else difference.max())
        magnitude = max(1.0, float(np.abs(want).max()))
        rows.append(Row(name + suffix, want.shape, error, bound * magnitude, "mean" if mean else ""))
    return rows


def _read_config(path: Path) -> FommConfig:
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    return FommConfig.from_model_params(data.get("model_params", data))


def _print_table(rows: list[Row]) -> None:
    width = max(len(row.name) for row in rows)
    print(f"{'array':<{width}}  {'shape':<16} {'max |diff|':>10}  {'bound':>9}  result")
    for row in rows:
        shape = "x".join(map(str, row.shape))
        kind = f" {row.kind}" if row.kind else ""
        print(f"{row.name:<{width}}  {shape:<16} {row.error:>10.3g}  {row.bound:>9.2g}  "
              f"{'ok' if row.ok else 'FAIL'}{kind}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the sequence for each align_corners variant and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=FIXTURES / "tiny-checkpoint.pth.tar")
    parser.add_argument("--config", type=Path, default=FIXTURES / "tiny-config.json",
                        help="FOMM YAML or JSON with model_params; 'infer' to infer it from the checkpoint shapes")
    parser.add_argument("--parity", type=Path, default=FIXTURES / "parity.npz")
    parser.add_argument("--align-corners", choices=("false", "true", "both"), default="both")
    args = parser.parse_args(argv)

    try:
        if str(args.config) == "infer":
            config = infer_fomm_config(*read_fomm_state_dicts(args.checkpoint))
        else:
            config = _read_config(args.config)
        with np.load(args.parity) as data:
            reference = {name: data[name] for name in data.files}
        variants = {"false": [False], "true": [True], "both": [False, True]}[args.align_corners]
        rows: list[Row] = []
        for align_corners in variants:
            kp_detector, generator = load_fomm_checkpoint(
                args.checkpoint, replace(config, align_corners=align_corners)
            )
            ours = run_sequence(kp_detector, generator, reference["source"], reference["driving"])
            if not rows:  # keypoints do not depend on grid_sample: report them once
                rows += compare(ours, reference, KEYPOINT_ARRAYS)
                want = float(reference["adapt_movement_scale"][0])
                got = float(ours["adapt_movement_scale"][0])
                rows.append(Row("adapt_movement_scale", (1,), abs(got / want - 1), SCALE_REL_BOUND, "rel"))
            if align_corners:
                true_rows = compare(ours, reference, GENERATOR_ARRAYS, suffix=ALIGN_CORNERS_TRUE_SUFFIX)
                if not true_rows:
                    raise ValueError(f"{args.parity} has no *{ALIGN_CORNERS_TRUE_SUFFIX} arrays")
                rows += true_rows
                rows += compare(ours, reference, {"prediction_relative": PREDICTION_MEAN_BOUND},
                                suffix=ALIGN_CORNERS_TRUE_SUFFIX, mean=True)
            else:
                rows += compare(ours, reference, GENERATOR_ARRAYS)
                rows += compare(ours, reference, MEAN_ARRAYS, mean=True)
    except (FaceMimicError, OSError, KeyError, ValueError) as error:
        print(f"fomm_parity: {error}", file=sys.stderr)
        return 2

    print(f"FOMM parity: {args.checkpoint.name} vs {args.parity.name}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; align_corners {args.align_corners}")
    _print_table(rows)
    failed = [row.name + (f" ({row.kind})" if row.kind else "") for row in rows if not row.ok]
    print(f"{len(rows) - len(failed)}/{len(rows)} within bounds" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
