"""Round trip of the per-frame graphs through a real Triton core on this machine, payload per frame, and frames per
second with 1 and 4 clients at once.

    python tools/bench_triton.py --json                 # tiny test weights (fast; shapes of the fixtures)
    python tools/bench_triton.py --size full --json     # random weights at the published sizes (vox-256, LivePortrait)

The server is tests/pytriton_server.py in the PyTriton environment (tools/install.py --dev): Triton's core and gRPC,
with each graph run by ONNX Runtime on the CPU inside PyTriton's Python backend, on localhost, plain text, no token.
So `server_ms` is CPU inference (a GPU server is far faster) and `overhead_ms` = round trip - the same graph on the
local ONNX Runtime with one thread (the server's setting): serialisation, gRPC, Triton's scheduling and PyTriton's
shared-memory hop. Frames per second with 4 clients: four threads, each with its own gRPC channel, running the
per-frame chain at once against one model instance per graph (so they queue on the server, as they would).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner
from avatarcam.backends.triton_runner import TritonRunner, TritonSettings, model_name
from avatarcam.generators.common.triton_export import FamilyGraphs, export_graphs, write_repository
from avatarcam.paths import PROJECT_ROOT

SERVER = PROJECT_ROOT / "tests" / "pytriton_server.py"
VENV = Path(os.environ.get("FACEMIMIC_PYTRITON_VENV", Path.home() / ".cache" / "facemimic" / "pytriton-venv"))
PER_FRAME = {
    "fomm": ("fomm_kp_detector", "fomm_frame_generator"),
    "liveportrait": ("lp_motion", "lp_stitching", "lp_retargeting", "lp_warp_generate"),
}
TINY = {"fomm": PROJECT_ROOT / "tests" / "fixtures" / "fomm" / "tiny-checkpoint.pth.tar",
        "liveportrait": PROJECT_ROOT / "tests" / "fixtures" / "liveportrait" / "tiny-weights"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_size_graphs(family: str, engines: Path, log: Any) -> FamilyGraphs:
    """Random weights at the published sizes, exported like a real checkpoint."""
    if family == "fomm":
        from bench_fomm import make_random_vox256  # tools/ is sys.path[0] when a tool runs

        return export_graphs("fomm", make_random_vox256(engines / "vox-random.pth.tar"), engines_dir=engines,
                             log_line=log)
    from avatarcam.generators.liveportrait import export as lx
    from avatarcam.generators.liveportrait.reenactor import TENSORRT_PRECISIONS, random_full_size_models

    models = random_full_size_models()
    paths = lx.ensure_exported(models, engines_dir=engines, names=lx.GRAPH_NAMES, log_line=log)
    return FamilyGraphs(key=models.key, ios={n: lx.graph_io(models, n) for n in lx.GRAPH_NAMES}, onnx=paths,
                        tensorrt_precisions=dict(TENSORRT_PRECISIONS))


def feeds(graphs: FamilyGraphs, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of the right shapes (values do not change the timings of these graphs)."""
    out = {}
    for name, io in graphs.ios.items():
        out[name] = {s.name: rng.uniform(0.0, 1.0, tuple(int(d) for d in s.shape)).astype(np.float32) * 0.5
                     for s in io.inputs}
    return out


def start_server(repo: Path, port: int) -> subprocess.Popen:
    python = VENV / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"no PyTriton environment at {VENV}: build it with `python tools/install.py --dev`")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    process = subprocess.Popen([str(python), str(SERVER), "--repository", str(repo), "--grpc-port", str(port),
                                "--http-port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("READY"):
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining its log
            return process
    raise SystemExit("the PyTriton server did not start")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def chain(runners: dict[str, Any], names: tuple[str, ...], inputs: dict[str, dict[str, np.ndarray]]) -> float:
    started = time.perf_counter()
    for name in names:
        runners[name].run(inputs[name])
    return (time.perf_counter() - started) * 1000.0


def bench_family(family: str, graphs: FamilyGraphs, port: int, frames: int) -> dict[str, Any]:
    names = PER_FRAME[family]
    inputs = feeds(graphs, np.random.default_rng(0))
    settings = TritonSettings(url=f"localhost:{port}", timeout_s=60.0)

    def remote_runners() -> dict[str, TritonRunner]:
        return {n: TritonRunner(model=model_name(n, graphs.key), settings=settings, expected_io=graphs.ios[n]).open()
                for n in names}

    graphs_out: dict[str, Any] = {}
    remote = remote_runners()
    for name in names:
        local = OnnxRuntimeRunner(onnx_path=graphs.onnx[name], intra_op_threads=1).open()
        local.run(inputs[name])
        remote[name].run(inputs[name])
        local_ms, remote_ms = [], []
        for _ in range(frames):
            t = time.perf_counter()
            local.run(inputs[name])
            local_ms.append((time.perf_counter() - t) * 1000.0)
            remote[name].run(inputs[name])
            remote_ms.append(remote[name].round_trip_ms)
        local.close()
        graphs_out[name] = {
            "round_trip_ms": round(statistics.median(remote_ms), 2),
            "server_ms": round(statistics.median(local_ms), 2),
            "overhead_ms": round(statistics.median(remote_ms) - statistics.median(local_ms), 2),
            "request_bytes": remote[name].request_bytes, "response_bytes": remote[name].response_bytes,
        }
    one = [chain(remote, names, inputs) for _ in range(frames)]
    for runner in remote.values():
        runner.close()

    def client(count: int, done: list[int]) -> None:
        runners = remote_runners()
        for _ in range(count):
            chain(runners, names, inputs)
            done.append(1)
        for runner in runners.values():
            runner.close()

    done: list[int] = []
    threads = [threading.Thread(target=client, args=(frames, done)) for _ in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    request = sum(g["request_bytes"] for g in graphs_out.values())
    response = sum(g["response_bytes"] for g in graphs_out.values())
    return {
        "weights_key": graphs.key,
        "per_frame_graphs": list(names),
        "graphs": graphs_out,
        "frame_round_trip_ms": round(statistics.median(one), 2),
        "payload_bytes_per_frame": {"request": request, "response": response, "total": request + response},
        "fps_1_client": round(1000.0 / statistics.median(one), 2),
        "fps_4_clients_total": round(len(done) / wall_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny",
                        help="tiny: the test fixtures; full: random weights at the published sizes (slow on CPU)")
    parser.add_argument("--model", choices=tuple(PER_FRAME), action="append", help="default: both")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per measurement (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    families = args.model or list(PER_FRAME)
    log = (lambda _: None) if args.json else print
    with tempfile.TemporaryDirectory() as tmp:
        engines, repo = Path(tmp) / "engines", Path(tmp) / "repo"
        all_graphs = {}
        for family in families:
            graphs = (export_graphs(family, TINY[family], engines_dir=engines, log_line=log) if args.size == "tiny"
                      else full_size_graphs(family, engines, log))
            write_repository(graphs, repo, kind="cpu", log_line=log)
            all_graphs[family] = graphs
        port = free_port()
        server = start_server(repo, port)
        try:
            results = {family: bench_family(family, all_graphs[family], port, args.frames) for family in families}
        finally:
            stop_server(server)
    report = {"size": args.size, "frames": args.frames, "cpu_count": os.cpu_count(),
              "load_average_1m": round(os.getloadavg()[0], 2), "server": "PyTriton (Triton core), ONNX Runtime CPU",
              "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for family, r in results.items():
            print(f"{family}: frame round trip {r['frame_round_trip_ms']} ms, payload "
                  f"{r['payload_bytes_per_frame']['total'] / 1e6:.2f} MB/frame, fps 1 client {r['fps_1_client']}, "
                  f"4 clients {r['fps_4_clients_total']} (total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
