"""TensorRT engine cache: engines/NAME.<key16>.plan + sidecar JSON, keyed by everything the engine depends on."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarcam.backends.base import shape_text
from avatarcam.backends.export import load_exported
from avatarcam.backends.hardware import TENSORRT_INSTALL_HINT, HardwareFacts
from avatarcam.backends.onnx_fp16 import FP16_CONVERTER
from avatarcam.backends.sidecar import read_sidecar, sha256_file, sidecar_path, write_sidecar
from avatarcam.errors import EngineError, ModelFileError

PRECISIONS = ("fp16", "fp32")
ENGINE_SIDECAR_FORMAT = "facemimic-trt-engine/2"  # /2: the key records the network recipe
DEFAULT_WORKSPACE_BYTES = 1 << 30
KEY_CHARS = 16

_LOG = logging.getLogger("avatarcam.backends")


def network_recipe(precision: str) -> str:
    """How the TensorRT network of an engine at this precision is made (part of its cache key).

    Every engine is built from a strongly typed network, on TensorRT 10 and 11 alike, so its precision is the
    ONNX graph's: fp32 engines parse the exported graph, fp16 engines the graph that onnx_fp16 derives from it.
    """
    if precision == "fp16":
        return f"strongly typed, fp16 ONNX graph ({FP16_CONVERTER})"
    return "strongly typed, fp32 ONNX graph"


def build_fix(name: str, precision: str) -> str:
    """The command that builds one engine, for error messages."""
    return f"build it with `python tools/build_engines.py --model {name} --precision {precision}`"


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; its sha256 names the plan file."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]
    """(input name, shape) pairs sorted by name; engines are built for exactly these shapes."""
    network: str
    """network_recipe(precision): how the network was made from the ONNX file (typing, fp16 conversion version)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "onnx_sha256": self.onnx_sha256,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": list(self.compute_capability),
            "precision": self.precision,
            "input_shapes": {name: list(shape) for name, shape in self.input_shapes},
            "network": self.network,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineKey:
        """The inverse of to_json()."""
        major, minor = data["compute_capability"]
        return cls(
            onnx_sha256=str(data["onnx_sha256"]),
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=(int(major), int(minor)),
            precision=str(data["precision"]),
            input_shapes=tuple(sorted((str(n), tuple(int(d) for d in s)) for n, s in data["input_shapes"].items())),
            network=str(data["network"]),
        )

    def digest(self) -> str:
        """Hex sha256 of the canonical JSON of every component."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def differences(self, other: EngineKey) -> list[str]:
        """What changed from other (an engine's recorded key) to self (what this machine needs), for messages."""
        changes = []
        if other.tensorrt_version != self.tensorrt_version:
            changes.append(f"TensorRT {other.tensorrt_version} but {self.tensorrt_version} is installed")
        if (other.gpu_name, other.compute_capability) != (self.gpu_name, self.compute_capability):
            changes.append(
                f"GPU {other.gpu_name} (sm_{''.join(map(str, other.compute_capability))}) but this machine has "
                f"{self.gpu_name} (sm_{''.join(map(str, self.compute_capability))})"
            )
        if other.precision != self.precision:
            changes.append(f"precision {other.precision} but {self.precision} was requested")
        if other.onnx_sha256 != self.onnx_sha256:
            changes.append(
                f"an ONNX file with sha256 {other.onnx_sha256[:12]}... but it is now {self.onnx_sha256[:12]}..."
            )
        if other.input_shapes != self.input_shapes:
            had = ", ".join(f"{n}{shape_text(s)}" for n, s in other.input_shapes)
            want = ", ".join(f"{n}{shape_text(s)}" for n, s in self.input_shapes)
            changes.append(f"input shapes {had} but {want} are needed")
        if other.network != self.network:
            changes.append(f"a network made as {other.network!r} but this version makes {self.network!r}")
        return changes


def _require_gpu_facts(hardware: HardwareFacts, what: str) -> tuple[str, str, tuple[int, int]]:
    if hardware.tensorrt_version is None:
        raise EngineError(f"{what} needs TensorRT but it is not installed: {TENSORRT_INSTALL_HINT}")
    if not hardware.cuda_available or hardware.gpu_name is None or hardware.compute_capability is None:
        raise EngineError(
            f"{what} needs an NVIDIA CUDA GPU but none was found (TensorRT {hardware.tensorrt_version} is installed): "
            f"check `nvidia-smi`, or use backend 'onnxruntime' or 'torch' on this machine"
        )
    return hardware.tensorrt_version, hardware.gpu_name, hardware.compute_capability


def engine_key(
    *,
    onnx_sha256: str,
    precision: str,
    hardware: HardwareFacts,
    input_shapes: Mapping[str, tuple[int, ...]],
) -> EngineKey:
    """The cache key of an engine built from that ONNX file, at that precision, on this hardware, for those shapes."""
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not supported: use one of {list(PRECISIONS)}")
    trt_version, gpu_name, capability = _require_gpu_facts(hardware, "a TensorRT engine")
    return EngineKey(
        onnx_sha256=onnx_sha256,
        tensorrt_version=trt_version,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision=precision,
        input_shapes=tuple(sorted((n, tuple(int(d) for d in s)) for n, s in input_shapes.items())),
        network=network_recipe(precision),
    )


def engine_path(*, name: str, key: EngineKey, engines_dir: Path) -> Path:
    """engines/NAME.<first 16 hex of the key>.plan."""
    return Path(engines_dir) / f"{name}.{key.digest()[:KEY_CHARS]}.plan"


def write_engine_sidecar(plan_path: Path, key: EngineKey, *, build_seconds: float | None = None) -> None:
    """Record the key and the plan's own hash beside a freshly built plan."""
    write_sidecar(
        sidecar_path(plan_path),
        {
            "format": ENGINE_SIDECAR_FORMAT,
            "plan_file": Path(plan_path).name,
            "plan_sha256": sha256_file(plan_path),
            "key_sha256": key.digest(),
            "key": key.to_json(),
            "build_seconds": None if build_seconds is None else round(build_seconds, 1),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def read_engine_key(plan_path: Path, *, fix: str) -> EngineKey:
    """The key recorded in a plan's sidecar; ModelFileError ending in fix when it is missing or garbled."""
    data = read_sidecar(sidecar_path(plan_path), fix=fix)
    if data.get("format") != ENGINE_SIDECAR_FORMAT:
        raise ModelFileError(
            f"{sidecar_path(plan_path)} has format {data.get('format')!r} but {ENGINE_SIDECAR_FORMAT!r} was "
            f"expected: {fix}"
        )
    try:
        return EngineKey.from_json(data["key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{sidecar_path(plan_path)} lacks or garbles key field {exc}: {fix}") from exc


def check_engine(plan_path: Path, key: EngineKey, *, fix: str) -> None:
    """Raise ModelFileError (ending in fix) unless plan_path exists, its sidecar records key and its bytes match."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ModelFileError(f"{plan_path} does not exist: {fix}")
    recorded = read_engine_key(plan_path, fix=fix)
    changes = key.differences(recorded)
    if changes:
        raise ModelFileError(f"{plan_path} was built for {'; '.join(changes)}: {fix}")
    data = read_sidecar(sidecar_path(plan_path), fix=fix)
    actual = sha256_file(plan_path)
    if data.get("plan_sha256") != actual:
        raise ModelFileError(
            f"{plan_path} is damaged or was replaced: its sha256 is {actual[:12]}... but its sidecar says "
            f"{str(data.get('plan_sha256'))[:12]}...: {fix}"
        )


def stale_engines(*, name: str, key: EngineKey, engines_dir: Path) -> dict[Path, list[str]]:
    """Plans of the same model, precision and shapes that no longer fit (other TensorRT, GPU or ONNX), with why."""
    pattern = re.compile(rf"{re.escape(name)}\.[0-9a-f]{{{KEY_CHARS}}}\.plan")
    current = engine_path(name=name, key=key, engines_dir=engines_dir)
    found: dict[Path, list[str]] = {}
    for plan in sorted(Path(engines_dir).glob(f"{name}.*.plan")):
        if plan == current or not pattern.fullmatch(plan.name):
            continue
        try:
            recorded = read_engine_key(plan, fix="")
        except ModelFileError:
            found[plan] = ["an unreadable sidecar"]
            continue
        # Another precision or shape is a sibling variant the user may switch back to, not a stale engine.
        if (recorded.precision, recorded.input_shapes) == (key.precision, key.input_shapes):
            found[plan] = key.differences(recorded) or ["a different cache key"]
    return found


def timing_cache_path(*, hardware: HardwareFacts, engines_dir: Path) -> Path:
    """One timing cache per TensorRT version and GPU, since TensorRT rejects caches from other ones."""
    trt_version, gpu_name, capability = _require_gpu_facts(hardware, "a TensorRT timing cache")
    gpu_slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return Path(engines_dir) / f"timing-trt{trt_version}-{gpu_slug}-sm{capability[0]}{capability[1]}.cache"


def ensure_engine(
    onnx_path: Path | str,
    precision: str,
    hardware: HardwareFacts,
    log: Callable[[str], None] = _LOG.info,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    engines_dir: Path | str | None = None,
    build: bool = True,
    force: bool = False,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return the plan for onnx_path on this GPU, building it (with a visible message) when missing or stale."""
    onnx_path = Path(onnx_path)
    engines_dir = onnx_path.parent if engines_dir is None else Path(engines_dir)
    name = onnx_path.stem
    exported = load_exported(onnx_path)  # the ONNX file must match its own sidecar before an engine is built from it
    shapes = dict(exported.example_shapes if input_shapes is None else input_shapes)
    key = engine_key(onnx_sha256=exported.onnx_sha256, precision=precision, hardware=hardware, input_shapes=shapes)
    plan = engine_path(name=name, key=key, engines_dir=engines_dir)
    fix = build_fix(name, precision)
    reason = "no engine was built on this machine yet"
    if plan.exists() and not force:
        try:
            check_engine(plan, key, fix=fix)
            return plan
        except ModelFileError as exc:
            reason = str(exc).removesuffix(f": {fix}")
            log(f"{reason}: rebuilding it")
    elif force:
        reason = "a rebuild was forced"
    for stale, changes in stale_engines(name=name, key=key, engines_dir=engines_dir).items():
        log(f"{stale} was built for {'; '.join(changes)}: building a new engine (the old file can be deleted)")
        reason = f"{stale.name} was built for {'; '.join(changes)}"
    if not build:
        raise EngineError(f"no usable TensorRT engine for {name!r} ({reason}): {fix}")
    log(
        f"Building TensorRT engine for {name!r} ({precision}, {key.gpu_name}, TensorRT {key.tensorrt_version}) "
        f"-> {plan}; first start on this GPU, this can take a few minutes..."
    )
    from avatarcam.backends.tensorrt_builder import build_engine

    started = time.perf_counter()
    build_engine(
        onnx_path=onnx_path,
        plan_path=plan,
        precision=precision,
        input_shapes=shapes,
        timing_cache=timing_cache_path(hardware=hardware, engines_dir=engines_dir),
        workspace_bytes=workspace_bytes,
        log=log,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    write_engine_sidecar(plan, key, build_seconds=seconds)
    log(f"Built {plan} in {seconds:.0f} s")
    return plan
