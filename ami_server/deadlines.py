"""The login deadline (A-3.11) of every session in PREAUTH, kept with one timer.

A timer per session would cost a heap entry that stays, cancelled, until its
deadline -- 30 s by default, holding the closed session -- for nearly every
connection, since nearly every client logs in within milliseconds. Here a
session's deadline is one dictionary entry, removed when it logs in or
closes, and one timer waits for the earliest deadline.

Sessions accepted under the same ``auth_timeout`` reach their deadlines in
the order they came, so each timeout value keeps its sessions in one
insertion-ordered dict and the earliest deadline is at its front. A reload
that changes ``auth_timeout`` starts another dict; there is one per value
still waited on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Loop
    from .records import TimerHandle
    from .session import Session

__all__ = ["LoginDeadlines"]

_NEVER = float("inf")


class LoginDeadlines:
    """Calls ``expire(session)`` for each session still waiting when its deadline comes."""

    __slots__ = ("_loop", "_expire", "_waiting", "_timer", "_timer_when")

    def __init__(self, loop: "Loop", expire: Callable[["Session"], None]) -> None:
        self._loop = loop
        self._expire = expire
        #: auth_timeout -> {session key: (deadline, session)}, in deadline order.
        self._waiting: Dict[float, Dict[int, Tuple[float, "Session"]]] = {}
        self._timer: Optional["TimerHandle"] = None
        self._timer_when = _NEVER

    def __len__(self) -> int:
        return sum(map(len, self._waiting.values()))

    def add(self, session: "Session", timeout: float) -> None:
        """``session`` must log in within ``timeout`` seconds from now."""
        deadline = self._loop.time() + timeout
        waiting = self._waiting.get(timeout)
        if waiting is None:
            waiting = self._waiting[timeout] = {}
        waiting[session.key] = (deadline, session)
        session.login_timeout = timeout
        if deadline < self._timer_when:
            self._schedule(deadline)

    def discard(self, session: "Session") -> None:
        """``session`` logged in or closed: no deadline any more."""
        timeout = session.login_timeout
        if timeout is None:
            return
        session.login_timeout = None
        waiting = self._waiting.get(timeout)
        if waiting is not None:
            waiting.pop(session.key, None)
            if not waiting:
                del self._waiting[timeout]

    def _schedule(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - self._loop.time()), self._sweep)

    def _sweep(self) -> None:
        """The earliest deadline came: expire every session past its deadline, wait for the next."""
        self._timer = None
        self._timer_when = _NEVER
        now = self._loop.time()
        try:
            for timeout in list(self._waiting):
                while True:
                    waiting = self._waiting.get(timeout)
                    if not waiting:
                        break
                    deadline, session = next(iter(waiting.values()))
                    if deadline > now:
                        break
                    self.discard(session)
                    self._expire(session)
        finally:  # a failing expiry (reported by the loop) leaves the others waiting, still timed
            earliest = min((next(iter(w.values()))[0] for w in self._waiting.values()), default=_NEVER)
            if earliest < self._timer_when:
                self._schedule(earliest)
