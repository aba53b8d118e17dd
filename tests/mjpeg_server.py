"""A localhost MJPEG-over-HTTP camera for the capture tests: real frames through OpenCV's FFmpeg URL reader.

Each connection plays a script of (seconds, what) steps; `what` is a callable giving the frame for the n-th frame
of the step (BGR uint8), or "freeze" (keep the connection, send nothing), or "hang-up" (close the connection).
Connections after the script's end are served by `after` (a script for reconnects), or refused with a hang-up.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np

Step = tuple[float, "Callable[[int], np.ndarray] | str"]


class MjpegServer:
    """Serve MJPEG at http://127.0.0.1:<port>/ in a background thread; use as a context manager."""

    def __init__(self, script: Sequence[Step], *, after: Sequence[Step] | None = None, fps: float = 25.0,
                 answer: bool = True) -> None:
        self.script, self.after, self.fps, self.answer = list(script), list(after or []), fps, answer
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)
        self.port = self._socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> MjpegServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._socket.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            script = self.script if self.connections == 1 else self.after
            thread = threading.Thread(target=self._serve, args=(conn, script), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, script: Sequence[Step]) -> None:
        try:
            conn.recv(4096)
            if not self.answer:  # accepts, never answers: an address that hangs
                self._stop.wait(60)
                return
            if not script:
                return
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            for seconds, what in script:
                end = time.monotonic() + seconds
                if what == "freeze":
                    self._stop.wait(seconds)
                    continue
                if what == "hang-up":
                    return
                n = 0
                while time.monotonic() < end and not self._stop.is_set():
                    jpeg = cv2.imencode(".jpg", what(n), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                    conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    n += 1
                    time.sleep(1.0 / self.fps)
        except OSError:
            pass
        finally:
            conn.close()
