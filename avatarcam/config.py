"""config.yaml + command-line overrides -> frozen dataclasses, one section per stage.

Every key has a documented type, default and allowed values. Unknown keys and bad values are errors that name
the key, the value seen and what is allowed; nothing is silently reset.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatarcam.errors import ConfigError
from avatarcam.generators import GENERATORS


def _key(default: Any, doc: str, *, choices: tuple | None = None, low: float | None = None,
         high: float | None = None, factory=None):
    meta = {"doc": doc, "choices": choices, "low": low, "high": high}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CaptureConfig:
    """Where the driving video comes from."""

    source: str = _key("0", "camera index (0, 1, ...), a video file path, or a URL (rtsp://, http://)")
    width: int = _key(1280, "requested camera width in pixels (the camera may choose another)", low=64, high=7680)
    height: int = _key(720, "requested camera height in pixels", low=48, high=4320)
    fps: float = _key(30.0, "requested camera frame rate", low=1, high=240)
    mirror: bool = _key(True, "flip the driving video left-right, like a mirror (cameras only)")
    pace: bool = _key(True, "video files: play at the file's own frame rate (false: as fast as possible)")
    loop: bool = _key(True, "video files: start again at the end while a preview or virtual camera is open "
                      "(with neither, a file plays once)")
    retry_s: float = _key(1.0, "first wait before reopening a camera that failed; doubles, up to 1 s between tries",
                          low=0.05, high=60)
    wait_s: float = _key(30.0, "recording only (no display, no virtual camera): give up on a camera or URL that "
                         "delivers no frame for this many seconds, finishing the recording", low=1, high=86400)


@dataclass(frozen=True)
class LandmarksConfig:
    """The MediaPipe Face Landmarker."""

    model_path: str = _key("engines/face_landmarker.task", "the face_landmarker.task model (relative to the "
                           "project folder); `python tools/install.py --models` fetches and verifies it")
    min_detection_confidence: float = _key(0.5, "how sure the detector must be to accept a face", low=0.05,
                                           high=0.99)
    min_tracking_confidence: float = _key(0.5, "how sure tracking must be to keep a face", low=0.05, high=0.99)


@dataclass(frozen=True)
class CalibrationConfig:
    """Neutral-pose calibration."""

    window_s: float = _key(0.3, "seconds of frames averaged into the neutral pose (cameras; video files use their "
                           "first frame)", low=0.0, high=5.0)
    strict: bool = _key(True, "refuse to calibrate while the driver blinks or has the mouth open (cameras)")


@dataclass(frozen=True)
class IntensityConfig:
    """Per-region expression gain."""

    mouth: float = _key(1.0, "mouth and jaw", low=0.0, high=2.0)
    eyes: float = _key(1.0, "eyelids (blinks, squints)", low=0.0, high=2.0)
    brows: float = _key(1.0, "eyebrows", low=0.0, high=2.0)
    face: float = _key(1.0, "cheeks, nose and the rest of the face", low=0.0, high=2.0)


@dataclass(frozen=True)
class MotionConfig:
    """Motion transfer from the driver to the avatar."""

    intensity: IntensityConfig = _key(None, "per-region expression gain, 0..2", factory=IntensityConfig)
    head_rotation: float = _key(1.0, "gain on head turns, nods and tilts", low=0.0, high=2.0)
    head_translation: float = _key(1.0, "gain on head movement across the frame", low=0.0, high=2.0)
    scale_lock: bool = _key(False, "ignore leaning towards or away from the camera (no head-size pumping)")
    smoothing: float = _key(0.35, "temporal smoothing, 0 (raw, most responsive) .. 1 (smoothest)", low=0.0,
                            high=1.0)
    lost_face_hold_s: float = _key(0.5, "seconds the last pose is held when the face is lost", low=0.0, high=10.0)
    lost_face_ease_s: float = _key(0.8, "seconds then taken to ease back to neutral", low=0.0, high=10.0)


@dataclass(frozen=True)
class GeneratorConfig:
    """Which generator animates the avatar, and its quality settings."""

    model: str = _key("mesh", "; ".join(f"{n}: {f.summary}" for n, f in GENERATORS.items()), choices=tuple(GENERATORS))
    canvas_size: int = _key(512, "side of the square avatar canvas in pixels", choices=(256, 384, 512, 768, 1024))
    grid_size: int = _key(128, "mesh: resolution of the motion field (higher follows small details better; "
                          "capped at canvas_size / 4)",
                          choices=(64, 96, 128, 160, 192))
    mouth_interior: bool = _key(True, "mesh: draw teeth and a mouth cavity when the mouth opens")
    checkpoint: str | None = _key(None, "fomm: path to vox-adv-cpk.pth.tar or vox-cpk.pth.tar; liveportrait: the "
                                  "weights folder (pretrained_weights/liveportrait)")
    backend: str = _key("auto", "inference runtime for model-based generators (triton: on a Triton Inference Server, "
                        "see triton_url)", choices=("auto", "tensorrt", "onnxruntime", "torch", "triton"))
    crop: bool = _key(True, "fomm, liveportrait: crop the driver's face from the frame (false: use frames as they are)")
    fomm_size: int | None = _key(None, "fomm: side of the model's square input in pixels; null: fomm_config's "
                                 "frame_shape, else 256 (what FOMM's demo and Avatarify use for every checkpoint)",
                                 low=32, high=2048)
    fomm_precision: str = _key("auto", "fomm: frame generator precision on CPU: fp32 is the exact port; bf16 runs "
                               "its convolutions in bfloat16 (about 50 dB PSNR to fp32, CPUs with native bf16 only); "
                               "int8 is bf16 with an 8-bit bottleneck (about 45 dB, bf16 + VNNI CPUs); "
                               "auto: int8, else bf16, where native, else fp32",
                               choices=("auto", "fp32", "bf16", "int8"))
    fomm_config: str | None = _key(None, "fomm: FOMM's own YAML config (e.g. first-order-model/config/"
                                   "vox-adv-256.yaml): model_params and frame_shape; null: inferred from the "
                                   "checkpoint")
    swap_max_faces: int = _key(4, "swap: most faces in the picture that get the avatar's face (MediaPipe's "
                               "num_faces; each extra face found costs landmark time)", low=1, high=8)
    swap_eyes_mouth: str = _key("user", "swap: whose eyes and mouth interior show: user (yours, through the "
                                "avatar's eye and lip openings: gaze and speech read naturally) or avatar",
                                choices=("user", "avatar"))
    swap_colour_time_s: float = _key(0.3, "swap: seconds over which the skin-colour match to your lighting is "
                                     "smoothed (0: every frame on its own, may flicker)", low=0.0, high=5.0)
    swap_occlusion: bool = _key(True, "swap: fade the avatar's face out where something (a hand) covers yours, "
                                "judged against a slowly learnt model of your face's look")
    triton_url: str | None = _key(None, "backend triton: the server's gRPC address, host:port (TLS unless the host is "
                                  "this machine; token from $FACEMIMIC_TRITON_TOKEN)")
    triton_ca: str | None = _key(None, "backend triton: PEM certificate that signed the server's (self-signed "
                                 "setups); null: the system's roots")
    triton_insecure: bool = _key(False, "backend triton: allow plain text and no token to another machine (trusted "
                                 "LAN or SSH tunnel only)")
    triton_timeout_s: float = _key(2.0, "backend triton: longest wait for one request in seconds", low=0.05, high=60)


@dataclass(frozen=True)
class AvatarsConfig:
    """The avatar library."""

    folder: str = _key("avatars", "folder of avatar images (relative to the project folder, or absolute)")
    default: str = _key("astronaut", "avatar shown at start: a file name without extension, a 1-based index, "
                        "or an image path; when the built-in default is not in the folder, its first avatar")


@dataclass(frozen=True)
class OutputConfig:
    """Where the reenacted frames go."""

    preview: str = _key("auto", "preview window: auto (when a display exists), on, off", choices=("auto", "on", "off"))
    vcam: str = _key("auto", "virtual camera: auto (when available), on (fail if missing), off",
                     choices=("auto", "on", "off"))
    video: str | None = _key(None, "also record the output to this video file (.mp4); used automatically when "
                             "there is neither a display nor a virtual camera")
    snapshot_dir: str = _key("snapshots", "folder for snapshot images")
    badge: str = _key("auto", "stamp a small 'virtual avatar' label on the virtual camera and recordings: auto (on "
                      "in swap mode), on, off; the badge hotkey (preview key v) toggles it",
                      choices=("auto", "on", "off"))


@dataclass(frozen=True)
class VcamConfig:
    """The virtual camera "FaceMimic Camera"."""

    backend: str = _key("auto", "pyvirtualcam backend", choices=("auto", "v4l2loopback", "unitycapture", "obs"))
    device: str | None = _key(None, "device path or name; default: the device labelled 'FaceMimic Camera'")
    width: int = _key(1280, "output width in pixels", low=160, high=3840)
    height: int = _key(720, "output height in pixels", low=120, high=2160)
    fps: float = _key(30.0, "output frame rate", low=5, high=60)
    fit: str = _key("fit", "how the square canvas fills the frame", choices=("fit", "fill", "stretch"))
    background: str = _key("blur", "letterbox background in fit mode: blur, or a colour as #rrggbb")


@dataclass(frozen=True)
class HotkeysConfig:
    """Keyboard controls. Bindings map command names to keys; see README for the list."""

    enabled: bool = _key(True, "listen for global hotkeys (they work while another app has focus)")
    global_keys: dict = _key(None, "command -> global hotkey, e.g. {next_avatar: '<ctrl>+<alt>+n'}; merged over "
                             "the defaults", factory=dict)
    preview_keys: dict = _key(None, "command -> single key in the preview window; merged over the defaults",
                              factory=dict)


@dataclass(frozen=True)
class WebConfig:
    """The browser mode (`python run.py --serve`): a WebRTC page where each visitor's webcam drives an avatar."""

    host: str = _key("127.0.0.1", "address to listen on; anything but localhost (e.g. 0.0.0.0 for the local "
                     "network) requires a token and serves HTTPS")
    port: int = _key(8080, "TCP port of the page", low=1, high=65535)
    max_clients: int = _key(4, "browsers served at once; one more is shown a 'full' message", low=1, high=64)
    token: str | None = _key(None, "access token for the page; null: none on localhost, a random one made at "
                             "start (and printed with the URL) on any other address")
    cert: str | None = _key(None, "HTTPS certificate (PEM); null on a network address: a self-signed one made on "
                            "first use in tls_dir")
    key: str | None = _key(None, "private key (PEM) of `cert`")
    tls_dir: str = _key("engines/web_tls", "folder of the self-signed certificate made on first use")
    ice_servers: list = _key(None, "STUN/TURN URLs given to the browsers and the server, e.g. "
                             "['stun:stun.example.org']; empty: none (no outside host is ever contacted)",
                             factory=list)
    generators: list = _key(None, "generators offered on the page (registry names); empty: generator.model and "
                            "the built-in mesh", factory=list)
    max_upload_mb: float = _key(8.0, "largest avatar picture a visitor may upload, in MB", low=0.1, high=60)


@dataclass(frozen=True)
class Config:
    """The whole FaceMimic configuration."""

    capture: CaptureConfig = field(default_factory=CaptureConfig)
    landmarks: LandmarksConfig = field(default_factory=LandmarksConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    avatars: AvatarsConfig = field(default_factory=AvatarsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    vcam: VcamConfig = field(default_factory=VcamConfig)
    hotkeys: HotkeysConfig = field(default_factory=HotkeysConfig)
    web: WebConfig = field(default_factory=WebConfig)


def _describe(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    if meta.get("low") is not None:
        return f"a number from {meta['low']} to {meta['high']}"
    if f.type in (list, "list"):
        return "a list of strings"
    return f"a {getattr(f.type, '__name__', f.type)}"


def _coerce(path: str, f: dataclasses.Field, value: Any, hints: dict) -> Any:
    target = hints[f.name]
    origin = typing.get_origin(target)
    args = typing.get_args(target)
    optional = type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        target = next(a for a in args if a is not type(None))
    meta = f.metadata
    try:
        if target is bool:
            if isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                    raise ValueError
                value = lowered in ("true", "yes", "on", "1")
            elif not isinstance(value, bool):
                raise ValueError
        elif target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif target is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif target is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            if isinstance(value, bool) and meta.get("choices") and "on" in meta["choices"]:
                value = "on" if value else "off"  # YAML reads a bare on/off as a boolean
            value = str(value)
        elif target is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
        elif target is list or origin is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            value = list(value)
        else:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"config key {path} = {value!r} is not valid: expected {_describe(f)}") from None
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"config key {path} = {value!r} is not allowed: expected {_describe(f)}")
    if meta.get("low") is not None and not (meta["low"] <= value <= meta["high"]):
        raise ConfigError(f"config key {path} = {value!r} is out of range: expected {_describe(f)}")
    return value


def _build(cls, data: Any, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or '(top level)'} must be a mapping of keys to values, "
                          f"got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {name}: the keys of {prefix or 'the top level'} are "
                          + ", ".join(fields))
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        path = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], data[name], path)
        else:
            values[name] = _coerce(path, f, data[name], hints)
    return cls(**values)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read config.yaml (None: built-in defaults) and apply dotted-key overrides such as {'capture.source': 'x.mp4'}."""
    import yaml

    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: pass an existing file with --config, or omit it")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    return _build(Config, tree, "")


def parse_override(text: str) -> tuple[str, Any]:
    """'section.key=value' from the command line; the value is read as YAML (numbers, booleans, lists)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not KEY=VALUE: write it like --set motion.smoothing=0.5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _default(f: dataclasses.Field) -> Any:
    """The default of a config field, whether given as a value or a factory."""
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Any = f.default_factory
    return factory()


def documented_keys(cls=Config, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """(dotted key, default, allowed values, description) for every key: used by --help-config and the tests."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(documented_keys(hints[f.name], path))
        else:
            default = _default(f)
            rows.append((path, default, _describe(f), f.metadata.get("doc", "")))
    return rows


def default_config_yaml() -> str:
    """The text of the shipped config.yaml: every key with its description, allowed values and default."""
    import yaml

    lines = [
        "# FaceMimic configuration. Every key is listed with its default; command-line flags override these",
        "# values (see `python run.py --help`), and `--set section.key=value` overrides any key.",
        "# Unknown keys and out-of-range values are errors that name the key.",
        "# Regenerate after changing avatarcam/config.py: python -c \"from avatarcam.config import "
        "default_config_yaml as d; open('config.yaml','w').write(d())\"",
        "",
    ]

    def dump(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        return text[:-3].strip() if text.endswith("...") else text

    def emit(cls, indent: int) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            pad = " " * indent
            if dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"{pad}{f.name}:  # {hints[f.name].__doc__.strip()}")
                emit(hints[f.name], indent + 2)
                continue
            meta = f.metadata
            allowed = ""
            if meta.get("choices"):
                allowed = " [" + " | ".join(str(c) for c in meta["choices"]) + "]"
            elif meta.get("low") is not None:
                allowed = f" [{meta['low']:g} .. {meta['high']:g}]"
            default = _default(f)
            lines.append(f"{pad}# {meta.get('doc', '')}{allowed}")
            lines.append(f"{pad}{f.name}: {dump(default)}")

    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        lines.append(f"{f.name}:  # {hints[f.name].__doc__.strip()}")
        emit(hints[f.name], 2)
        lines.append("")
    return "\n".join(lines)
