"""A small single-threaded event loop on stdlib ``selectors``.

It owns readiness polling, timers, a ready queue, and a wake-up socketpair
through which other threads hand callbacks to the loop. It never sleeps:
waiting happens only inside ``selector.select`` with the next timer's delay.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import selectors
import socket
import threading
import time
from typing import Any, Callable, Deque, List, Optional, Tuple

from .records import TimerHandle

__all__ = ["Loop", "MAX_DELAY"]

#: The longest timer delay accepted: about 68 years, Asterisk's int seconds.
MAX_DELAY = 2147483647.0
#: Cancelled timers are dropped from the heap in bulk once there are at least this many
#: and they are half of it (a timer per request, cancelled when its reply comes, would
#: otherwise keep its callback, and what that holds, until its deadline).
PURGE_MIN_CANCELLED = 512


def _reraise(exc: BaseException) -> None:
    raise exc


class Loop:
    """Readiness, timers and cross-thread callbacks for one server."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: The monotonic clock timers run on (a test harness may drive its own).
        self.time = clock
        self.selector = selectors.DefaultSelector()
        #: (when, sequence, handle): tuples, so that the heap compares floats, not handles.
        self._timers: List[Tuple[float, int, TimerHandle]] = []
        self._timer_seq = itertools.count()
        #: Cancelled timers still in the heap (counted by TimerHandle.cancel, from any thread).
        self._cancelled = 0
        self._ready: Deque[Callable[[], None]] = collections.deque()
        self._threadsafe: Deque[Callable[[], None]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        self.thread_id: Optional[int] = None
        self.closed = False
        #: Called with any exception a callback raised; the loop keeps running.
        self.on_error: Callable[[BaseException], None] = _reraise

    # -- scheduling ---------------------------------------------------------
    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the next turn (loop thread only)."""
        self._ready.append(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds; from another thread the timer is handed over."""
        if not 0 <= delay < MAX_DELAY:  # also refuses NaN; a huge delay would overflow the clock
            if delay < 0:
                delay = 0.0
            else:
                raise ValueError(f"call_later delay must be a finite number of seconds below {MAX_DELAY:g}")
        handle = TimerHandle(self.time() + delay, callback, self._timer_cancelled)
        entry = (handle.when, next(self._timer_seq), handle)
        if self.in_loop_thread():
            heapq.heappush(self._timers, entry)
        else:
            self.call_soon_threadsafe(lambda: heapq.heappush(self._timers, entry))
        return handle

    def _timer_cancelled(self) -> None:
        self._cancelled += 1

    def pending_timers(self) -> int:
        """Timers in the heap, cancelled ones not yet dropped included (for tests and metrics)."""
        return len(self._timers)

    def _purge_cancelled(self) -> None:
        """Drop every cancelled timer from the heap at once (loop thread)."""
        self._timers = [entry for entry in self._timers if not entry[2].cancelled]
        heapq.heapify(self._timers)
        self._cancelled = 0

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Hand ``callback`` to the loop from any thread and wake it up."""
        self._threadsafe.append(callback)
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def has_callbacks(self) -> bool:
        """Whether callbacks wait for the next turn (timers not counted)."""
        return bool(self._ready or self._threadsafe)

    def in_loop_thread(self) -> bool:
        return self.thread_id is None or threading.get_ident() == self.thread_id

    def _drain_wakeup(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self._wake_lock:
            self._wake_pending = False

    # -- running ------------------------------------------------------------
    def run_once(self, max_wait: Optional[float] = None) -> None:
        """Poll once (no longer than the next timer or ``max_wait``), then run what is due."""
        self.thread_id = threading.get_ident()
        timeout: Optional[float]
        timers = self._timers
        if self._cancelled >= PURGE_MIN_CANCELLED and self._cancelled * 2 >= len(timers):
            self._purge_cancelled()
            timers = self._timers
        if self._ready or self._threadsafe:
            timeout = 0.0
        else:
            while timers and timers[0][2].cancelled:
                heapq.heappop(timers)
                self._cancelled = max(0, self._cancelled - 1)
            timeout = max_wait
            if timers:
                delay = max(0.0, timers[0][0] - self.time())
                timeout = delay if timeout is None else min(timeout, delay)
        for key, mask in self.selector.select(timeout):
            try:
                key.data(mask)
            except Exception as exc:  # noqa: BLE001 - one bad callback must not stop the loop
                self.on_error(exc)
        now = self.time()
        while timers and (timers[0][0] <= now or timers[0][2].cancelled):
            handle = heapq.heappop(timers)[2]
            if handle.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
            else:
                handle.cancelled = True  # due: a later cancel() is a no-op, and not counted
                self._ready.append(handle.callback)
        while self._threadsafe:
            self._ready.append(self._threadsafe.popleft())
        for _ in range(len(self._ready)):
            try:
                self._ready.popleft()()
            except Exception as exc:  # noqa: BLE001
                self.on_error(exc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def register(self, sock: Any, events: int, callback: Callable[[int], None]) -> None:
        self.selector.register(sock, events, callback)

    def modify(self, sock: Any, events: int, callback: Callable[[int], None]) -> None:
        self.selector.modify(sock, events, callback)

    def unregister(self, sock: Any) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
