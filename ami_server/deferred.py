"""Timers and replies that come later: what a handler or a plugin holds while it waits."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .records import Response

__all__ = ["Deferred", "TimerHandle"]


class TimerHandle:
    """A scheduled callback; :meth:`cancel` prevents it from running.

    ``on_cancel`` (the loop's) is told of a cancellation, so that the loop can
    drop cancelled timers in bulk rather than keep them until they are due.
    """

    __slots__ = ("when", "callback", "cancelled", "_on_cancel")

    def __init__(self, when: float, callback: Callable[[], None],
                 on_cancel: Optional[Callable[[], None]] = None) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self._on_cancel is not None:
                self._on_cancel()

    def __lt__(self, other: "TimerHandle") -> bool:
        return self.when < other.when


class Deferred:
    """A reply that a handler completes later (R-2.12).

    Return it from a handler, then call :meth:`complete` exactly once, from
    the event loop (a timer, another action) or from any thread. A reply that
    arrives after ``action_timeout`` or after the session closed is dropped.
    """

    __slots__ = ("_resolve", "_lock", "_done", "_early")

    def __init__(self) -> None:
        self._resolve: Optional[Callable[[Response], None]] = None
        self._lock = threading.Lock()
        self._done = False
        self._early: Optional[Response] = None

    @property
    def done(self) -> bool:
        return self._done

    def complete(self, response: Response) -> bool:
        """Deliver the reply; returns False if it was already completed or cancelled."""
        with self._lock:
            if self._done:
                return False
            self._done = True
            resolve = self._resolve
            if resolve is None:
                self._early = response
                return True
        resolve(response)
        return True

    def _claim(self) -> Optional[Response]:
        """The reply, taken, if it was completed before anyone bound to it; else ``None``."""
        with self._lock:
            early, self._early = self._early, None
        return early

    def _bind(self, resolve: Callable[[Response], None]) -> None:
        with self._lock:
            self._resolve = resolve
            early, self._early = self._early, None
        if early is not None:
            resolve(early)

    def _cancel(self) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
            return True
