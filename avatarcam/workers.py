"""The one thread owner: every background stage (capture, landmarks, render, publishers, avatar loading) is a Worker.

A Worker is a named thread with start()/stop(). The exception that ends it is kept: `failure` says which worker
stopped and why (the status line and the log show it), and raise_if_failed() re-raises it in the caller's thread,
a FaceMimicError as it is (its message already names the fix) and anything else as a WorkerError naming the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Self

from avatarcam.errors import FaceMimicError, WorkerError

log = logging.getLogger(__name__)


class RateLimitedLog:
    """Logs a recurring problem at most once per `period_s`, with a count of the repeats."""

    def __init__(self, period_s: float = 5.0, *, logger: logging.Logger | None = None):
        self.period_s = period_s
        self._log = logger or log
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.period_s:
            suffix = f" (and {self._suppressed} more)" if self._suppressed else ""
            self._log.warning(message + suffix, *args)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1


class Worker:
    """A named thread with start()/stop(); the exception that ends it is kept for the owner (see module doc).

    Subclasses implement _run() (loop until self._stop is set) and, when _run() can block on something other than
    self._stop, _wake() to unblock it.
    """

    name = "worker"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        """The exception that ended the thread, or None."""

    # -- lifecycle

    def start(self) -> Self:
        """Start the thread (idempotent); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._guarded, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        """Ask the thread to finish and wait up to timeout_s for it. Idempotent; safe from the thread itself."""
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("the %s thread did not stop within %.1f s (a call in it is blocking)", self.name,
                            timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def is_running(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # -- failures

    @property
    def failure(self) -> str | None:
        """'<name> stopped: <error type>: <message>' once the thread has died on an exception, else None."""
        if self.error is None:
            return None
        return f"{self.name} stopped: {type(self.error).__name__}: {self.error}"

    def raise_if_failed(self) -> None:
        """Re-raise, in the caller's thread, the exception that stopped this worker (see the module doc)."""
        error = self.error
        if error is None:
            return
        if isinstance(error, FaceMimicError):
            raise error
        raise self._wrap(error) from error

    def _wrap(self, error: BaseException) -> FaceMimicError:
        """The error raise_if_failed() raises for an exception that is not a FaceMimicError."""
        return WorkerError(f"the {self.name} thread stopped: {type(error).__name__}: {error}: this is a bug; "
                           "the log has its traceback")

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the owner: failure, raise_if_failed()
            self.error = exc
            if isinstance(exc, FaceMimicError):
                log.error("the %s thread stopped: %s: %s", self.name, type(exc).__name__, exc)
            else:
                log.exception("the %s thread stopped: %s: %s", self.name, type(exc).__name__, exc)

    def _wake(self) -> None:
        """Unblock _run() so that it sees the stop request; nothing by default."""

    def _run(self) -> None:
        raise NotImplementedError


class TaskWorker(Worker):
    """A Worker that runs one function to its end (e.g. loading the avatars folder)."""

    def __init__(self, name: str, task: Callable[[], None]) -> None:
        super().__init__(name)
        self._task = task

    def _run(self) -> None:
        self._task()


def first_failure(workers: list[Worker]) -> Worker | None:
    """The first worker of `workers` whose thread has died on an exception, or None."""
    return next((w for w in workers if w.error is not None), None)
