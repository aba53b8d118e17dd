"""Child process for tests/test_app_x11.py: run FaceMimic (run.py's main) with a recording virtual camera.

    python tests/app_child.py THUMBS.npy [run.py arguments...]

A pyvirtualcam backend named 'v4l2loopback' is registered through pyvirtualcam.register_backend, so the app's real
virtual-camera path (VirtualCameraSink -> pyvirtualcam.Camera -> backend) runs without the kernel module. Every
frame the camera receives is reduced to a 32x18 thumbnail; at exit they are saved with their times.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import pyvirtualcam

    out_path = Path(sys.argv[1])
    thumbs: list[np.ndarray] = []
    times: list[float] = []
    lock = threading.Lock()

    class RecordingLoopback:
        """pyvirtualcam's backend protocol: keyword-only constructor, send, close, device, native_fourcc."""

        def __init__(self, *, width, height, fps, fourcc, device, **kwargs):
            self._device, self._fourcc = device, fourcc
            self._shape = (height, width, 3)  # the app sends BGR, pyvirtualcam passes it on as flat bytes

        def send(self, frame):
            small = cv2.resize(frame.reshape(self._shape), (32, 18), interpolation=cv2.INTER_AREA)
            with lock:
                thumbs.append(small)
                times.append(time.monotonic())

        def close(self):
            pass

        def device(self):
            return self._device

        def native_fourcc(self):
            return self._fourcc

    pyvirtualcam.register_backend("v4l2loopback", RecordingLoopback)
    from avatarcam.cli import main as run_main

    try:
        return run_main(sys.argv[2:])
    finally:
        with lock:
            np.save(out_path, np.array(thumbs, np.uint8))
            np.save(out_path.with_suffix(".times.npy"), np.array(times))


if __name__ == "__main__":
    sys.exit(main())
