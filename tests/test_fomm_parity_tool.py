"""tools/fomm_parity.py: the CLI passes on the committed fixture and fails loudly on a perturbed one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

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
    assert "15/15 within bounds" in result.stdout
    for name in ("kp_norm_jacobian", "adapt_movement_scale", "mask_relative", "prediction_relative_align_corners_true"):
        assert name in result.stdout


def test_cli_reports_a_perturbed_array(tmp_path, capsys):
    with np.load(FIXTURES / "parity.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["prediction_absolute"] = arrays["prediction_absolute"] + np.float32(1e-3)
    perturbed = tmp_path / "perturbed.npz"
    np.savez(perturbed, **arrays)
    assert _load_tool().main(["--parity", str(perturbed), "--align-corners", "false"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: prediction_absolute" in out and "11/12 within bounds" in out


def test_cli_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    assert _load_tool().main(["--checkpoint", str(tmp_path / "vox-adv-cpk.pth.tar")]) == 2
    assert "never ships" in capsys.readouterr().err
