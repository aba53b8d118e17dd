"""tools/fomm_parity.py: the CLI passes on the committed fixture and fails loudly on a perturbed one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import tolerances

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "fomm_parity.py"
FIXTURES = ROOT / "tests" / "fixtures" / "fomm"


def _load_tool():
    spec = importlib.util.spec_from_file_location("fomm_parity_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cli_passes_on_the_committed_fixture(tmp_path):
    # A fresh process from another directory: the script must find the package by itself.
    result = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "18/18 within bounds" in result.stdout
    for name in ("kp_norm_jacobian", "adapt_movement_scale", "mask_relative", "prediction_relative_align_corners_true"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "perturb, failed",
    [
        # A quarter of a uint8 level everywhere: inside the max-abs bound, caught by the mean bound (10x).
        (lambda a: a + np.float32(1e-3), "prediction_absolute (mean)"),
        # One pixel off by 5 levels: caught by the max-abs bound (5x); the mean hardly moves.
        (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 777, a + np.float32(5 / 255), a),
         "prediction_absolute"),
    ],
    ids=["offset", "one-pixel"],
)
def test_cli_reports_a_perturbed_array(tmp_path, capsys, perturb, failed):
    with np.load(FIXTURES / "parity.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["prediction_absolute"] = perturb(arrays["prediction_absolute"]).astype(np.float32)
    perturbed = tmp_path / "perturbed.npz"
    np.savez(perturbed, **arrays)
    assert _load_tool().main(["--parity", str(perturbed), "--align-corners", "false"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {failed}\n" in out and "13/14 within bounds" in out


def test_tool_bounds_are_the_test_suites():
    """The tool and the tests judge parity by the same numbers (tests/tolerances.py gives their measurements)."""
    tool = _load_tool()
    assert (tool.KP_BOUND, tool.SCALE_REL_BOUND, tool.MAP_BOUND, tool.PREDICTION_BOUND, tool.PREDICTION_MEAN_BOUND) == (
        tolerances.FOMM_KP_BOUND, tolerances.FOMM_SCALE_REL_BOUND, tolerances.FOMM_MAP_BOUND,
        tolerances.FOMM_PREDICTION_BOUND, tolerances.FOMM_PREDICTION_MEAN_BOUND)


def test_cli_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    assert _load_tool().main(["--checkpoint", str(tmp_path / "vox-adv-cpk.pth.tar")]) == 2
    assert "never ships" in capsys.readouterr().err
