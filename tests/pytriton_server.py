"""A real Triton Inference Server core (PyTriton's embedded tritonserver) serving a model repository written by
tools/export_triton.py, for the tests and tools/bench_triton.py. Runs in its own virtual environment (PyTriton needs
numpy < 2; see tools/install.py --dev), never in the project's, so it imports nothing of avatarcam.

PyTriton ships Triton's core with only its Python backend, not the ONNX Runtime backend a GPU server uses: each
model's inference callable runs the repository's model.onnx with ONNX Runtime (CPU). Everything else is Triton's own:
the gRPC endpoint and protocol, TLS (--grpc-use-ssl), model metadata taken from each config.pbtxt (parsed with
Triton's ModelConfig protobuf, so a config Triton would reject fails here too), and the token check
(--grpc-restricted-protocol on every protocol group, header `triton-access-token`, set up by PyTriton's
TritonSecurityConfig).

    python tests/pytriton_server.py --repository R --grpc-port P --http-port Q [--token T] [--cert C --key K]

prints `READY <comma-separated model names>` once every model is served, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np

_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
           "TYPE_UINT8": np.uint8, "TYPE_BOOL": np.bool_}


# Every group but "health": PyTriton's own start-up client polls health without the token (a real tritonserver
# restricts health too, as the README's command does).
RESTRICTED = ["metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics", "trace",
              "logging"]


def read_config(folder: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    if config.name != folder.name:
        raise SystemExit(f"{folder}/config.pbtxt names model {config.name!r}: Triton requires the folder's name")
    if config.platform != "onnxruntime_onnx":
        raise SystemExit(f"{folder}: platform {config.platform!r}; this test server runs onnxruntime_onnx only")
    return config


def tensors(items):
    from pytriton.model_config import Tensor
    from tritonclient.grpc import model_config_pb2

    return [Tensor(name=t.name, dtype=_DTYPES[model_config_pb2.DataType.Name(t.data_type)],
                   shape=tuple(int(d) for d in t.dims)) for t in items]


def make_infer(onnx_path: Path, output_names: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    lock = threading.Lock()

    def infer(requests):
        responses = []
        for request in requests:
            with lock:
                values = session.run(output_names, {name: np.asarray(a) for name, a in request.data.items()})
            responses.append(dict(zip(output_names, values)))
        return responses

    return infer


def use_own_libpython() -> None:
    """Make Triton's Python-backend stub load this interpreter's libpython, not another 3.x.y on the loader's path
    (a pyenv 3.11.7 standard library under Debian's libpython 3.11.2 fails in multiprocessing: RLock differs)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repository", required=True, type=Path)
    parser.add_argument("--grpc-port", required=True, type=int)
    parser.add_argument("--http-port", required=True, type=int)
    parser.add_argument("--token", default=None)
    parser.add_argument("--cert", default=None)
    parser.add_argument("--key", default=None)
    parser.add_argument("--workspace", default=None)
    args = parser.parse_args()

    use_own_libpython()
    from pytriton.model_config import ModelConfig
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    tls = {}
    if args.cert:
        tls = {"grpc_use_ssl": True, "grpc_server_cert": args.cert, "grpc_server_key": args.key}
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=args.grpc_port, http_address="127.0.0.1",
                          http_port=args.http_port, allow_metrics=False, log_verbose=0, **tls)
    security = TritonSecurityConfig(
        access_token=args.token,
        restricted_endpoints=RESTRICTED if args.token else [],
    )
    triton = Triton(config=config, security_config=security, workspace=args.workspace)
    names = []
    for folder in sorted(p for p in args.repository.iterdir() if (p / "config.pbtxt").is_file()):
        model = read_config(folder)
        outputs = [t.name for t in model.output]
        triton.bind(model_name=model.name, infer_func=make_infer(folder / "1" / "model.onnx", outputs),
                    inputs=tensors(model.input), outputs=tensors(model.output),
                    config=ModelConfig(batching=False), strict=True)
        names.append(model.name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    triton.run()
    print("READY " + ",".join(names), flush=True)
    stop.wait()
    triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
