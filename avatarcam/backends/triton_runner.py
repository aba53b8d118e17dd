"""Triton Inference Server runner: one model on a remote server over gRPC (tritonclient), behind the Runner lifecycle.

open() reaches the server, checks the model is loaded and reads its inputs and outputs from the server's model
metadata (and, when the caller knows what the checkpoint needs, compares them); run() sends one request. Triton
models are stateless, so everything a per-frame graph needs (the avatar's encoding included) travels with every
request; see the README's "Remote GPU (Triton)" section for payload sizes.

Security: TLS is on for every host but the loopback one, and a token travels as the request header TOKEN_HEADER
(Triton checks it itself with `--grpc-restricted-protocol=...:triton-access-token=TOKEN`, or a reverse proxy does).
A non-loopback URL without TLS or without a token is refused unless `insecure` is set.

Failures: a request that cannot reach the server raises EngineError at once and starts an exponential backoff
(RECONNECT_FIRST_S doubling to RECONNECT_MAX_S); until the backoff ends run() raises without touching the network, so
the render thread never waits on a dead server and the outputs keep showing the last good frame. The next attempt
opens a new channel (so gRPC's own reconnect backoff, up to two minutes, never delays it) and re-reads the metadata.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarcam.backends.base import ModelIO, Runner, TensorSpec, shape_text
from avatarcam.errors import ConfigError, EngineError, EngineUnavailable

INSTALL_HINT = "install it with `pip install \"tritonclient[grpc]\"` (or `pip install -e .[triton]`)"
TOKEN_KEY = "triton-access-token"
"""The key of the token in Triton's `--grpc-restricted-protocol=<groups>:triton-access-token=<token>` (PyTriton's)."""
TOKEN_HEADER = f"triton-grpc-protocol-{TOKEN_KEY}"
"""gRPC metadata key the token travels in: Triton prefixes restricted-protocol keys with 'triton-grpc-protocol-'."""
TOKEN_ENV = "FACEMIMIC_TRITON_TOKEN"
"""Environment variable the token is read from (never a command-line flag: other users can read those in `ps`)."""
DEFAULT_TIMEOUT_S = 2.0
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 8.0
_DATATYPES = {
    "FP32": "float32", "FP16": "float16", "FP64": "float64", "INT64": "int64", "INT32": "int32", "INT8": "int8",
    "UINT8": "uint8", "BOOL": "bool",
}
# Status codes that mean "the server is not there (now)": worth a reconnect with backoff. Others (a refused token,
# a wrong shape) are answers from a live server and are raised as they are.
_CONNECTION_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_url(url: str) -> tuple[str, str, int]:
    """'grpcs://host:8001' -> ('grpcs', 'host', 8001); no scheme gives ''. ConfigError names a malformed URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if scheme not in ("", "grpc", "grpcs"):
        raise ConfigError(f"Triton URL {url!r} has scheme {scheme!r}: use host:port, grpc://host:port or "
                          f"grpcs://host:port (gRPC; Triton's default gRPC port is 8001)")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"Triton URL {url!r} is not host:port (e.g. gpu-box:8001): give the gRPC address")
    return scheme, host, int(port)


@dataclass(frozen=True)
class TritonSettings:
    """Where the Triton server is and how to talk to it safely."""

    url: str
    """host:port of the gRPC endpoint (grpcs:// forces TLS, grpc:// asks for plain text)."""
    token: str | None = None
    """Sent as the TOKEN_HEADER request header; from $FACEMIMIC_TRITON_TOKEN (see from_env)."""
    ca_file: Path | None = None
    """PEM root certificate(s) that signed the server's certificate; None uses the system's roots."""
    insecure: bool = False
    """Allow plain text and no token to a non-loopback host (a trusted LAN or an SSH tunnel only)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Longest wait for one request (seconds); a frame waits at most this long on a server that went away."""

    def __post_init__(self) -> None:
        scheme, host, _ = split_url(self.url)
        if self.timeout_s <= 0:
            raise ConfigError(f"Triton timeout {self.timeout_s} s must be > 0")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ConfigError(f"Triton CA file {self.ca_file} does not exist: give the PEM file that signed the "
                              f"server's certificate (--triton-ca)")
        if scheme == "grpc" and self.ca_file is not None:
            raise ConfigError(f"Triton URL {self.url!r} asks for plain text but a CA file is set: use grpcs:// or "
                              f"drop --triton-ca")
        if _is_loopback(host) or self.insecure:
            return
        if not self.tls:
            raise ConfigError(
                f"Triton URL {self.url!r} is plain text to another machine: anyone on the path could read the faces "
                f"and send frames: use TLS (host:port or grpcs://host:port, with --triton-ca if the certificate is "
                f"self-signed), or pass --triton-insecure for a trusted LAN or an SSH tunnel"
            )
        if not self.token:
            raise ConfigError(
                f"no token for the Triton server at {self.url!r}: set ${TOKEN_ENV} to the token the server (or its "
                f"proxy) checks, or pass --triton-insecure for a server with no token on a trusted LAN"
            )

    @classmethod
    def from_env(cls, url: str, *, ca_file: Path | str | None = None, insecure: bool = False,
                 timeout_s: float = DEFAULT_TIMEOUT_S, environ: Mapping[str, str] | None = None) -> TritonSettings:
        """Settings with the token from $FACEMIMIC_TRITON_TOKEN (empty or unset: no token)."""
        environ = os.environ if environ is None else environ
        token = environ.get(TOKEN_ENV, "").strip() or None
        return cls(url=url, token=token, ca_file=None if ca_file is None else Path(ca_file), insecure=insecure,
                   timeout_s=timeout_s)

    @property
    def target(self) -> str:
        """host:port as gRPC dials it."""
        _, host, port = split_url(self.url)
        return f"{host}:{port}"

    @property
    def tls(self) -> bool:
        """True unless the URL says grpc://, or it is a loopback host:port without a CA file (or --triton-insecure)."""
        scheme, host, _ = split_url(self.url)
        if scheme:
            return scheme == "grpcs"
        return self.ca_file is not None or not (_is_loopback(host) or self.insecure)

    @property
    def headers(self) -> dict[str, str]:
        """Request metadata for every call: the token, when there is one."""
        return {TOKEN_HEADER: self.token} if self.token else {}


def model_name(name: str, key: str) -> str:
    """Triton model name of one graph of one checkpoint: 'fomm_kp_detector-0123456789abcdef' (weights key)."""
    return f"{name}-{key}"


def _status(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    text = str(status() if callable(status) else "") or ""
    return text.removeprefix("StatusCode.")


def _first_line(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    text = str(message() if callable(message) else exc) or repr(exc)
    return text.strip().splitlines()[0] if text.strip() else repr(exc)


class TritonRunner(Runner):
    """Runs one model on a Triton Inference Server over gRPC; inputs checked against the server's metadata."""

    runtime = "triton"

    def __init__(self, *, model: str, settings: TritonSettings, expected_io: ModelIO | None = None,
                 name: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name=name or model)
        self._model = model
        self._settings = settings
        self._expected_io = expected_io
        self._clock = clock
        self._client: Any = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_problem = ""
        self.round_trip_ms: float | None = None
        """Milliseconds of the last successful request (serialise, send, infer, receive, deserialise); None before."""
        self.request_bytes = 0
        """Bytes of tensor data in the last request (inputs); outputs are in response_bytes."""
        self.response_bytes = 0

    @property
    def device(self) -> str:
        """'remote': the device is the server's."""
        return "remote"

    @property
    def label(self) -> str:
        """'triton@host:port' (a round-trip time, when one was measured, is in round_trip_ms)."""
        return f"triton@{self._settings.target}"

    @property
    def model(self) -> str:
        """The model's name on the server."""
        return self._model

    @property
    def reconnecting(self) -> bool:
        """True while the server is unreachable and the runner waits to try again."""
        return self._failures > 0

    # -- lifecycle

    def _connect(self) -> Any:
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as exc:
            raise EngineError(f"tritonclient is not installed, so --backend triton cannot run: {INSTALL_HINT}") \
                from exc
        root = None if self._settings.ca_file is None else str(self._settings.ca_file)  # tritonclient reads the file
        return grpcclient.InferenceServerClient(url=self._settings.target, ssl=self._settings.tls,
                                                root_certificates=root)

    def _explain(self, exc: Exception, doing: str) -> str:
        """One sentence on a failed call: what, the server's words, and the fix."""
        code, words = _status(exc), _first_line(exc)
        where = f"the Triton server at {self._settings.url}"
        if "restricted" in words.lower() or code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return (f"{where} refused the request to {doing} ({words}): the token is wrong or missing; set "
                    f"${TOKEN_ENV} to the token the server checks")
        if code == "UNAVAILABLE" or "failed to connect" in words.lower():
            tls = "TLS" if self._settings.tls else "plain text"
            return (f"cannot reach {where} to {doing} ({words}): start tritonserver there, check the host, port and "
                    f"firewall, and that it speaks {tls} as this client does (--triton-ca / grpcs:// / grpc://)")
        if code == "DEADLINE_EXCEEDED":
            return (f"{where} did not answer within {self._settings.timeout_s:g} s to {doing}: it is overloaded or "
                    f"the network is slow; raise the timeout or use a closer server")
        if code == "UNIMPLEMENTED" or "http2 header with status" in words:
            return (f"{where} failed to {doing}: {code or type(exc).__name__}: {words}: whatever answers there is not "
                    f"Triton's gRPC endpoint (tritonserver serves gRPC on 8001 by default; 8000 is its HTTP port): "
                    f"check the host and port")
        return f"{where} failed to {doing}: {code or type(exc).__name__}: {words}"

    def _call(self, doing: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return function(*args, headers=self._settings.headers, client_timeout=self._settings.timeout_s, **kwargs)
        except InferenceServerException as exc:
            if _status(exc) in _CONNECTION_CODES and "restricted" not in _first_line(exc).lower():
                self._back_off(self._explain(exc, doing))
                raise EngineUnavailable(self._explain(exc, doing)) from exc
            raise EngineError(self._explain(exc, doing)) from exc

    def _served_io(self) -> ModelIO:
        client = self._client
        doing = f"check model {self._model!r}"
        if not self._call(doing, client.is_server_live):
            raise EngineError(f"the Triton server at {self._settings.url} answers but is not live: see its log")
        if not self._call(doing, client.is_model_ready, self._model):
            index = self._call("list its models", client.get_model_repository_index, as_json=True)
            served = sorted({m.get("name", "?") for m in index.get("models", [])})
            raise EngineError(
                f"model {self._model!r} is not loaded on the Triton server at {self._settings.url} (it serves "
                f"{served or 'no models'}): on the server, write it with `python tools/export_triton.py` for this "
                f"checkpoint into the model repository and restart tritonserver (or load it)"
            )
        metadata = self._call(doing, client.get_model_metadata, self._model, as_json=True)
        io = ModelIO(inputs=tuple(self._spec(t) for t in metadata.get("inputs", [])),
                     outputs=tuple(self._spec(t) for t in metadata.get("outputs", [])))
        if self._expected_io is not None:
            self._compare(io, self._expected_io)
        return io

    def _spec(self, tensor: Mapping[str, Any]) -> TensorSpec:
        datatype = str(tensor.get("datatype", ""))
        if datatype not in _DATATYPES:
            raise EngineError(f"model {self._model!r} on {self._settings.url} has tensor {tensor.get('name')!r} of "
                              f"type {datatype}; this client handles {sorted(_DATATYPES)}")
        shape = tuple(int(d) for d in tensor.get("shape", []))
        return TensorSpec(name=str(tensor["name"]), shape=shape, dtype=_DATATYPES[datatype])

    def _compare(self, served: ModelIO, expected: ModelIO) -> None:
        """EngineError naming the first tensor whose name, shape or dtype differs from what the client will send."""
        for kind, have, want in (("input", served.inputs, expected.inputs),
                                 ("output", served.outputs, expected.outputs)):
            have_by_name = {s.name: s for s in have}
            for spec in want:
                got = have_by_name.get(spec.name)
                if got is None:
                    problem = f"has no {kind} {spec.name!r} (it has {sorted(have_by_name)})"
                elif got.shape != spec.shape or got.dtype != spec.dtype:
                    problem = (f"{kind} {spec.name!r} is {got.dtype} {shape_text(got.shape)} but this checkpoint's "
                               f"is {spec.dtype} {shape_text(spec.shape)}")
                else:
                    continue
                raise EngineError(
                    f"model {self._model!r} on the Triton server at {self._settings.url} {problem}: the server holds "
                    f"another export under this name; re-export it with `python tools/export_triton.py` from the "
                    f"same checkpoint and settings (size) as this client"
                )

    def _open(self) -> ModelIO:
        self._client = self._connect()
        try:
            return self._served_io()
        except BaseException:
            self._drop_client()
            raise

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a channel to a dead server may fail to close; it is gone either way
                pass

    def _close(self) -> None:
        self._drop_client()

    # -- per request

    def _back_off(self, problem: str) -> None:
        self._failures += 1
        delay = min(RECONNECT_FIRST_S * 2 ** (self._failures - 1), RECONNECT_MAX_S)
        self._retry_at = self._clock() + delay
        self._last_problem = problem
        self._drop_client()  # the next attempt dials afresh, outside gRPC's own (slower) reconnect schedule

    def _ensure_connected(self) -> None:
        if self._client is not None:
            return
        wait_s = self._retry_at - self._clock()
        if wait_s > 0:
            raise EngineUnavailable(f"{self._last_problem} [retry {self._failures} in {wait_s:.1f} s]")
        self._client = self._connect()
        served = self._served_io()  # the server may have come back with other models
        if served != self.io:
            raise EngineError(f"model {self._model!r} changed on the Triton server at {self._settings.url} while "
                              f"this client ran: restart FaceMimic")

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient

        self._ensure_connected()
        started = time.perf_counter()
        requests = []
        for spec in self.io.inputs:
            item = grpcclient.InferInput(spec.name, list(inputs[spec.name].shape), _triton_type(spec.dtype))
            item.set_data_from_numpy(np.ascontiguousarray(inputs[spec.name]))
            requests.append(item)
        wanted = [grpcclient.InferRequestedOutput(name) for name in self.io.output_names]
        result = self._call(f"run model {self._model!r}", self._client.infer, self._model, requests, outputs=wanted)
        outputs = {name: result.as_numpy(name) for name in self.io.output_names}
        self.round_trip_ms = (time.perf_counter() - started) * 1000.0
        self.request_bytes = sum(int(inputs[s.name].nbytes) for s in self.io.inputs)
        self.response_bytes = sum(int(a.nbytes) for a in outputs.values())
        self._failures = 0
        return outputs


def _triton_type(dtype: str) -> str:
    for triton, numpy_name in _DATATYPES.items():
        if numpy_name == dtype:
            return triton
    raise EngineError(f"dtype {dtype} has no Triton type: this client sends {sorted(_DATATYPES.values())}")
