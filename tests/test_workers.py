"""The one thread owner: a worker that dies is reported by name with its own error, and the live app shows it."""

from __future__ import annotations

import logging
import threading

import cv2
import pytest

import avatarcam.capture as capture_module
from avatarcam.app import App
from avatarcam.config import load_config
from avatarcam.errors import DeviceError, FaceMimicError, WorkerError
from avatarcam.workers import TaskWorker, Worker, first_failure
from tests.conftest import D12


class SourceBroke(FaceMimicError):
    """What a capture driver raises here; not a DeviceError, so nothing on the way may treat it as a retry."""


def test_a_facemimic_error_is_re_raised_as_it_is_and_named(caplog):
    error = SourceBroke("camera 7 vanished: plug it back in")

    def fail() -> None:
        raise error

    worker = TaskWorker("capture", fail)
    with caplog.at_level(logging.ERROR, logger="avatarcam.workers"):
        worker.start()
        worker.stop()
    assert worker.failure == "capture stopped: SourceBroke: camera 7 vanished: plug it back in"
    assert "the capture thread stopped: SourceBroke: camera 7 vanished" in caplog.text
    with pytest.raises(SourceBroke) as raised:
        worker.raise_if_failed()
    assert raised.value is error  # not wrapped in RuntimeError (or anything else)
    assert first_failure([Worker("idle"), worker]) is worker


def test_any_other_exception_becomes_a_worker_error_naming_the_thread():
    def fail() -> None:
        raise ZeroDivisionError("division by zero")

    worker = TaskWorker("landmarks", fail).start()
    worker.stop()
    with pytest.raises(WorkerError, match="the landmarks thread stopped: ZeroDivisionError: division by zero") as raised:
        worker.raise_if_failed()
    assert isinstance(raised.value.__cause__, ZeroDivisionError)


def test_stop_is_idempotent_and_wakes_the_thread():
    class Waiting(Worker):
        name = "waiting"

        def _run(self) -> None:
            self._stop.wait()

    worker = Waiting().start()
    assert worker.is_running
    worker.stop(timeout_s=2.0)
    worker.stop()
    assert not worker.is_running and worker.failure is None
    worker.raise_if_failed()  # nothing to raise


class BreaksAfter:
    """The real decoder of a video file whose reads raise SourceBroke after `frames` frames (a camera that dies)."""

    def __init__(self, path: str, frames: int) -> None:
        self._capture = cv2.VideoCapture(path)
        self._left = frames
        self.broke = threading.Event()

    def read(self):
        if self._left == 0:
            self.broke.set()
            raise SourceBroke("camera 7 vanished: plug it back in")
        self._left -= 1
        return self._capture.read()

    def get(self, prop):
        return self._capture.get(prop)

    def set(self, prop, value):
        return self._capture.set(prop, value)

    def isOpened(self):  # noqa: N802 - cv2.VideoCapture's name
        return self._capture.isOpened()

    def release(self):
        self._capture.release()


def test_the_app_names_a_dead_capture_thread_on_the_status_line_and_in_the_log(tmp_path, caplog, monkeypatch,
                                                                               model_path):
    source = BreaksAfter(str(D12), frames=12)
    monkeypatch.setattr(capture_module, "open_capture", lambda spec, **kwargs: source)
    config = load_config(None, {"capture.source": str(D12), "capture.loop": False, "output.preview": "off",
                                "output.vcam": "off", "output.video": str(tmp_path / "out.mp4"),
                                "hotkeys.enabled": False})
    app = App(config, duration_s=60)
    with caplog.at_level(logging.INFO), pytest.raises(SourceBroke) as raised:
        app.run()
    assert source.broke.is_set()
    assert str(raised.value) == "camera 7 vanished: plug it back in"  # the original error, not a RuntimeError
    assert "the capture thread stopped: SourceBroke: camera 7 vanished" in caplog.text
    assert "stopping: capture stopped: SourceBroke: camera 7 vanished" in caplog.text
    assert app.status is not None and app._last is not None, "frames were rendered before the camera died"
    line = app.status(app._last).text()
    assert "capture stopped: SourceBroke: camera 7 vanished: plug it back in" in line, line
    assert not app.capture.is_running and not app.render_worker.is_running  # everything was stopped
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_a_device_error_keeps_its_type():
    # The camera's own errors are FaceMimicErrors too: the owner sees DeviceError, with its fix, unchanged.
    error = DeviceError("camera 0 stopped delivering frames: check the cable")
    worker = TaskWorker("capture", lambda: (_ for _ in ()).throw(error)).start()
    worker.stop()
    with pytest.raises(DeviceError) as raised:
        worker.raise_if_failed()
    assert raised.value is error
