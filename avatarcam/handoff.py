"""Bounded hand-offs between pipeline threads."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-item hand-off with the drop policy "latest wins": a new item replaces one not yet taken.

    Consumers wait for an item newer than the last one they saw, so there is never more than one stale item and
    no queueing latency. `dropped` counts items replaced before anyone took them.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._seq = 0
        self._taken_seq = 0
        self.dropped = 0
        self._closed = False

    def put(self, item: T) -> None:
        """Offer the newest item, replacing (and counting as dropped) one that was never taken."""
        with self._cond:
            if self._seq > self._taken_seq:
                self.dropped += 1
            self._item = item
            self._seq += 1
            self._cond.notify_all()

    def get(self, after_seq: int = 0, timeout_s: float | None = None) -> tuple[int, T | None]:
        """Wait until an item newer than `after_seq` exists (or timeout/close); returns (seq, item)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or self._closed, timeout=timeout_s)
            if self._seq > after_seq:
                self._taken_seq = max(self._taken_seq, self._seq)
                return self._seq, self._item
            return after_seq, None

    def peek(self) -> tuple[int, T | None]:
        """The newest item without waiting or marking it taken."""
        with self._cond:
            return self._seq, self._item

    def close(self) -> None:
        """Wake every waiter; later gets return immediately."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
