"""Build a TensorRT 10 or 11 engine from an ONNX file: parser errors reported, timing cache persisted, progress shown.

One path for both major versions: the network is always strongly typed, so the engine's precision is the ONNX
graph's. fp16 engines are built from the fp16 graph that avatarcam.backends.onnx_fp16 derives from the export
(float32 inputs and outputs kept). TensorRT 11 removed BuilderFlag.FP16, the other precision flags,
IBuilder.platform_has_fast_fp16 and NetworkDefinitionCreationFlag.EXPLICIT_BATCH, and makes every network strongly
typed (NVIDIA's 10.x -> 11.x migration guide and 11.0.0 release notes); TensorRT 10 has had the STRONGLY_TYPED
creation flag since 10.0. API calls follow the Python bindings (NVIDIA/TensorRT python/src/infer/pyCore.cpp and
parsers/pyOnnx.cpp on release/10.0, release/10.13 and the 11.1 main branch), samples/python/simple_progress_monitor
and Polygraphy's loader usage. Unit-tested against fakes of both APIs (tests/fake_tensorrt.py); never run on a GPU
in this project.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from avatarcam.backends.base import shape_text
from avatarcam.backends.hardware import TENSORRT_INSTALL_HINT
from avatarcam.backends.sidecar import write_bytes_atomic
from avatarcam.errors import EngineError


class StatusLine:
    """One self-overwriting status line on a terminal; on a pipe, at most one line every few seconds."""

    def __init__(self, stream: TextIO | None = None, *, min_interval_s: float = 5.0) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._min_interval_s = min_interval_s
        self._last_print_s = 0.0
        self._width = 0
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._tty:
                padded = text.ljust(self._width)
                self._width = len(text)
                self._stream.write("\r" + padded)
                self._stream.flush()
                return
            now = time.monotonic()
            if now - self._last_print_s >= self._min_interval_s:
                self._last_print_s = now
                self._stream.write(text + "\n")
                self._stream.flush()

    def finish(self) -> None:
        """End the line so later output starts on a fresh one."""
        with self._lock:
            if self._tty and self._width:
                self._stream.write("\n")
                self._stream.flush()
            self._width = 0


def _bar(done: int, total: int, width: int = 10) -> str:
    filled = 0 if total <= 0 else min(width, int(width * done / total))
    return "[" + "=" * filled + "-" * (width - filled) + "]"


def _make_progress_monitor(trt: Any, render: Callable[[str], None]) -> Any:
    """A trt.IProgressMonitor that renders the phase stack as one status line."""

    class _PhaseMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            self._phases: dict[str, list[int]] = {}  # insertion order = nesting order
            self._lock = threading.Lock()  # TensorRT may call from several builder threads
            self.cancelled = False

        def _render(self) -> None:
            parts = [f"{_bar(done, total)} {phase} {done}/{total}" for phase, (done, total) in self._phases.items()]
            render("TensorRT build: " + (" > ".join(parts) if parts else "finishing"))

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self._lock:
                    self._phases[phase_name] = [0, num_steps]
                    self._render()
            except KeyboardInterrupt:
                self.cancelled = True  # only step_complete can stop the build; it will see the flag

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                with self._lock:
                    if phase_name in self._phases:
                        self._phases[phase_name][0] = step + 1  # step counts from 0
                    self._render()
            except KeyboardInterrupt:
                self.cancelled = True
            return not self.cancelled

        def phase_finish(self, phase_name: str) -> None:
            try:
                with self._lock:
                    self._phases.pop(phase_name, None)
                    self._render()
            except KeyboardInterrupt:
                self.cancelled = True

    return _PhaseMonitor()


def _parser_errors(parser: Any) -> list[str]:
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"node {error.node()}"
        if error.node_name():  # node_name/node_operator: in the parser bindings since TensorRT 10.0
            where += f" {error.node_name()!r}"
        if error.node_operator():
            where += f" ({error.node_operator()})"
        lines.append(f"{where}: {error.desc()} [{error.code()}]")
    return lines


SUPPORTED_MAJORS = (10, 11)


def tensorrt_major(version: str) -> int:
    """The major version of a tensorrt.__version__ string ('10.8.0.43' -> 10); EngineError outside 10 and 11."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        major = -1
    if major not in SUPPORTED_MAJORS:
        raise EngineError(
            f"TensorRT {version} is installed but FaceMimic builds engines with TensorRT 10 or 11: "
            f'`python -m pip install "tensorrt>=10,<12" --extra-index-url https://pypi.nvidia.com`'
        )
    return major


def network_flags(trt: Any) -> int:
    """create_network() flags for a strongly typed network on this TensorRT.

    TensorRT 11: 0, since createNetworkV2 makes strongly typed networks by default and weak typing is gone (its
    STRONGLY_TYPED member survives only as a deprecated no-op). TensorRT 10: 1 << STRONGLY_TYPED.
    """
    if tensorrt_major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _load_timing_cache(config: Any, path: Path, log: Callable[[str], None]) -> Any:
    data = b""
    if path.is_file():
        data = path.read_bytes()
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:  # noqa: BLE001 - a cache from another TensorRT build is rejected with a generic error
        log(f"timing cache {path} is not usable by this TensorRT ({exc}); starting an empty one")
        cache = config.create_timing_cache(b"")
    # ignore_mismatch=False: the file name already pins TensorRT version and GPU; a mismatch means a damaged file.
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engine(
    *,
    onnx_path: Path,
    plan_path: Path,
    precision: str,
    input_shapes: Mapping[str, tuple[int, ...]],
    timing_cache: Path,
    workspace_bytes: int,
    log: Callable[[str], None],
    progress: Callable[[str], None] | None = None,
) -> None:
    """Parse the graph of onnx_path at precision, build for exactly input_shapes, write plan_path, update the cache.

    onnx_path is an exported fp32 model with its sidecar; for precision 'fp16' the network is parsed from its fp16
    graph (NAME.fp16.onnx, converted on first use). No precision flag is set on any TensorRT version.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError(
            f"building {plan_path.name} needs TensorRT but it is not installed: {TENSORRT_INSTALL_HINT}"
        ) from exc
    if precision not in ("fp16", "fp32"):
        raise EngineError(f"precision {precision!r} is not supported: use 'fp16' or 'fp32'")
    flags = network_flags(trt)
    graph_path = Path(onnx_path)
    if precision == "fp16":
        from avatarcam.backends.export import load_exported
        from avatarcam.backends.onnx_fp16 import ensure_fp16_onnx

        graph_path = ensure_fp16_onnx(load_exported(onnx_path))
        log(f"building {plan_path.name} from the fp16 graph {graph_path.name} (float32 inputs and outputs)")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so models with external weight files resolve them relative to the ONNX.
    if not parser.parse_from_file(str(graph_path)) or parser.num_errors:
        details = "; ".join(_parser_errors(parser)) or "no details reported"
        raise EngineError(
            f"TensorRT {trt.__version__} could not parse {graph_path}: {details}: re-export it with "
            f"`python tools/export_onnx.py --model {Path(onnx_path).stem}`, replace the unsupported ops"
            + (", or build with precision fp32" if precision == "fp16" else "")
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))

    profile = None
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = tuple(tensor.shape)
        if tensor.name not in input_shapes:
            raise EngineError(
                f"{onnx_path.name} has input {tensor.name!r} but no build shape was given for it (given: "
                f"{sorted(input_shapes)}): pass input_shapes with every input"
            )
        want = tuple(int(d) for d in input_shapes[tensor.name])
        if len(dims) != len(want) or any(d >= 0 and d != w for d, w in zip(dims, want)):
            raise EngineError(
                f"build shape {shape_text(want)} for input {tensor.name!r} does not fit the ONNX shape "
                f"{shape_text([d if d >= 0 else None for d in dims])}: pass a shape that matches the model"
            )
        if any(d < 0 for d in dims):
            if profile is None:
                profile = builder.create_optimization_profile()
            # min = opt = max: one fixed shape per engine keeps runs allocation-free and the cache key exact.
            profile.set_shape(tensor.name, want, want, want)
    if profile is not None:
        config.add_optimization_profile(profile)

    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    _load_timing_cache(config, timing_cache, log)

    render = progress or StatusLine()
    monitor = _make_progress_monitor(trt, render)  # IProgressMonitor: in the bindings since 10.0, still in 11
    config.progress_monitor = monitor
    try:
        serialized = builder.build_serialized_network(network, config)  # releases the GIL while it builds
    finally:
        if isinstance(render, StatusLine):
            render.finish()
    if serialized is None:
        if monitor.cancelled:
            raise EngineError(f"building {plan_path.name} was cancelled: run `python tools/build_engines.py` again")
        raise EngineError(
            f"TensorRT {trt.__version__} failed to build {plan_path.name} from {onnx_path.name} (see the TensorRT "
            f"errors logged above): try `--precision fp32` or a larger workspace"
        )
    write_bytes_atomic(plan_path, memoryview(serialized))
    # Save the (now larger) timing cache so the next build on this GPU skips the measured tactics.
    write_bytes_atomic(timing_cache, memoryview(config.get_timing_cache().serialize()))
