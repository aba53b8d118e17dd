"""Face-swap quality read by the independent judge (../shared/judge: dlib detector, landmarks and face embedding,
no MediaPipe), on fixture pairs rendered by tools/render.py --model swap. Heavy: about a minute per pair.

Skipped with the reason where the judge or its virtual environment is not there (a fresh clone has no ../shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import D12, D14, PORTRAIT, ROOT

pytestmark = pytest.mark.heavy

JUDGE = ROOT.parent / "shared" / "judge" / "judge.py"
JUDGE_PYTHON = Path.home() / ".venvs" / "judge" / "bin" / "python"
MOTION_FLOOR = 0.8
"""A regression floor, not the issue's target: the issue asks motion_score >= 0.9; measured 0.94 on d14 and 0.83 on
d12 with lp_s42 (README, "Face swap"), so d12 does not meet the target yet."""


@pytest.mark.skipif(not JUDGE.is_file() or not JUDGE_PYTHON.is_file(),
                    reason=f"needs the judge {JUDGE} and its venv {JUDGE_PYTHON} (see the judge's README)")
@pytest.mark.parametrize("driver", [D12, D14], ids=lambda p: p.stem)
def test_swap_output_has_the_avatars_identity_and_the_drivers_motion(tmp_path, driver):
    out = tmp_path / f"{driver.stem}.mp4"
    render = subprocess.run([sys.executable, str(ROOT / "tools" / "render.py"), "--model", "swap", "--driver",
                             str(driver), "--avatar", str(PORTRAIT), "--out", str(out), "--quiet"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert render.returncode == 0, render.stderr[-2000:]
    report = tmp_path / "judge.json"
    judged = subprocess.run([str(JUDGE_PYTHON), str(JUDGE), "--driving", str(driver), "--output", str(out),
                             "--source", str(PORTRAIT), "--json", str(report)], capture_output=True, text=True,
                            timeout=900)
    assert judged.returncode == 0, judged.stderr[-2000:]
    m = json.loads(report.read_text())["metrics"]
    print(f"\n{driver.stem}: motion {m['motion_score']:.3f}, identity to avatar {m['identity_dist']:.3f}, to driver "
          f"{m['identity_dist_to_driver']:.3f}, driver to avatar {m['driver_to_source_dist']:.3f}")
    assert m["face_rate_output"] == 1.0, "a face is found on every output frame"
    assert m["identity_dist"] < m["identity_dist_to_driver"], "the output looks more like the avatar than the driver"
    assert m["identity_dist"] < m["driver_to_source_dist"] - 0.1
    assert m["motion_score"] >= MOTION_FLOOR
