"""The neural generators on a Triton Inference Server: the runner each graph gets for a backend choice, the
settings from the config and the round trip for the status line (the repository is written by triton_export.py).

Which graphs run where (all of them exist on the server, named `<graph>-<weights key>`):

    fomm          per avatar: fomm_kp_detector (source keypoints), fomm_source_encoder (source features)
                  per frame:  fomm_kp_detector (driver keypoints), fomm_frame_generator
    liveportrait  per avatar: lp_appearance (feature volume), lp_motion (source keypoints)
                  per frame:  lp_motion, lp_stitching, lp_retargeting, lp_warp_generate

Avatar encodings: Triton models are stateless, so the per-avatar outputs (FOMM's source features, LivePortrait's
feature volume) are computed on the server once per avatar, kept by the client and sent again with every frame.
Keeping them on the server would need Triton's sequence batching with implicit state (a stateful model per client),
which the ONNX Runtime and TensorRT backends support only with graphs rewritten around state tensors; the payload
this costs is printed by tools/bench_triton.py and listed in the README.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from avatarcam.errors import ConfigError

log = logging.getLogger(__name__)


def open_runner(backend: str, spec: Any, *, key: str, triton: Any, hardware: Any,
                log_line: Callable[[str], None] = log.info) -> Any:
    """An open runner for one graph: a TritonRunner for model `<spec.name>-<key>` when backend is 'triton' (its
    metadata checked against spec.io), else backends.open_backend's choice. EngineError when it cannot open."""
    if backend != "triton":
        from avatarcam.backends.selection import open_backend

        return open_backend(backend, spec, hardware=hardware, log=log_line)
    from avatarcam.backends.triton_runner import TritonRunner, model_name

    if triton is None:
        raise ConfigError("generator.backend triton needs the server's address: --triton-url host:8001")
    runner = TritonRunner(model=model_name(spec.name, key), settings=triton, expected_io=spec.io, name=spec.name)
    runner.open()
    log_line(f"{spec.name}: using {runner.label} (model {runner.model})")
    return runner


def check_backend(backend: str, triton: Any) -> None:
    """ConfigError unless `backend` is a local runtime choice, or a remote one ('triton') with the server's settings
    (`triton`, a backends.triton_runner.TritonSettings)."""
    from avatarcam.backends.selection import BACKEND_CHOICES, REMOTE_BACKENDS

    choices = (*BACKEND_CHOICES, *REMOTE_BACKENDS)
    if backend not in choices:
        raise ConfigError(f"generator.backend {backend!r} is not one of {', '.join(choices)}")
    if backend in REMOTE_BACKENDS and triton is None:
        raise ConfigError(f"generator.backend {backend} runs the models on a server: give its address with "
                          f"--triton-url host:8001 (generator.triton_url)")


def triton_settings(generator: Any) -> Any:
    """backends.triton_runner.TritonSettings from the config's generator section when its backend is 'triton' (the
    token from $FACEMIMIC_TRITON_TOKEN), else None. ConfigError when the URL is missing or unsafe."""
    if generator.backend != "triton":
        return None
    from avatarcam.backends.triton_runner import TritonSettings

    if not generator.triton_url:
        raise ConfigError("generator.backend triton needs the server's address: --triton-url host:8001 "
                          "(generator.triton_url)")
    ca = None if not generator.triton_ca else Path(generator.triton_ca).expanduser()
    return TritonSettings.from_env(generator.triton_url, ca_file=ca, insecure=generator.triton_insecure,
                                   timeout_s=generator.triton_timeout_s)


SERVER_TIMING = "server_round_trip"
"""Key of the per-frame server round trip (ms) in a render's stage timings; the status line shows it."""


def record_round_trip(runners: Iterable[Any], timings: dict[str, float]) -> None:
    """timings[SERVER_TIMING] = the sum of the last round trips (ms) of the Triton runners among `runners`
    (LockedRunners of one frame's graphs); nothing when none of them is remote."""
    from avatarcam.backends.triton_runner import TritonRunner

    trips = [r.runner.round_trip_ms for r in runners
             if isinstance(r.runner, TritonRunner) and r.runner.round_trip_ms is not None]
    if trips:
        timings[SERVER_TIMING] = float(sum(trips))
