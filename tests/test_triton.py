"""--backend triton against a real Triton core: PyTriton's embedded tritonserver (tests/pytriton_server.py, in the
virtual environment tools/install.py --dev builds) serves the repository tools/export_triton.py writes for the tiny
FOMM checkpoint and the tiny LivePortrait weights, over gRPC with TLS (a certificate made here for localhost) and
Triton's own token check (--grpc-restricted-protocol, header triton-grpc-protocol-triton-access-token).

The token check is Triton's, not a proxy's: PyTriton passes TritonSecurityConfig to the server as
--grpc-restricted-protocol, the option the README's tritonserver command uses, so the refusal tested here is the one
a production server gives. (PyTriton's start-up client polls "health" without the token, so this server leaves that
one group open; every group the client uses for models is restricted.)
"""

from __future__ import annotations

import datetime
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.tolerances import TRITON_REMOTE_BOUND

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "pytriton_server.py"
FOMM_TINY = ROOT / "tests" / "fixtures" / "fomm" / "tiny-checkpoint.pth.tar"
LP_TINY = ROOT / "tests" / "fixtures" / "liveportrait" / "tiny-weights"
VENV = Path(os.environ.get("FACEMIMIC_PYTRITON_VENV", Path.home() / ".cache" / "facemimic" / "pytriton-venv"))
VENV_PYTHON = VENV / "bin" / "python"
TOKEN = "test-token-3f9c"
START_TIMEOUT_S = 180.0

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed: "
                                 "pip install -e .[triton] (tools/install.py --dev installs it)")

from avatarcam.backends.base import ModelIO, TensorSpec  # noqa: E402
from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402
from avatarcam.backends.triton_runner import (  # noqa: E402
    TOKEN_ENV,
    TOKEN_HEADER,
    TritonRunner,
    TritonSettings,
    model_name,
)
from avatarcam.errors import ConfigError, EngineError  # noqa: E402
from avatarcam.generators.common.triton import SERVER_TIMING  # noqa: E402

# ---------------------------------------------------------------- client settings (no server needed)


def test_plain_text_to_another_machine_is_refused_unless_insecure():
    with pytest.raises(ConfigError, match="plain text to another machine.*--triton-insecure"):
        TritonSettings(url="grpc://gpu-box:8001", token="t")
    with pytest.raises(ConfigError, match=f"no token.*{TOKEN_ENV}"):
        TritonSettings(url="gpu-box:8001")
    assert TritonSettings(url="gpu-box:8001", token="t").tls  # TLS by default off this machine
    assert not TritonSettings(url="gpu-box:8001", insecure=True).tls
    assert not TritonSettings(url="localhost:8001").tls and not TritonSettings(url="127.0.0.1:8001").tls
    assert TritonSettings(url="grpcs://localhost:8001").tls


def test_token_comes_from_the_environment_and_travels_as_the_restricted_protocol_header():
    settings = TritonSettings.from_env("gpu-box:8001", environ={TOKEN_ENV: " s3cret "})
    assert settings.headers == {"triton-grpc-protocol-triton-access-token": "s3cret"} == {TOKEN_HEADER: "s3cret"}
    assert TritonSettings.from_env("localhost:8001", environ={}).headers == {}


def test_status_line_shows_the_server_round_trip():
    from avatarcam.preview import PreviewStatus

    assert PreviewStatus(avatar="Mona", latency_ms=180.2, server_ms=95.6).text() == \
        "Mona | latency 180 ms | server 96 ms"


@pytest.mark.parametrize("url", ["gpu-box", "http://gpu-box:8000", "gpu-box:0", ":8001"])
def test_malformed_urls_say_what_is_expected(url):
    with pytest.raises(ConfigError, match="Triton URL"):
        TritonSettings(url=url, insecure=True)


def test_unreachable_server_is_a_clear_error():
    port = free_port()  # nothing listens here
    runner = TritonRunner(model="m", settings=TritonSettings(url=f"localhost:{port}", timeout_s=1.0))
    with pytest.raises(EngineError, match=f"cannot reach the Triton server at localhost:{port}.*start tritonserver"):
        runner.open()


# ---------------------------------------------------------------- the repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """Both tiny checkpoints exported into one repository (one server, several checkpoints)."""
    from avatarcam.generators.common.triton_export import export_graphs, write_repository

    engines = tmp_path_factory.mktemp("engines")
    repo = tmp_path_factory.mktemp("triton-models")
    families = {}
    for family, checkpoint in (("fomm", FOMM_TINY), ("liveportrait", LP_TINY)):
        graphs = export_graphs(family, checkpoint, engines_dir=engines, log_line=lambda _: None)
        write_repository(graphs, repo, kind="cpu", log_line=lambda _: None)
        families[family] = graphs
    return repo, families


def test_config_pbtxt_is_a_valid_triton_model_config_matching_the_graph(repository):
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo, families = repository
    graphs = families["fomm"]
    name = model_name("fomm_frame_generator", graphs.key)
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    graph = onnx.load(str(repo / name / "1" / "model.onnx"))
    onnx_dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.input}
    assert {t.name: list(t.dims) for t in config.input} == onnx_dims
    assert graph.ir_version == 10  # pinned for ONNX Runtime (backends.export.ONNX_IR_VERSION)
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    names = sorted(p.name for p in repo.iterdir())
    assert len(names) == 3 + 5 and all(n.endswith(graphs.key) or n.endswith(families["liveportrait"].key)
                                       for n in names)


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (it is its own CA)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Server:
    """tests/pytriton_server.py in the PyTriton environment, on fixed ports so that it can come back."""

    def __init__(self, repo: Path, cert: Path, key: Path, workspace: Path) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.args = [str(VENV_PYTHON), str(SERVER), "--repository", str(repo), "--grpc-port", str(self.grpc_port),
                     "--http-port", str(self.http_port), "--token", TOKEN, "--cert", str(cert), "--key", str(key)]
        self.workspace = workspace
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, start_new_session=True)
        ready = threading.Event()

        def read(stream) -> None:
            for line in stream:
                self.log.append(line)
                if line.startswith("READY"):
                    ready.set()

        threading.Thread(target=read, args=(self.process.stdout,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("the PyTriton server did not start:\n" + "".join(self.log[-30:]))

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and the tritonserver it started
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    if not VENV_PYTHON.is_file():
        pytest.skip(f"no PyTriton environment at {VENV} (PyTriton needs numpy < 2, so it has its own): build it with "
                    f"`python tools/install.py --dev`")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(folder)
    instance = Server(repository[0], cert, key, folder)
    instance.start()
    instance.cert = cert
    yield instance
    instance.stop()


def settings_for(server, token: str | None = TOKEN, **overrides) -> TritonSettings:
    fields = {"url": f"localhost:{server.grpc_port}", "token": token, "ca_file": server.cert, "timeout_s": 10.0}
    return TritonSettings(**{**fields, **overrides})


def local_and_remote(server, graphs, name: str):
    remote = TritonRunner(model=model_name(name, graphs.key), settings=settings_for(server),
                          expected_io=graphs.ios[name], name=name)
    local = OnnxRuntimeRunner(onnx_path=graphs.onnx[name], name=name)
    return local, remote


@functools.lru_cache(maxsize=None)
def loaded(family: str):
    if family == "fomm":
        from avatarcam.generators.fomm.export import load_fomm_models

        return load_fomm_models(FOMM_TINY)
    from avatarcam.generators.liveportrait.checkpoint import load_liveportrait

    return load_liveportrait(LP_TINY)


def sample(family: str, name: str, rng):
    if family == "fomm":
        from avatarcam.generators.fomm.export import recipes_for

        return recipes_for(loaded(family))[name].sample_inputs(rng)
    from avatarcam.generators.liveportrait import export as lx

    return lx.sample_inputs(loaded(family), name, rng)


@pytest.mark.parametrize("family", ["fomm", "liveportrait"])
def test_every_graph_on_the_server_matches_the_local_runtime(server, repository, family):
    graphs = repository[1][family]
    rng = np.random.default_rng(3)
    for name in graphs.onnx:
        local, remote = local_and_remote(server, graphs, name)
        with local, remote:
            assert remote.io == graphs.ios[name]  # read from the server's metadata, as the checkpoint declares
            feed = sample(family, name, rng)
            want, got = local.run(feed), remote.run(feed)
            assert remote.request_bytes == sum(a.nbytes for a in feed.values())
            for output in graphs.ios[name].output_names:
                error = float(np.max(np.abs(got[output] - want[output])))
                print(f"remote vs local {name}.{output}: {error:.2e}")
                assert error <= TRITON_REMOTE_BOUND, f"{name}.{output}: {error:.2e}"


def test_fomm_reenactor_over_triton_renders_what_the_local_one_renders(server, repository, tmp_path, portrait_avatar,
                                                                       monkeypatch):
    from avatarcam.generators.fomm.reenactor import FommReenactor, FommSettings
    from avatarcam.motion import MotionSettings
    from avatarcam.types import Frame, Observed

    engines = tmp_path / "engines"
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    remote_settings = TritonSettings.from_env(f"localhost:{server.grpc_port}", ca_file=server.cert, timeout_s=10.0)
    # crop off: FOMM's own demo path, whole frames, no landmarks; the driver turns its head (a flip) after calibration.
    still = Observed(frame=Frame(portrait_avatar.canvas_bgr, 0, 0.0), face=None)
    driver = Observed(frame=Frame(np.ascontiguousarray(portrait_avatar.canvas_bgr[:, ::-1]), 1, 0.04), face=None)
    canvases = []
    for backend, triton in (("onnxruntime", None), ("triton", remote_settings)):
        settings = FommSettings(checkpoint=FOMM_TINY, backend=backend, engines_dir=engines, precision="fp32",
                                crop=False, triton=triton)
        with FommReenactor(settings=settings, motion=MotionSettings(smoothing=0.0)) as reenactor:
            prepared = reenactor.prepare(portrait_avatar)
            neutral = reenactor.neutral_from([still])
            canvas = np.empty((reenactor.canvas_size,) * 2 + (3,), np.uint8)
            timings: dict[str, float] = {}
            canvases.append(reenactor.render(prepared, driver, neutral, 0.04, canvas, timings).copy())
            if backend == "triton":
                assert set(reenactor.runtimes.values()) == {f"triton@localhost:{server.grpc_port}"}
                assert timings[SERVER_TIMING] > 0  # what the status line shows as "server N ms"
            else:
                assert SERVER_TIMING not in timings
    assert np.abs(canvases[0].astype(int) - canvases[1].astype(int)).max() <= 1  # uint8 rounding ties only


def test_wrong_or_missing_token_is_refused_by_triton(server, repository):
    graphs = repository[1]["fomm"]
    name = model_name("fomm_kp_detector", graphs.key)
    for token in ("wrong-token", None):
        runner = TritonRunner(model=name, settings=settings_for(server, token=token))
        with pytest.raises(EngineError, match=f"refused.*token is wrong or missing.*{TOKEN_ENV}"):
            runner.open()
        assert not runner.reconnecting  # an answer, not an outage: no reconnect loop against a wrong token


def test_plain_text_client_cannot_talk_to_the_tls_server(server):
    runner = TritonRunner(model="any", settings=settings_for(server, ca_file=None, url=f"grpc://localhost:"
                                                                                       f"{server.grpc_port}"))
    with pytest.raises(EngineError, match="cannot reach.*plain text"):
        runner.open()


def test_missing_model_names_what_the_server_has(server):
    runner = TritonRunner(model=model_name("fomm_kp_detector", "0" * 16), settings=settings_for(server))
    with pytest.raises(EngineError, match="'fomm_kp_detector-0000000000000000' is not loaded.*export_triton.py"):
        runner.open()


def test_wrong_shapes_are_caught_from_the_servers_metadata(server, repository):
    graphs = repository[1]["fomm"]
    name = "fomm_kp_detector"
    other_size = ModelIO(inputs=(TensorSpec("image", (1, 3, 128, 128), "float32"),),
                         outputs=graphs.ios[name].outputs)
    runner = TritonRunner(model=model_name(name, graphs.key), settings=settings_for(server), expected_io=other_size)
    with pytest.raises(EngineError, match=r"input 'image' is float32 \(1, 3, 256, 256\) but this checkpoint's is "
                                          r"float32 \(1, 3, 128, 128\).*re-export"):
        runner.open()
    with TritonRunner(model=model_name(name, graphs.key), settings=settings_for(server)) as runner:
        with pytest.raises(EngineError, match=r"input 'image' has shape \(1, 3, 128, 128\) but .* expects "
                                              r"\(1, 3, 256, 256\)"):
            runner.run({"image": np.zeros((1, 3, 128, 128), np.float32)})


def test_server_down_then_up_again_reconnects_with_backoff(server, repository):
    graphs = repository[1]["fomm"]
    name = "fomm_kp_detector"
    now = [0.0]
    runner = TritonRunner(model=model_name(name, graphs.key), settings=settings_for(server, timeout_s=3.0),
                          expected_io=graphs.ios[name], clock=lambda: now[0])
    feed = {"image": np.random.default_rng(5).uniform(0, 1, (1, 3, 256, 256)).astype(np.float32)}
    with runner:
        before = {k: v.copy() for k, v in runner.run(feed).items()}
        server.stop()
        with pytest.raises(EngineError, match="cannot reach"):
            runner.run(feed)
        assert runner.reconnecting
        # Within the backoff the runner answers at once from memory: the render thread does not wait on the network.
        with pytest.raises(EngineError, match=r"\[retry 1 in 0\.5 s\]"):
            runner.run(feed)
        now[0] += 0.6
        with pytest.raises(EngineError, match="cannot reach"):  # still down: the next wait doubles
            runner.run(feed)
        with pytest.raises(EngineError, match=r"\[retry 2 in 1\.0 s\]"):
            runner.run(feed)
        server.start()
        now[0] += 1.1
        after = runner.run(feed)
        assert not runner.reconnecting
        for output, value in before.items():
            assert np.array_equal(after[output], value)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
