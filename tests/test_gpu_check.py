"""tools/gpu_check.py: its CPU dry run (tiny sizes) and JSON contract, its no-GPU answer, its import closure, and
the overlap arithmetic it judges the CUDA staging by. The GPU run itself needs an NVIDIA GPU."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_check.py"
GPU_CHECK = runpy.run_path(str(TOOL))
BLOCKED = GPU_CHECK["BLOCKED_MODULES"]

pytest.importorskip("torch")


def cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def blocker_env(tmp_path: Path) -> dict[str, str]:
    """Environment whose Python processes (and their children) cannot import any of BLOCKED, as on the GPU machine."""
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        BLOCKED = {tuple(BLOCKED)!r}

        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked: the GPU machine does not have it")
                return None

        sys.meta_path.insert(0, _Block())
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_tool(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=timeout, env=env)


def test_the_blocker_blocks(tmp_path: Path) -> None:
    """The environment the dry run is tested in really lacks the GPU machine's absentees (yaml is installed here)."""
    code = textwrap.dedent("""
        import importlib, sys
        for name in sys.argv[1:]:
            try:
                importlib.import_module(name)
                print("IMPORTED", name)
            except ImportError:
                pass
    """)
    result = subprocess.run([sys.executable, "-c", code, *BLOCKED], capture_output=True, text=True, check=False,
                            env=blocker_env(tmp_path), timeout=60)
    assert result.returncode == 0 and "IMPORTED" not in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(cuda_present(), reason="checks the answer on a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_2(tmp_path: Path) -> None:
    report_path = tmp_path / "gpu.json"
    result = run_tool(["--json", str(report_path)], timeout=120)
    assert result.returncode == 2, result.stderr
    report = json.loads(report_path.read_text())
    assert report["status"] == "no_cuda" and report["device"]["cuda"] is False and report["sections"] == {}
    assert report["message"].startswith("no CUDA device: torch ") and "--allow-cpu" in report["message"]
    assert "no CUDA device" in result.stderr


@pytest.mark.skipif(cuda_present(), reason="the dry run is the CPU path")
def test_cpu_dry_run_writes_the_report_contract_without_the_absent_packages(tmp_path: Path) -> None:
    report_path = tmp_path / "out" / "gpu.json"
    result = run_tool(["--allow-cpu", "--json", str(report_path)], env=blocker_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["format"] == "facemimic-gpu-check/1"
    assert (report["status"], report["mode"], report["device"]["cuda"]) == ("ok", "cpu-dry-run", False)
    assert "no number in this report is a GPU measurement" in report["note"]
    assert set(report["sections"]) == {"fomm", "staging", "mesh_warp", "gpu_tests"}
    assert report["total_s"] < report["budget_s"] <= 480
    for name, section in report["sections"].items():
        assert section["status"] in ("ok", "skipped"), (name, section.get("error"), section.get("traceback"))
        assert 0 < section["seconds"] <= section["cap_s"] and section["imported_blocked_modules"] == []

    fomm = report["sections"]["fomm"]["results"]
    assert set(fomm["models"]) == {"fomm_kp_detector", "fomm_source_encoder", "fomm_frame_generator"}
    for entry in fomm["models"].values():
        for timing in (entry["fp32_ms"], entry["fp16_ms"]):
            assert timing["p50"] > 0 and timing["p95"] >= timing["p50"] and timing["iterations"] >= 1
        for parity in entry["fp16_vs_fp32"].values():
            # bfloat16 autocast on the CPU: a real but small difference, never zero, never garbage
            assert 0 < parity["max_abs"] < 0.5 * max(1.0, parity["peak"]) and parity["psnr_db"] > 20
    e2e = fomm["end_to_end"]
    assert e2e["runtime"] == "torch-cpu" and e2e["canvas"] == 128 and e2e["frames"] >= 1
    assert e2e["ms"]["p50"] > 0 and {"crop", "kp_detector", "generate", "compose"} <= set(e2e["stages_ms"])
    assert 5 < e2e["output_mean_grey"] < 250  # an image was rendered, not a blank canvas

    staging = report["sections"]["staging"]["results"]
    assert staging["staging_allocations_per_frame"] == 0 and staging["max_abs_error_vs_numpy"] < 1e-5
    assert staging["overlap"]["pairs"] == staging["frames"] - 1 >= 5
    assert staging["overlap"]["overlaps"] is False  # upload and compute are serial on the CPU: reported as such

    mesh = report["sections"]["mesh_warp"]["results"]["sizes"]
    assert set(mesh) == {"128", "256"}
    for entry in mesh.values():
        assert entry["ms"]["p50"] > 0 and entry["vs_cpu_grey_levels"]["max"] <= 1e-3

    gpu_tests = report["sections"]["gpu_tests"]
    if gpu_tests["status"] == "ok":
        outcomes = {t["id"]: t for t in gpu_tests["results"]["tests"]}
        staging_test = outcomes[
            "tests.test_backends_buffers::test_cuda_staging_is_pinned_stream_ordered_and_allocation_free"]
        assert staging_test["outcome"] == "skipped" and "no CUDA GPU" in staging_test["message"]
    else:
        assert "pytest is not installed" in gpu_tests["results"]["skipped"]


def test_import_closure_of_every_section_leaves_out_the_absent_packages(tmp_path: Path) -> None:
    """Here mediapipe, yaml, pynput and pyvirtualcam are installed: importing what the sections use must not load
    them (the dry run above shows the sections also run where they are missing)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        tool = runpy.run_path({str(TOOL)!r})
        import avatarcam.avatars, avatarcam.backends.buffers, avatarcam.backends.hardware
        import avatarcam.generators.fomm.reenactor, avatarcam.generators.fomm.export, avatarcam.generators.mesh.torch_warp
        tool["_load_bench_fomm"]()
        tool["device_facts"]()
        print(sorted(m for m in {tuple(BLOCKED)!r} if sys.modules.get(m) is not None))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_overlap_report_measures_upload_inside_the_previous_compute() -> None:
    overlap_report = GPU_CHECK["overlap_report"]

    def frame(start: float, upload: float, compute: tuple[float, float]) -> dict[str, float]:
        return {"started": start, "uploaded": start + upload, "compute_started": compute[0], "computed": compute[1],
                "downloaded": compute[1] + 0.1}

    # Pipelined: each upload (1 ms) runs while the previous frame computes (2 ms).
    pipelined = [frame(2.0 * i, 1.0, (2.0 * i + 1.0, 2.0 * i + 3.0)) for i in range(6)]
    report = overlap_report(pipelined)
    assert report["overlaps"] is True and report["overlap_fraction_p50"] == 1.0 and report["pairs_overlapping"] == 5
    assert report["stage_ms_p50"] == {"upload": 1.0, "compute": 2.0, "download": 0.1}
    assert report["frame_interval_ms_p50"] == 2.0
    # Serial: each upload starts after the previous frame's download.
    serial = [frame(3.2 * i, 1.0, (3.2 * i + 1.0, 3.2 * i + 3.0)) for i in range(6)]
    report = overlap_report(serial)
    assert report["overlaps"] is False and report["overlap_fraction_p50"] == 0.0 and report["pairs_overlapping"] == 0
    # Half the upload inside the previous compute.
    half = [frame(0.0, 1.0, (1.0, 3.0)), frame(2.5, 1.0, (3.5, 5.5))]
    assert overlap_report(half)["overlap_fraction_p50"] == 0.5
