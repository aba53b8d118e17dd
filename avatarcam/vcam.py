"""The "FaceMimic Camera" virtual camera: device discovery, per-OS set-up text, the output composer and the sink."""

from __future__ import annotations

import logging
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcam.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

DEVICE_LABEL = "FaceMimic Camera"
"""The name the call app shows: the v4l2loopback card_label on Linux, the Unity Capture name on Windows."""
OBS_DEVICE_NAME = "OBS Virtual Camera"
"""The OBS virtual camera's fixed name (Windows fallback, macOS); OBS does not let it be renamed."""

DEFAULT_WIDTH = 1280
DEFAULT_HEIGHT = 720
DEFAULT_FPS = 30.0
LINUX_VIDEO_NR = 10
"""/dev/video10: high enough not to collide with real webcams, which take the lowest free numbers."""
DEFAULT_SYSFS_ROOT = "/sys"

BACKEND_NAMES = ("auto", "v4l2loopback", "unitycapture", "obs")
"""Values for `backend`; "auto" picks per OS (Linux: v4l2loopback; Windows: unitycapture, then obs; macOS: obs)."""
FIT_MODES = ("fit", "fill", "stretch")
"""How the square avatar canvas is placed in the 16:9 output: letterbox, crop to cover, or distort."""
BACKGROUND_BLUR = "blur"
"""`background` value for a blurred, darkened copy of the canvas behind the letterbox bars."""

_BLUR_DOWNSCALE = 16  # the blurred fill is computed at 1/16 size: cheap and smooth once scaled up
_BLUR_DIM = 0.55  # darken the fill so the avatar stands out


# --------------------------------------------------------------------------------------------- set-up text


def linux_modprobe_options(*, label: str = DEVICE_LABEL, video_nr: int = LINUX_VIDEO_NR) -> list[str]:
    """v4l2loopback module options, one argv item each (no shell quoting)."""
    return ["devices=1", f"video_nr={video_nr}", f"card_label={label}", "exclusive_caps=1"]


def _options_line(*, label: str, video_nr: int) -> str:
    # modprobe and modprobe.d both accept double quotes around a value that contains spaces.
    return f'devices=1 video_nr={video_nr} card_label="{label}" exclusive_caps=1'


def linux_modprobe_command(*, label: str = DEVICE_LABEL, video_nr: int = LINUX_VIDEO_NR) -> str:
    """The shell line that creates the device now (until reboot)."""
    return f"sudo modprobe v4l2loopback {_options_line(label=label, video_nr=video_nr)}"


def linux_persistence_files(*, label: str = DEVICE_LABEL, video_nr: int = LINUX_VIDEO_NR) -> dict[str, str]:
    """Files that load the module with our options at every boot: path -> content."""
    return {
        "/etc/modules-load.d/facemimic-v4l2loopback.conf": "v4l2loopback\n",
        "/etc/modprobe.d/facemimic-v4l2loopback.conf": (
            f"options v4l2loopback {_options_line(label=label, video_nr=video_nr)}\n"
        ),
    }


def linux_setup_text(*, label: str = DEVICE_LABEL, video_nr: int = LINUX_VIDEO_NR) -> str:
    """One-time Linux set-up of the v4l2loopback device, as commands to paste into a terminal."""
    files = linux_persistence_files(label=label, video_nr=video_nr)
    load_path, options_path = list(files)
    return "\n".join(
        [
            f'Linux: create a v4l2loopback virtual camera labelled "{label}" (one time):',
            "  1. Install the module (Debian/Ubuntu; Fedora: `sudo dnf install v4l2loopback` from RPM Fusion;",
            "     Arch: `sudo pacman -S v4l2loopback-dkms`):",
            "       sudo apt install v4l2loopback-dkms",
            "  2. Create the device now:",
            f"       {linux_modprobe_command(label=label, video_nr=video_nr)}",
            "     exclusive_caps=1 is required: without it Chrome, Zoom, Teams and Meet do not list the camera.",
            "     If v4l2loopback is already loaded with other options, unload it first (close every app",
            "     using it): sudo modprobe -r v4l2loopback",
            f"     If /dev/video{video_nr} is taken by another device, choose another video_nr.",
            "  3. Keep it after a reboot:",
            f"       echo v4l2loopback | sudo tee {load_path}",
            f"       echo '{files[options_path].strip()}' | sudo tee {options_path}",
            "     (If /etc/modprobe.d already has an `options v4l2loopback` line, e.g. from OBS, merge the two.)",
            "  If modprobe says 'Key was rejected by service', Secure Boot blocks the unsigned module: enrol the",
            "  DKMS signing key and reboot (`sudo mokutil --import /var/lib/dkms/mok.pub`; older Ubuntu:",
            "  /var/lib/shim-signed/mok/MOK.der).",
            "  If opening the device is refused, add yourself to the video group: sudo usermod -aG video $USER",
            "  (then log out and in).",
            "  Or run `python tools/vcam_setup.py`, which does steps 2 and 3 after asking.",
        ]
    )


def windows_setup_text(*, label: str = DEVICE_LABEL) -> str:
    """One-time Windows set-up: Unity Capture registered under our name, or OBS as the fallback."""
    return "\n".join(
        [
            f'Windows: register the Unity Capture virtual camera as "{label}" (one time):',
            "  1. Download Unity Capture from https://github.com/schellingb/UnityCapture and open its Install folder.",
            "  2. In a command prompt opened with 'Run as administrator', in that folder:",
            f'       regsvr32 "UnityCaptureFilter64.dll" "/i:UnityCaptureName={label}"',
            f'       regsvr32 "UnityCaptureFilter32.dll" "/i:UnityCaptureName={label}"',
            "     (the 32-bit line is for 32-bit apps; older releases name the files UnityCaptureFilter64bit.dll",
            "     and UnityCaptureFilter32bit.dll).",
            f'  3. Restart the call app and choose "{label}".',
            f'  Fallback: install OBS Studio 26 or newer; FaceMimic then uses "{OBS_DEVICE_NAME}". Its name cannot',
            f'  be changed, so choose "{OBS_DEVICE_NAME}" in the call app, and keep OBS from starting its own',
            "  virtual camera while FaceMimic runs.",
        ]
    )


def macos_setup_text() -> str:
    """One-time macOS set-up: the OBS virtual camera (its name is fixed)."""
    return "\n".join(
        [
            f'macOS: FaceMimic publishes through the OBS virtual camera, which always appears as "{OBS_DEVICE_NAME}"',
            f'  (a custom name such as "{DEVICE_LABEL}" is not possible on macOS). One time:',
            "  1. Install OBS Studio 30 or newer (macOS 13+): https://obsproject.com or `brew install --cask obs`.",
            '  2. Start OBS, click "Start Virtual Camera" and allow the camera extension when macOS asks',
            "     (System Settings > Privacy & Security, or General > Login Items & Extensions > Camera Extensions).",
            '  3. Click "Stop Virtual Camera" and quit OBS: OBS must not use the camera while FaceMimic runs.',
            f'  4. In the call app choose "{OBS_DEVICE_NAME}".',
        ]
    )


def setup_text(*, system: str | None = None) -> str:
    """The one-time set-up steps for this OS (or `system`, as platform.system() spells it)."""
    system = system or platform.system()
    if system == "Linux":
        return linux_setup_text()
    if system == "Windows":
        return windows_setup_text()
    if system == "Darwin":
        return macos_setup_text()
    return "\n\n".join([f"No virtual camera support is known for {system!r}.", linux_setup_text(),
                        windows_setup_text(), macos_setup_text()])


# --------------------------------------------------------------------------------------------- Linux discovery


@dataclass(frozen=True)
class VideoDevice:
    """One video4linux device as sysfs describes it."""

    path: str
    """/dev/videoN."""
    label: str
    """The device name shown to apps (sysfs `name`; v4l2loopback's card_label)."""
    is_loopback: bool
    """True for v4l2loopback devices (they carry a `max_openers` attribute that real webcams lack)."""

    def describe(self) -> str:
        """'/dev/video10 "FaceMimic Camera" (v4l2loopback)'."""
        kind = "v4l2loopback" if self.is_loopback else "not a loopback device"
        return f'{self.path} "{self.label}" ({kind})'


def list_video_devices(*, sysfs_root: str | Path = DEFAULT_SYSFS_ROOT) -> list[VideoDevice]:
    """All /dev/videoN devices listed under <sysfs_root>/class/video4linux, in number order."""
    base = Path(sysfs_root, "class", "video4linux")
    if not base.is_dir():
        return []
    found: list[tuple[int, VideoDevice]] = []
    for entry in base.iterdir():
        match = re.fullmatch(r"video(\d+)", entry.name)
        if not match:
            continue
        try:
            label = (entry / "name").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            label = ""
        device = VideoDevice(f"/dev/{entry.name}", label, (entry / "max_openers").exists())
        found.append((int(match.group(1)), device))
    return [device for _, device in sorted(found, key=lambda item: item[0])]


def find_loopback_device(*, label: str = DEVICE_LABEL, sysfs_root: str | Path = DEFAULT_SYSFS_ROOT) -> str:
    """The /dev/videoN path of the v4l2loopback device labelled `label`; DeviceError with set-up steps if none."""
    devices = list_video_devices(sysfs_root=sysfs_root)
    loopbacks = [device for device in devices if device.is_loopback]
    matches = [device for device in loopbacks if device.label == label]
    if matches:
        if len(matches) > 1:
            log.warning("%d v4l2loopback devices are labelled %r (%s); using %s", len(matches), label,
                        ", ".join(device.path for device in matches), matches[0].path)
        return matches[0].path
    seen = "; ".join(device.describe() for device in devices) or "none"
    if not loopbacks:
        module_loaded = Path(sysfs_root, "module", "v4l2loopback").exists()
        state = "is loaded but has no devices" if module_loaded else "is not loaded"
        raise DeviceError(
            f'No virtual camera "{label}": the v4l2loopback kernel module {state} '
            f"(video devices seen: {seen}; expected a v4l2loopback device labelled \"{label}\").\n"
            + linux_setup_text(label=label)
        )
    raise DeviceError(
        f'No v4l2loopback device is labelled "{label}" (video devices seen: {seen}). Either reload the module '
        f"with the label (close apps using the camera, run `sudo modprobe -r v4l2loopback`, then "
        f"`{linux_modprobe_command(label=label)}`), or use an existing loopback device explicitly, "
        f"e.g. vcam.device: {loopbacks[0].path} in config.yaml.\n"
        + linux_setup_text(label=label)
    )


# --------------------------------------------------------------------------------------------- composition


def _parse_background(background: Any) -> str | tuple[int, int, int]:
    """'blur', '#rrggbb' or a (b, g, r) sequence -> 'blur' or a BGR tuple."""
    if isinstance(background, str):
        text = background.strip().lower()
        if text == BACKGROUND_BLUR:
            return BACKGROUND_BLUR
        if re.fullmatch(r"#[0-9a-f]{6}", text):
            r, g, b = (int(text[i : i + 2], 16) for i in (1, 3, 5))
            return (b, g, r)
    elif isinstance(background, (tuple, list)) and len(background) == 3:
        if all(isinstance(v, (int, np.integer)) and 0 <= int(v) <= 255 for v in background):
            return (int(background[0]), int(background[1]), int(background[2]))
    raise ConfigError(
        f"vcam background {background!r} is not valid: expected 'blur', a colour '#rrggbb' "
        "or [blue, green, red] with values 0..255, e.g. background: '#101010'"
    )


def _check_mode(mode: str) -> str:
    if mode not in FIT_MODES:
        raise ConfigError(f"vcam fit mode {mode!r} is not valid: expected one of {', '.join(FIT_MODES)}")
    return mode


def _check_canvas(canvas_bgr: np.ndarray) -> None:
    if not isinstance(canvas_bgr, np.ndarray) or canvas_bgr.dtype != np.uint8 or canvas_bgr.ndim != 3 \
            or canvas_bgr.shape[2] != 3 or canvas_bgr.shape[0] < 1 or canvas_bgr.shape[1] < 1:
        shape = getattr(canvas_bgr, "shape", None)
        dtype = getattr(canvas_bgr, "dtype", type(canvas_bgr).__name__)
        raise ValueError(f"unexpected canvas: shape {shape}, dtype {dtype}; expected (H, W, 3) uint8 BGR")


def _interpolation(src_w: int, src_h: int, dst_w: int, dst_h: int) -> int:
    return cv2.INTER_AREA if dst_w < src_w and dst_h < src_h else cv2.INTER_LINEAR


def _cover_crop(canvas: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The centred region of `canvas` with the output's aspect ratio (a view, no copy)."""
    ch, cw = canvas.shape[:2]
    if cw * out_h > ch * out_w:  # canvas wider than output: cut the sides
        crop_w = max(1, round(ch * out_w / out_h))
        x0 = (cw - crop_w) // 2
        return canvas[:, x0 : x0 + crop_w]
    crop_h = max(1, round(cw * out_h / out_w))
    y0 = (ch - crop_h) // 2
    return canvas[y0 : y0 + crop_h, :]


def picture_box(canvas_w: int, canvas_h: int, out_w: int, out_h: int, mode: str) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixels of the out_w x out_h frame that show the canvas: the centred letterbox in 'fit'
    mode, the whole frame in 'fill' and 'stretch' (the disclosure badge goes inside it, not on a bar)."""
    if mode != "fit":
        return 0, 0, out_w, out_h
    scale = min(out_w / canvas_w, out_h / canvas_h)
    fit_w = min(out_w, max(1, round(canvas_w * scale)))
    fit_h = min(out_h, max(1, round(canvas_h * scale)))
    x0, y0 = (out_w - fit_w) // 2, (out_h - fit_h) // 2
    return x0, y0, x0 + fit_w, y0 + fit_h


def _compose_into(canvas: np.ndarray, out: np.ndarray, mode: str, background: str | tuple[int, int, int],
                  blur_small: np.ndarray | None) -> np.ndarray:
    out_h, out_w = out.shape[:2]
    ch, cw = canvas.shape[:2]
    if mode == "stretch":
        cv2.resize(canvas, (out_w, out_h), dst=out, interpolation=_interpolation(cw, ch, out_w, out_h))
        return out
    if mode == "fill":
        crop = _cover_crop(canvas, out_w, out_h)
        cv2.resize(crop, (out_w, out_h), dst=out,
                   interpolation=_interpolation(crop.shape[1], crop.shape[0], out_w, out_h))
        return out
    # fit: letterbox
    x0, y0, x1, y1 = picture_box(cw, ch, out_w, out_h, "fit")
    fit_w, fit_h = x1 - x0, y1 - y0
    if fit_w < out_w or fit_h < out_h:
        if background == BACKGROUND_BLUR:
            if blur_small is None:
                blur_small = np.empty((max(2, out_h // _BLUR_DOWNSCALE), max(2, out_w // _BLUR_DOWNSCALE), 3),
                                      np.uint8)
            small_h, small_w = blur_small.shape[:2]
            cv2.resize(_cover_crop(canvas, out_w, out_h), (small_w, small_h), dst=blur_small,
                       interpolation=cv2.INTER_AREA)
            cv2.GaussianBlur(blur_small, (0, 0), 1.5, dst=blur_small)
            cv2.convertScaleAbs(blur_small, dst=blur_small, alpha=_BLUR_DIM)
            cv2.resize(blur_small, (out_w, out_h), dst=out, interpolation=cv2.INTER_LINEAR)
        else:
            out[...] = background
    cv2.resize(canvas, (fit_w, fit_h), dst=out[y0 : y0 + fit_h, x0 : x0 + fit_w],
               interpolation=_interpolation(cw, ch, fit_w, fit_h))
    return out


def compose(canvas_bgr: np.ndarray, out_w: int, out_h: int, mode: str = "fit", *,
            background: Any = BACKGROUND_BLUR, out: np.ndarray | None = None) -> np.ndarray:
    """Place the avatar canvas into an out_h x out_w BGR frame.

    canvas_bgr: (H, W, 3) uint8 BGR, usually square. mode: 'fit' (letterbox over `background`: 'blur',
    '#rrggbb' or (b, g, r)), 'fill' (crop to cover), 'stretch'. out: optional (out_h, out_w, 3) uint8 buffer
    written in place. Returns (out_h, out_w, 3) uint8 BGR. Use FrameComposer for per-frame work.
    """
    _check_canvas(canvas_bgr)
    mode = _check_mode(mode)
    parsed = _parse_background(background)
    if out is None:
        out = np.empty((out_h, out_w, 3), np.uint8)
    elif out.shape != (out_h, out_w, 3) or out.dtype != np.uint8:
        raise ValueError(f"unexpected out buffer: shape {out.shape}, dtype {out.dtype}; "
                         f"expected ({out_h}, {out_w}, 3) uint8")
    return _compose_into(canvas_bgr, out, mode, parsed, None)


class FrameComposer:
    """Composes avatar canvases into output frames, reusing one preallocated output buffer (no per-frame allocation)."""

    def __init__(self, *, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT, mode: str = "fit",
                 background: Any = BACKGROUND_BLUR) -> None:
        _check_size(width, height)
        self._mode = _check_mode(mode)
        self._background = _parse_background(background)
        self._out = np.zeros((height, width, 3), np.uint8)
        self._picture_box = (0, 0, width, height)
        self._blur_small = np.empty((max(2, height // _BLUR_DOWNSCALE), max(2, width // _BLUR_DOWNSCALE), 3),
                                    np.uint8)

    @property
    def width(self) -> int:
        """Output width in pixels."""
        return self._out.shape[1]

    @property
    def height(self) -> int:
        """Output height in pixels."""
        return self._out.shape[0]

    @property
    def mode(self) -> str:
        """'fit', 'fill' or 'stretch'."""
        return self._mode

    @property
    def picture_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the last composed frame that shows the canvas (vcam.picture_box)."""
        return self._picture_box

    def compose(self, canvas_bgr: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR canvas -> the internal (height, width, 3) uint8 BGR buffer, overwritten next call."""
        _check_canvas(canvas_bgr)
        self._picture_box = picture_box(canvas_bgr.shape[1], canvas_bgr.shape[0], self.width, self.height,
                                        self._mode)
        return _compose_into(canvas_bgr, self._out, self._mode, self._background, self._blur_small)


# --------------------------------------------------------------------------------------------- the sink


def _check_size(width: Any, height: Any) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 16 <= value <= 7680 \
                or value % 2:
            raise ConfigError(f"vcam {name} {value!r} is not valid: expected an even integer 16..7680, "
                              "e.g. width: 1280, height: 720")


def _check_fps(fps: Any) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 1 <= fps <= 120:
        raise ConfigError(f"vcam fps {fps!r} is not valid: expected a number 1..120, e.g. fps: 30")
    return float(fps)


class VirtualCameraSink:
    """The "FaceMimic Camera" output through pyvirtualcam; frames are (height, width, 3) uint8 BGR."""

    def __init__(self, *, backend: str = "auto", device: str | None = None, width: int = DEFAULT_WIDTH,
                 height: int = DEFAULT_HEIGHT, fps: float = DEFAULT_FPS, label: str = DEVICE_LABEL,
                 sysfs_root: str | Path = DEFAULT_SYSFS_ROOT, system: str | None = None) -> None:
        if not isinstance(backend, str) or not backend:
            raise ConfigError(f"vcam backend {backend!r} is not valid: expected one of {', '.join(BACKEND_NAMES)}")
        if device is not None and (not isinstance(device, str) or not device):
            raise ConfigError(f"vcam device {device!r} is not valid: expected null (find \"{label}\") or a "
                              "device path/name such as /dev/video10 or \"OBS Virtual Camera\"")
        _check_size(width, height)
        self._requested_backend = backend
        self._requested_device = device
        self._width = int(width)
        self._height = int(height)
        self._fps = _check_fps(fps)
        self._label = label
        self._sysfs_root = sysfs_root
        self._system = system or platform.system()
        self._camera: Any = None
        self._backend: str | None = None
        self._device: str | None = None

    # -- read-only properties

    @property
    def backend(self) -> str:
        """The backend in use (or last used); before the first open() the requested one ('auto' or a name)."""
        return self._backend or self._requested_backend

    @property
    def device(self) -> str | None:
        """The device in use or last used (/dev/videoN, a camera name); before the first open() the requested one."""
        return self._device or self._requested_device

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return self._width

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return self._height

    @property
    def fps(self) -> float:
        """Target frame rate."""
        return self._fps

    @property
    def is_open(self) -> bool:
        """True between a successful open() and close()."""
        return self._camera is not None

    @property
    def current_fps(self) -> float:
        """Frame rate pyvirtualcam measured over recent sends (0.0 when closed)."""
        return float(self._camera.current_fps) if self._camera is not None else 0.0

    # -- lifecycle

    def __enter__(self) -> VirtualCameraSink:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> VirtualCameraSink:
        """Open the virtual camera; DeviceError with the set-up steps when it does not exist. Idempotent."""
        if self._camera is not None:
            return self
        try:
            import pyvirtualcam
            from pyvirtualcam import camera as pyvirtualcam_camera
        except ImportError as exc:
            raise DeviceError(f"pyvirtualcam could not be imported ({exc}); install it with "
                              "`python -m pip install pyvirtualcam`") from exc
        available = sorted(getattr(pyvirtualcam_camera, "BACKENDS", {}))
        attempts = self._plan(available)
        failures: list[str] = []
        for backend, device in attempts:
            try:
                camera = pyvirtualcam.Camera(self._width, self._height, self._fps, fmt=pyvirtualcam.PixelFormat.BGR,
                                             device=device, backend=backend)
            except Exception as exc:  # pyvirtualcam raises RuntimeError/ValueError with the backend's reason
                where = f", device {device!r}" if device else ""
                reason = str(exc).strip() or type(exc).__name__
                reason = reason.removeprefix(f"'{backend}' backend: ")  # pyvirtualcam already names the backend
                failures.append(f"  - '{backend}' backend{where}: {reason}")
                continue
            self._camera = camera
            self._backend = backend
            self._device = camera.device
            if backend == "obs" and self._system == "Windows" and len(attempts) > 1:
                log.warning(
                    'Unity Capture "%s" is not registered (%s); using "%s" instead. Its name cannot be changed: '
                    'choose "%s" in the call app, or register "%s" (python tools/vcam_setup.py shows how).',
                    self._label, failures[0].split(": ", 1)[-1] if failures else "not found", OBS_DEVICE_NAME,
                    OBS_DEVICE_NAME, self._label)
            elif backend == "obs":
                log.info('Publishing to "%s" (the OBS virtual camera cannot be renamed to "%s").',
                         OBS_DEVICE_NAME, self._label)
            native = camera.native_fmt
            log.info("Virtual camera open: %s via %s, %dx%d @ %g fps, BGR in%s", self._device, backend,
                     self._width, self._height, self._fps, f", {native} native" if native else "")
            return self
        help_text = ""
        if self._requested_backend in BACKEND_NAMES:  # a custom registered backend has no set-up of ours
            help_text = "\n" + self._failure_hint() + "\n" + setup_text(system=self._system)
        raise DeviceError(
            f"Could not open the virtual camera ({self._width}x{self._height} @ {self._fps:g} fps):\n"
            + "\n".join(failures) + help_text
        )

    def _plan(self, available: list[str]) -> list[tuple[str, str | None]]:
        """(backend, device) pairs to try in order."""
        requested = self._requested_backend
        device = self._requested_device
        if requested == "auto":
            if self._system == "Linux":
                requested = "v4l2loopback"
            elif self._system == "Windows":
                if device is None:
                    return self._only_available([("unitycapture", self._label), ("obs", None)], available)
                requested = "obs" if device == OBS_DEVICE_NAME else "unitycapture"
            elif self._system == "Darwin":
                requested = "obs"
            else:
                raise DeviceError(f"No virtual camera backend is known for {self._system!r}: expected Linux, "
                                  f"Windows or macOS, or an explicit vcam backend ({', '.join(available) or 'none'})")
        if requested not in available:
            raise DeviceError(
                f"vcam backend {requested!r} is not available on {self._system}: pyvirtualcam offers "
                f"{', '.join(available) or 'no backend'} here. Use backend: auto, or one of those."
            )
        if requested == "v4l2loopback" and (device is None or not device.startswith("/dev/")):
            # No device: ours, by its label. A name such as "FaceMimic Camera" is a v4l2loopback card label: look up
            # its /dev/videoN.
            device = find_loopback_device(label=device or self._label, sysfs_root=self._sysfs_root)
        elif requested == "unitycapture" and device is None:
            device = self._label
        return [(requested, device)]

    def _only_available(self, attempts: list[tuple[str, str | None]], available: list[str]
                        ) -> list[tuple[str, str | None]]:
        usable = [(backend, device) for backend, device in attempts if backend in available]
        if not usable:
            raise DeviceError(f"pyvirtualcam offers none of {', '.join(b for b, _ in attempts)} here "
                              f"(available: {', '.join(available) or 'none'}); reinstall pyvirtualcam.\n"
                              + setup_text(system=self._system))
        return usable

    def _failure_hint(self) -> str:
        if self._system == "Linux":
            return ("If the device exists: is another program (another FaceMimic, OBS) already writing to it, "
                    "and are you in the video group (sudo usermod -aG video $USER, then log out and in)?")
        return "Check the set-up below; restart the call app after registering a camera."

    def send(self, frame_bgr: np.ndarray) -> None:
        """Send one (height, width, 3) uint8 BGR frame."""
        if self._camera is None:
            raise DeviceError("VirtualCameraSink.send() was called while the camera is closed: call open() first")
        expected = (self._height, self._width, 3)
        if not isinstance(frame_bgr, np.ndarray) or frame_bgr.shape != expected or frame_bgr.dtype != np.uint8:
            raise ValueError(f"unexpected frame: shape {getattr(frame_bgr, 'shape', None)}, dtype "
                             f"{getattr(frame_bgr, 'dtype', None)}; expected {expected} uint8 BGR "
                             "(compose the avatar canvas with FrameComposer first)")
        self._camera.send(frame_bgr)

    def sleep_until_next_frame(self) -> None:
        """Sleep until the next frame is due (pyvirtualcam's adaptive pacing)."""
        if self._camera is None or self._camera.frames_sent == 0:
            time.sleep(1.0 / self._fps)  # pyvirtualcam's pacing needs one sent frame to measure from
            return
        self._camera.sleep_until_next_frame()

    def close(self) -> None:
        """Release the device. Idempotent."""
        camera, self._camera = self._camera, None
        if camera is not None:
            camera.close()
            log.info("Virtual camera closed.")
