"""A fake clock and an event recorder for driving the core without sockets or real time."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple

from .channels import Headers
from .config import parse_config
from .core import Simulator


class FakeTimer:
    """What :meth:`FakeClock.call_later` returns: ``cancel()`` stops the callback."""

    __slots__ = ("when", "seq", "callback", "cancelled")

    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when, self.seq, self.callback, self.cancelled = when, seq, callback, False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: "FakeTimer") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class FakeClock:
    """Time that moves only when :meth:`advance` says so; timers fire in (time, creation) order."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._heap: List[FakeTimer] = []
        self._seq = 0

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        self._seq += 1
        timer = FakeTimer(self.now + max(delay, 0.0), self._seq, callback)
        heapq.heappush(self._heap, timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Run every timer due within ``seconds``, in order, moving the clock to each."""
        end = self.now + seconds
        while self._heap and self._heap[0].when <= end:
            timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = timer.when
            timer.callback()
        self.now = end

    def pending(self) -> int:
        return sum(1 for t in self._heap if not t.cancelled)


@dataclass(frozen=True)
class Recorded:
    """One event the core emitted."""

    name: str
    classes: str
    headers: Headers

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        for key, value in self.headers:
            if key == name:
                return value
        return default


def make_simulator(table: Optional[Mapping[str, Any]] = None, epoch: int = 1796224762) -> Tuple[Simulator, FakeClock, List[Recorded]]:
    """A simulator on a fake clock whose events are appended to the returned list."""
    clock = FakeClock()
    events: List[Recorded] = []
    sim = Simulator(parse_config(table), lambda n, c, h: events.append(Recorded(n, c, h)),
                    clock.call_later, clock.monotonic, lambda: float(epoch))
    return sim, clock, events
