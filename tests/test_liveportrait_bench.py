"""tools/bench_liveportrait.py runs end to end and writes its JSON contract (tiny weights, torch; heavy: ~1 min)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.heavy
def test_bench_tool_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_liveportrait.py"), "--tiny", "--runtimes",
                           "torch", "--frames", "1", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["runtime"] == "torch-cpu" and row["frames"] == 1
    assert set(row["ms"]) == {"crop", "motion_extractor", "motion", "generate", "compose", "end_to_end"}
    assert all(v > 0 for v in row["ms"].values())
    assert set(row["graph_ms"]) == {"lp_appearance", "lp_motion", "lp_warp_generate", "lp_stitching",
                                    "lp_retargeting"}
    assert row["prepare_ms"] > 0 and row["peak_rss_mb"] >= row["rss_start_mb"] > 0
