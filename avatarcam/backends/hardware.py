"""What this machine can run: TensorRT, CUDA devices, ONNX Runtime providers, torch; detected lazily, injectable."""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
from dataclasses import dataclass

_CUDA_SUCCESS = 0
# CUdevice_attribute values from cuda.h; stable since CUDA 2.x.
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")

TENSORRT_INSTALL_HINT = (
    "install TensorRT 10 or 11 on a machine with an NVIDIA GPU: "
    "`python -m pip install -r requirements-gpu.txt --extra-index-url https://pypi.nvidia.com` "
    "(GPU users only; the CPU path needs nothing extra)"
)
"""The fix named by every error that needs TensorRT where it is not installed."""


@dataclass(frozen=True)
class HardwareFacts:
    """The runtimes and devices available here; build one by hand in tests, or call detect_hardware()."""

    tensorrt_version: str | None = None
    """tensorrt.__version__, or None when `import tensorrt` fails."""
    cuda_available: bool = False
    """An NVIDIA driver reports at least one CUDA device."""
    gpu_name: str | None = None
    """Name of CUDA device 0, e.g. 'NVIDIA GeForce RTX 3060'."""
    compute_capability: tuple[int, int] | None = None
    """(major, minor) of CUDA device 0, e.g. (8, 6)."""
    onnxruntime_providers: tuple[str, ...] = ()
    """onnxruntime.get_available_providers(); empty when onnxruntime is not installed."""
    torch_available: bool = False
    """torch can be imported."""
    torch_cuda: bool = False
    """torch is a CUDA build and sees the device (the TensorRT runner and pinned buffers use torch.cuda)."""

    @property
    def onnxruntime_available(self) -> bool:
        """onnxruntime can be imported."""
        return bool(self.onnxruntime_providers)

    @property
    def onnxruntime_cuda(self) -> bool:
        """onnxruntime was built with the CUDA execution provider."""
        return "CUDAExecutionProvider" in self.onnxruntime_providers

    def summary(self) -> str:
        """One line for logs."""
        gpu = "no CUDA device"
        if self.cuda_available:
            cc = ""
            if self.compute_capability is not None:
                cc = f" (sm_{self.compute_capability[0]}{self.compute_capability[1]})"
            gpu = f"{self.gpu_name or 'CUDA device'}{cc}"
        return (
            f"gpu: {gpu}; tensorrt: {self.tensorrt_version or 'not installed'}; "
            f"onnxruntime providers: {list(self.onnxruntime_providers) or 'not installed'}; "
            f"torch: {('cuda' if self.torch_cuda else 'cpu') if self.torch_available else 'not installed'}"
        )


def _module_importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        # ValueError: the module is in sys.modules as None (blocked) or has no spec.
        return False


def _tensorrt_version() -> str | None:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # noqa: BLE001 - a broken install (missing libnvinfer) raises OSError etc.; all mean "not usable"
        return None
    return str(getattr(trt, "__version__", "unknown"))


def _onnxruntime_providers() -> tuple[str, ...]:
    try:
        ort = importlib.import_module("onnxruntime")
    except Exception:  # noqa: BLE001 - same reasoning as for tensorrt
        return ()
    return tuple(ort.get_available_providers())


def _probe_cuda_driver() -> tuple[str, tuple[int, int]] | None:
    """Ask the CUDA driver directly (no torch import): name and compute capability of device 0, or None."""
    for library in _DRIVER_LIBRARIES:
        try:
            driver = ctypes.CDLL(library)
        except OSError:
            continue
        try:
            if driver.cuInit(0) != _CUDA_SUCCESS:
                return None
            count = ctypes.c_int(0)
            if driver.cuDeviceGetCount(ctypes.byref(count)) != _CUDA_SUCCESS or count.value < 1:
                return None
            device = ctypes.c_int(0)
            if driver.cuDeviceGet(ctypes.byref(device), 0) != _CUDA_SUCCESS:
                return None
            name = ctypes.create_string_buffer(256)
            driver.cuDeviceGetName(name, len(name), device)
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            driver.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
            driver.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
            return name.value.decode(errors="replace"), (major.value, minor.value)
        except AttributeError:
            return None
    return None


def _torch_sees_cuda() -> bool:
    try:
        torch = importlib.import_module("torch")
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a CPU-only or broken torch simply has no CUDA
        return False


def detect_hardware() -> HardwareFacts:
    """Probe this machine once; imports tensorrt/onnxruntime if present, torch only when a CUDA device exists."""
    device = _probe_cuda_driver()
    torch_available = _module_importable("torch")
    # Importing torch costs seconds; only worth it when there is a GPU it could use.
    torch_cuda = device is not None and torch_available and _torch_sees_cuda()
    return HardwareFacts(
        tensorrt_version=_tensorrt_version(),
        cuda_available=device is not None,
        gpu_name=None if device is None else device[0],
        compute_capability=None if device is None else device[1],
        onnxruntime_providers=_onnxruntime_providers(),
        torch_available=torch_available,
        torch_cuda=torch_cuda,
    )
