"""avatarcam.vcam: device discovery on a fake sysfs, set-up messages, composition, and the sink on real pyvirtualcam."""

from __future__ import annotations

import importlib.util
import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avatarcam import vcam
from avatarcam.errors import ConfigError, DeviceError

try:
    from xvfb_util import CameraRecorder, recording_backend
except ImportError:  # tests/ imported as a package
    from tests.xvfb_util import CameraRecorder, recording_backend

pyvirtualcam = pytest.importorskip("pyvirtualcam")
from pyvirtualcam.util import encode_fourcc  # noqa: E402

BGR_FOURCC = encode_fourcc(pyvirtualcam.PixelFormat.BGR.value)
MODPROBE_LINE = 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="FaceMimic Camera" exclusive_caps=1'


def make_sysfs(root: Path, devices: dict[str, tuple[str, bool]], *, module_loaded: bool | None = None) -> Path:
    """A fake /sys: {"video0": ("Integrated Camera", False), "video10": ("FaceMimic Camera", True)}."""
    base = root / "class" / "video4linux"
    base.mkdir(parents=True)
    any_loopback = False
    for name, (label, loopback) in devices.items():
        entry = base / name
        entry.mkdir()
        (entry / "name").write_text(label + "\n")
        (entry / "dev").write_text("81:0\n")
        if loopback:
            (entry / "max_openers").write_text("10\n")
            (entry / "buffers").write_text("2\n")
            any_loopback = True
    if module_loaded if module_loaded is not None else any_loopback:
        (root / "module" / "v4l2loopback").mkdir(parents=True)
    return root


# --------------------------------------------------------------------------------------------- discovery


def test_finds_the_device_by_label(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path, {"video0": ("Integrated Camera: Integrated C", False),
                                  "video2": ("Dummy video device (0x0000)", True),
                                  "video10": ("FaceMimic Camera", True)})
    assert vcam.find_loopback_device(sysfs_root=sysfs) == "/dev/video10"
    devices = vcam.list_video_devices(sysfs_root=sysfs)
    assert [d.path for d in devices] == ["/dev/video0", "/dev/video2", "/dev/video10"]
    assert [d.is_loopback for d in devices] == [False, True, True]


def test_no_loopback_module_explains_the_setup(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path, {"video0": ("Integrated Camera", False)})
    with pytest.raises(DeviceError) as info:
        vcam.find_loopback_device(sysfs_root=sysfs)
    message = str(info.value)
    assert "v4l2loopback kernel module is not loaded" in message
    assert '/dev/video0 "Integrated Camera"' in message  # what was found
    assert MODPROBE_LINE in message
    assert "exclusive_caps=1 is required" in message and "Chrome" in message
    assert "/etc/modules-load.d/facemimic-v4l2loopback.conf" in message
    assert "/etc/modprobe.d/facemimic-v4l2loopback.conf" in message
    assert "sudo apt install v4l2loopback-dkms" in message


def test_no_video_devices_at_all(tmp_path: Path) -> None:
    with pytest.raises(DeviceError) as info:
        vcam.find_loopback_device(sysfs_root=tmp_path)  # no class/video4linux directory
    assert "video devices seen: none" in str(info.value)
    assert MODPROBE_LINE in str(info.value)


def test_module_loaded_without_devices(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path, {}, module_loaded=True)
    with pytest.raises(DeviceError, match="is loaded but has no devices"):
        vcam.find_loopback_device(sysfs_root=sysfs)


def test_loopback_devices_but_none_labelled(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path, {"video0": ("Integrated Camera", False),
                                  "video7": ("Dummy video device (0x0000)", True)})
    with pytest.raises(DeviceError) as info:
        vcam.find_loopback_device(sysfs_root=sysfs)
    message = str(info.value)
    assert 'No v4l2loopback device is labelled "FaceMimic Camera"' in message
    assert '/dev/video7 "Dummy video device (0x0000)" (v4l2loopback)' in message
    assert "sudo modprobe -r v4l2loopback" in message
    assert MODPROBE_LINE in message
    assert "vcam.device: /dev/video7" in message  # the explicit-device way out


def test_sink_with_explicit_device_skips_discovery(tmp_path: Path) -> None:
    recorder = CameraRecorder()
    with recording_backend("v4l2loopback", recorder):
        sink = vcam.VirtualCameraSink(device="/dev/video42", sysfs_root=tmp_path / "nothing-here", system="Linux",
                                      width=320, height=240)
        with sink:
            assert sink.device == "/dev/video42"
            assert sink.backend == "v4l2loopback"
    assert recorder.opened[0]["device"] == "/dev/video42"


def test_sink_auto_on_linux_passes_the_labelled_device(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path, {"video0": ("Integrated Camera", False), "video10": ("FaceMimic Camera", True)})
    recorder = CameraRecorder()
    with recording_backend("v4l2loopback", recorder):
        with vcam.VirtualCameraSink(sysfs_root=sysfs, system="Linux", width=320, height=240) as sink:
            assert (sink.backend, sink.device) == ("v4l2loopback", "/dev/video10")
    assert recorder.opened[0]["device"] == "/dev/video10"


def test_sink_auto_on_linux_without_device_raises_the_setup(tmp_path: Path) -> None:
    sink = vcam.VirtualCameraSink(sysfs_root=make_sysfs(tmp_path, {}), system="Linux")
    with pytest.raises(DeviceError) as info:
        sink.open()
    assert MODPROBE_LINE in str(info.value)
    assert not sink.is_open


def test_real_v4l2loopback_backend_failure_is_explained(tmp_path: Path) -> None:
    # sysfs says the device exists, but /dev/video63 does not: pyvirtualcam's own reason must be in the message.
    sysfs = make_sysfs(tmp_path, {"video63": ("FaceMimic Camera", True)})
    sink = vcam.VirtualCameraSink(sysfs_root=sysfs, system="Linux")
    with pytest.raises(DeviceError) as info:
        sink.open()
    message = str(info.value)
    assert "'v4l2loopback' backend, device '/dev/video63'" in message
    assert "/dev/video63" in message and "video group" in message
    assert MODPROBE_LINE in message


# --------------------------------------------------------------------------------------------- Windows / macOS plans


@pytest.fixture
def windows_backends():
    unity, obs = CameraRecorder(), CameraRecorder(default_device=vcam.OBS_DEVICE_NAME)
    with recording_backend("unitycapture", unity), recording_backend("obs", obs):
        yield unity, obs


def test_windows_uses_unity_capture_named_facemimic(windows_backends) -> None:
    unity, obs = windows_backends
    with vcam.VirtualCameraSink(system="Windows", width=320, height=240) as sink:
        assert (sink.backend, sink.device) == ("unitycapture", "FaceMimic Camera")
    assert unity.opened[0]["device"] == "FaceMimic Camera" and not obs.opened


def test_windows_falls_back_to_obs_and_says_the_name_is_fixed(windows_backends, caplog) -> None:
    unity, obs = windows_backends
    unity.open_error = "No camera registered with this name."
    with caplog.at_level(logging.WARNING, logger="avatarcam.vcam"):
        with vcam.VirtualCameraSink(system="Windows", width=320, height=240) as sink:
            assert (sink.backend, sink.device) == ("obs", vcam.OBS_DEVICE_NAME)
    text = caplog.text
    assert "No camera registered with this name." in text
    assert "cannot be changed" in text and 'choose "OBS Virtual Camera"' in text


def test_windows_with_neither_camera_lists_both_reasons_and_the_registration(windows_backends) -> None:
    unity, obs = windows_backends
    unity.open_error = "No camera registered with this name."
    obs.open_error = "OBS Virtual Camera device not found! Did you install OBS?"
    with pytest.raises(DeviceError) as info:
        vcam.VirtualCameraSink(system="Windows").open()
    message = str(info.value)
    assert "'unitycapture' backend, device 'FaceMimic Camera': No camera registered with this name." in message
    assert "'obs' backend: OBS Virtual Camera device not found!" in message
    assert '"/i:UnityCaptureName=FaceMimic Camera"' in message and "regsvr32" in message
    assert "cannot" in message and "be changed" in message


def test_macos_uses_obs(windows_backends) -> None:
    _, obs = windows_backends
    with vcam.VirtualCameraSink(system="Darwin", width=320, height=240) as sink:
        assert (sink.backend, sink.device) == ("obs", vcam.OBS_DEVICE_NAME)
    assert "Start Virtual Camera" in vcam.setup_text(system="Darwin")
    assert "OBS Virtual Camera" in vcam.macos_setup_text()


def test_unknown_backend_lists_the_available_ones() -> None:
    with pytest.raises(DeviceError, match=r"vcam backend 'nope' is not available .*v4l2loopback"):
        vcam.VirtualCameraSink(backend="nope", system="Linux").open()


# --------------------------------------------------------------------------------------------- the sink contract


def test_sink_sends_bgr_frames_of_the_right_size_through_real_pyvirtualcam() -> None:
    recorder = CameraRecorder()
    frame = np.full((720, 1280, 3), 77, np.uint8)
    with recording_backend("facemimic-test-vcam", recorder):
        sink = vcam.VirtualCameraSink(backend="facemimic-test-vcam")
        assert (sink.width, sink.height, sink.fps) == (1280, 720, 30.0)  # defaults
        assert sink.backend == "facemimic-test-vcam" and not sink.is_open
        with sink:
            assert sink.open() is sink  # idempotent
            sink.send(frame)
            sink.send(frame)
            with pytest.raises(ValueError, match=r"expected \(720, 1280, 3\) uint8"):
                sink.send(np.zeros((240, 320, 3), np.uint8))
        sink.close()  # idempotent
        assert not sink.is_open
        with pytest.raises(DeviceError, match="call open"):
            sink.send(frame)
    opened = recorder.opened[0]
    assert (opened["width"], opened["height"], opened["fps"], opened["fourcc"]) == (1280, 720, 30.0, BGR_FOURCC)
    assert [f.size for f in recorder.frames] == [1280 * 720 * 3] * 2
    assert recorder.closed == 1


@pytest.mark.parametrize("kwargs, fragment", [
    ({"width": 1281}, "vcam width 1281"), ({"height": 0}, "vcam height 0"), ({"fps": 0}, "vcam fps 0"),
    ({"backend": ""}, "vcam backend ''"), ({"device": ""}, "vcam device ''"),
])
def test_sink_rejects_bad_settings(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        vcam.VirtualCameraSink(**kwargs)


# --------------------------------------------------------------------------------------------- composition


@pytest.fixture
def canvas() -> np.ndarray:
    canvas = np.zeros((256, 256, 3), np.uint8)
    canvas[...] = (40, 120, 200)
    canvas[:, :128] = (200, 120, 40)  # left half differs: 'fill' must keep the centre
    return canvas


def test_fit_letterboxes_with_a_colour(canvas: np.ndarray) -> None:
    out = vcam.compose(canvas, 1280, 720, "fit", background="#102030")
    assert out.shape == (720, 1280, 3)
    assert tuple(out[360, 10]) == (0x30, 0x20, 0x10) and tuple(out[360, 1270]) == (0x30, 0x20, 0x10)
    assert tuple(out[360, 300]) == (200, 120, 40) and tuple(out[360, 980]) == (40, 120, 200)
    assert tuple(out[0, 640]) != (0x30, 0x20, 0x10)  # the canvas spans the full height


def test_fit_with_blurred_fill_is_not_flat(canvas: np.ndarray) -> None:
    out = vcam.compose(canvas, 1280, 720, "fit", background="blur")
    left_bar, right_bar = out[:, :270].reshape(-1, 3), out[:, 1010:].reshape(-1, 3)
    assert left_bar.max() > 20 and right_bar.max() > 20  # never black bars
    assert (left_bar.mean(axis=0)[0] > left_bar.mean(axis=0)[2]) and \
        (right_bar.mean(axis=0)[2] > right_bar.mean(axis=0)[0])  # colours follow the canvas edges
    assert out[:, :270].max() < 200  # darkened


def test_fill_covers_and_stretch_distorts(canvas: np.ndarray) -> None:
    fill = vcam.compose(canvas, 1280, 720, "fill")
    assert tuple(fill[0, 0]) == (200, 120, 40) and tuple(fill[719, 1279]) == (40, 120, 200)
    stretch = vcam.compose(canvas, 1280, 720, "stretch")
    assert tuple(stretch[360, 5]) == (200, 120, 40) and tuple(stretch[360, 1275]) == (40, 120, 200)
    assert tuple(stretch[360, 600]) == (200, 120, 40)  # the left half now spans 640 px


def test_composer_reuses_its_buffer(canvas: np.ndarray) -> None:
    composer = vcam.FrameComposer(width=640, height=360, mode="fit", background=(0, 0, 0))
    first = composer.compose(canvas)
    second = composer.compose(canvas[::-1].copy())
    assert first is second and first.shape == (360, 640, 3)
    out = np.empty((360, 640, 3), np.uint8)
    assert vcam.compose(canvas, 640, 360, "stretch", out=out) is out


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"mode": "zoom"}, ConfigError, "fit mode 'zoom'.*fit, fill, stretch"),
    ({"background": "pink"}, ConfigError, "background 'pink'.*'blur'"),
    ({"background": (0, 0, 300)}, ConfigError, "background"),
])
def test_compose_rejects_bad_settings(canvas: np.ndarray, kwargs: dict, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        vcam.compose(canvas, 640, 360, **kwargs)


def test_compose_rejects_a_bad_canvas() -> None:
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) uint8"):
        vcam.compose(np.zeros((64, 64), np.uint8), 640, 360)


# --------------------------------------------------------------------------------------------- the set-up tool


TOOL = Path(__file__).resolve().parent.parent / "tools" / "vcam_setup.py"


@pytest.fixture(scope="module")
def setup_tool():
    spec = importlib.util.spec_from_file_location("vcam_setup_under_test", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_tool_runs_as_a_script(tmp_path: Path) -> None:
    missing = make_sysfs(tmp_path, {"video0": ("Integrated Camera", False)})
    result = subprocess.run([sys.executable, str(TOOL), "--check", "--sysfs-root", str(missing), "--system", "Linux"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "MISSING" in result.stdout and MODPROBE_LINE in result.stdout


def test_setup_tool_check_and_print(setup_tool, tmp_path: Path, capsys, monkeypatch) -> None:
    present = make_sysfs(tmp_path / "present", {"video10": ("FaceMimic Camera", True)})
    missing = make_sysfs(tmp_path / "missing", {"video0": ("Integrated Camera", False)})
    assert setup_tool.main(["--check", "--sysfs-root", str(present), "--system", "Linux"]) == 0
    assert '"FaceMimic Camera" is /dev/video10' in capsys.readouterr().out
    # No terminal and no --yes: print the steps and change nothing.
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert setup_tool.main(["--sysfs-root", str(missing), "--system", "Linux"]) == 0
    out = capsys.readouterr().out
    assert MODPROBE_LINE in out and "Not run" in out
    assert setup_tool.main(["--sysfs-root", str(present), "--system", "Linux"]) == 0
    assert "Already set up" in capsys.readouterr().out
    assert setup_tool.main(["--system", "Windows"]) == 0
    out = capsys.readouterr().out
    assert "regsvr32" in out and "UnityCaptureName=FaceMimic Camera" in out
    assert setup_tool.main(["--system", "Darwin"]) == 0
    assert "OBS Virtual Camera" in capsys.readouterr().out


def test_linux_option_helpers_agree() -> None:
    assert vcam.linux_modprobe_options() == ["devices=1", "video_nr=10", "card_label=FaceMimic Camera",
                                             "exclusive_caps=1"]
    files = vcam.linux_persistence_files()
    assert files["/etc/modules-load.d/facemimic-v4l2loopback.conf"] == "v4l2loopback\n"
    assert files["/etc/modprobe.d/facemimic-v4l2loopback.conf"] == (
        'options v4l2loopback devices=1 video_nr=10 card_label="FaceMimic Camera" exclusive_caps=1\n')
    assert vcam.linux_modprobe_command() == MODPROBE_LINE
