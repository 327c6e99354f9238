"""The session core: every session's state machine, without sockets (spec §1.5, §2, §3, §7).

Bytes come in through :meth:`SessionCore.receive` and :meth:`end_of_input`;
bytes go out through each session's ``out`` buffer, which the session's
:class:`~ami_server.session.Link` sends when the loop turn ends
(:meth:`~ami_server.outbox.Outbox.flush`). Everything else the core needs
-- timers, hooks, the dispatcher -- is handed to it, so a test can drive
sessions in memory (:mod:`ami_server.testing`).
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set

from .deadlines import LoginDeadlines
from .outbox import Outbox
from .security import new_session_id
from .session import AUTHENTICATED, CLOSING, Link, Pipeline, Session
from .session_audit import SessionAudit

if TYPE_CHECKING:  # pragma: no cover
    from .dispatch import Dispatcher
    from .loop import Loop

__all__ = ["SessionCore", "MESSAGES_PER_TURN", "LINGER_SECONDS"]

#: Messages of one session dispatched per loop turn before others get their turn.
MESSAGES_PER_TURN = 64
#: How long a closing session may take to hand its last bytes to its transport.
LINGER_SECONDS = 2.0


def _no_hook(**kwargs: Any) -> None:
    pass


def _forget(counts: Dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class SessionCore:
    """All sessions of one server: open, feed input, dispatch in order, close."""

    def __init__(self, loop: "Loop", settings: Callable[[], Any], audit: SessionAudit) -> None:
        self.loop = loop
        self._settings = settings
        self.audit = audit
        #: Every session by key; the authenticated ones again (the event recipients).
        self.sessions: Dict[int, Session] = {}
        self.authenticated: Dict[int, Session] = {}
        self.outbox = Outbox(settings().output_queue_limit, self.authenticated)
        self.outbox.on_overflow = self._slow_consumer
        self.unauthenticated = 0
        #: Logged-in sessions per user key, and how many of them logged in under a single-login rule.
        self.user_sessions: Dict[str, int] = {}
        self.single_users: Dict[str, int] = {}
        self.stats = {"events_dropped": 0, "slow_consumer_disconnects": 0, "sessions_accepted": 0}
        #: Sessions revoked and re-classed so far (a reload reports its share).
        self.revocations = 0
        self.reclassed = 0
        self._session_ids: Set[str] = set()
        self._keys = itertools.count(1)
        self.deadlines = LoginDeadlines(loop, self._auth_timeout)
        self.dispatcher: "Dispatcher"  # set by the server once both exist
        self.shutting_down = False
        #: Hooks: on_session_open(session=info), on_session_close(session=info, reason=...).
        self.on_open: Callable[..., None] = _no_hook
        self.on_close: Callable[..., None] = _no_hook

    # -- opening ----------------------------------------------------------
    def accept(self, link: Link, remote: Any, local: Any, remote_address: str, local_address: str,
               transport: str) -> Optional[Session]:
        """A connection arrived: a session in PREAUTH, or ``None`` when ``auth_limit`` is reached (A-3.12)."""
        settings = self._settings()
        if self.unauthenticated >= settings.auth_limit:
            from .acl import ip_of

            self.audit.record(
                "AuthLimitReached", remote_address=remote_address, local_address=local_address,
                remote_ip=ip_of(remote), limit=settings.auth_limit,
            )
            return None
        session = Session(
            next(self._keys), link, new_session_id(self._session_ids),
            remote, local, remote_address, local_address, transport, time.time(),
        )
        self.sessions[session.key] = session
        self._session_ids.add(session.session_id)
        self.unauthenticated += 1
        self.stats["sessions_accepted"] += 1
        # A TLS handshake counts against auth_timeout (P-1.1, A-3.11).
        self.deadlines.add(session, settings.auth_timeout)
        return session

    def open(self, session: Session) -> None:
        """The connection is a session now (after any TLS handshake): hooks, audit, banner (P-1.1)."""
        session.opened = True
        self.audit.record("SessionOpened", self.audit.who(session))
        if self.on_open is not _no_hook:
            self.on_open(session=session.info())
        self.outbox.write(session, f"Asterisk Call Manager/{self._settings().ami_version}\r\n".encode())

    def _auth_timeout(self, session: Session) -> None:
        if session.closed or session.state == AUTHENTICATED or session.close_after_flush:
            return
        self.audit.record("AuthTimeout", self.audit.who(session), timeout=self._settings().auth_timeout)
        self.close(session, "auth timeout")

    def logged_in(self, session: Session) -> None:
        """The session is AUTHENTICATED now: an event recipient, counted for its user (A-3.13)."""
        self.unauthenticated -= 1
        self.deadlines.discard(session)
        self.authenticated[session.key] = session
        key = session.user_key
        self.user_sessions[key] = self.user_sessions.get(key, 0) + 1
        if session.single_login:
            self.single_users[key] = self.single_users.get(key, 0) + 1

    # -- input ------------------------------------------------------------
    def receive(self, session: Session, data: bytes) -> None:
        """Bytes from the peer (never empty: end of input is :meth:`end_of_input`)."""
        if session.state == CLOSING:
            return  # failed login or logoff: input is discarded (A-3.8, B-5.2)
        run = session.current
        if run is None and len(session.out) <= self.outbox.limit:
            # The common read: one whole request, answered without buffering it.
            message = session.parser.take(data)
            if message is not None:
                self.dispatcher.dispatch(session, message)
                self.input_settled(session, session.current is None and session.state != CLOSING)
                return
        else:
            session.parser.feed(data)
            if run is not None and run.wait_reply is not None:
                self.dispatcher.complete(session, run, run.wait_reply)
                return
        # The requests answered from this read share one clock reading
        # (ActionContext.timestamp); the scope closes whatever happens.
        dispatcher = self.dispatcher
        dispatcher.read_stamp = ""
        try:
            self.process_input(session)
        finally:
            dispatcher.read_stamp = None

    def end_of_input(self, session: Session) -> None:
        """The peer closed its side: answer what is complete, then close (P-1.17)."""
        session.eof = True
        session.link.update()
        if session.current is not None and session.current.wait_reply is not None:
            # A wait ended by the peer going away: nothing is sent (B-5.11).
            self.close(session, "peer closed")
            return
        self.process_input(session)

    def process_input(self, session: Session) -> None:
        """Dispatch buffered messages one at a time while the session may run one (R-2.9, Q-7.7).

        At most ``MESSAGES_PER_TURN`` messages of one session are handled per
        loop turn; the rest wait for the next turn, so one client pipelining
        hundreds of requests cannot delay everyone else's replies. While
        only concurrent replies are outstanding (a :class:`Pipeline`) the
        next messages are dispatched behind them, until one may not run yet.
        """
        limit = self.outbox.limit
        exhausted = False
        budget = MESSAGES_PER_TURN
        next_message = session.parser.next_message
        dispatch = self.dispatcher.dispatch
        out = session.out
        # A closed session is CLOSING too (close), so one state test covers both.
        while session.state != CLOSING:
            current = session.current
            if current is not None and (current.__class__ is not Pipeline or current.parked):
                break  # one action at a time
            if len(out) > limit:
                session.output_paused = True  # output_sent resumes once the output drained
                break
            if not budget:
                if not session.resume_pending:
                    session.resume_pending = True
                    self.loop.call_soon(lambda: self._resume_input(session))
                break
            budget -= 1
            message = next_message()
            if message is None:
                exhausted = True
                break
            if current is None:
                dispatch(session, message)
            else:
                self.dispatcher.dispatch_behind(session, current, message)
        self.input_settled(session, exhausted)

    def input_settled(self, session: Session, exhausted: bool) -> None:
        """After dispatching: ``exhausted`` when every buffered message was taken."""
        if session.closed:
            return
        if session.eof and exhausted and session.current is None:
            # P-1.17: every complete message was answered; a partial one is dropped.
            self.close_after_flush(session, "peer closed")
            return
        session.link.update()

    def _resume_input(self, session: Session) -> None:
        session.resume_pending = False
        if not session.closed:
            self.process_input(session)

    def resume_soon(self, session: Session) -> None:
        """An action ended outside a read (deferred, blocking, timer): take the next request next turn."""
        self.loop.call_soon(lambda: self._resume_input(session))

    # -- output -----------------------------------------------------------
    def output_sent(self, session: Session) -> None:
        """The transport took bytes: close a closing session once drained, or resume dispatching (Q-7.7)."""
        if not session.out and session.close_after_flush:
            self.close(session, session.close_reason)
            return
        if session.output_paused and len(session.out) <= self.outbox.limit:
            session.output_paused = False
            run = session.current
            if run is not None and run.stream is not None:
                self.dispatcher.stream(session, run)  # a long list reply goes on
            else:
                self.process_input(session)

    # -- closing ----------------------------------------------------------
    def close_after_flush(self, session: Session, reason: str) -> None:
        """Enter CLOSING; close once the output is sent, or after LINGER_SECONDS."""
        self.outbox.settle()  # what was published before goes out before the close
        session.state = CLOSING
        session.close_after_flush = True
        session.close_reason = reason
        session.changed()
        if not session.out:
            self.close(session, reason)
            return
        if session.linger_timer is None:
            session.linger_timer = self.loop.call_later(LINGER_SECONDS, lambda: self.close(session, reason))
        session.link.update()

    def close(self, session: Session, reason: str) -> None:
        """Close at once; run ``on_session_close`` exactly once (Q-7.9)."""
        if session.closed:
            return
        session.closed = True
        was_authenticated = session.key in self.authenticated
        if was_authenticated:
            _forget(self.user_sessions, session.user_key)
            if session.single_login:
                _forget(self.single_users, session.user_key)
        self.sessions.pop(session.key, None)
        self._session_ids.discard(session.session_id)
        self.authenticated.pop(session.key, None)
        if not was_authenticated:
            self.unauthenticated -= 1
        self.deadlines.discard(session)
        if session.linger_timer is not None:
            session.linger_timer.cancel()
        run = session.current
        if run is not None:
            run.cancel()  # every outstanding run of a Pipeline too: late replies are dropped
        session.current = None
        session.link.close()
        # Unsent bytes can never be sent now: free them at once (a cut-off slow consumer holds up to
        # output_queue_limit), whatever still refers to the session.
        session.out = bytearray()
        session.pending.clear()
        session.pending_bytes = 0
        session.state = CLOSING
        session.changed()
        if not session.opened:
            return  # a TLS handshake that never completed: never a session for the hooks
        self.audit.record(
            "SessionClosed", self.audit.who(session), reason=reason,
            duration=round(time.time() - session.opened_at, 3),
        )
        if self.on_close is not _no_hook:
            self.on_close(session=session.info(), reason=reason)

    def _slow_consumer(self, session: Session) -> None:
        """Q-7.6: an event would take the session past its output limit: cut it off."""
        self.stats["slow_consumer_disconnects"] += 1
        self.stats["events_dropped"] += 1 + len(session.pending)
        self.audit.record(
            "SlowConsumerDisconnect", self.audit.who(session),
            buffered=len(session.out) + session.pending_bytes, limit=self.outbox.limit,
        )
        self.close(session, "slow consumer")

    def close_all(self, reason: str) -> None:
        for session in list(self.sessions.values()):
            self.close(session, reason)

    # -- administration ---------------------------------------------------
    def find(self, session_id: str) -> Optional[Session]:
        for session in self.sessions.values():
            if session.session_id == session_id and session.opened and not session.closed:
                return session
        return None

    def revoke(self, session_id: str, reason: str) -> bool:
        """Close the session called ``session_id`` at once (audited ``SessionRevoked``)."""
        session = self.find(session_id)
        if session is None:
            return False
        self.audit.record("SessionRevoked", self.audit.who(session), reason=reason)
        self.revocations += 1
        self.close(session, "revoked")
        return True

    def set_classes(self, session_id: str, read: int, write: int) -> bool:
        """New read and write classes for a logged-in session (events published from now on)."""
        session = self.find(session_id)
        if session is None or session.state != AUTHENTICATED:
            return False
        if (session.read, session.write) != (read, write):
            self.outbox.settle()
            session.read, session.write = read, write
            session.changed()
            self.reclassed += 1
        return True

    def infos(self) -> List[Any]:
        return [s.info() for s in self.sessions.values() if s.opened]

    def busy(self) -> bool:
        """Output waits to be sent, or an action is still running (graceful shutdown, Q-7.8)."""
        return any(s.out or (s.current is not None and not s.closed) for s in self.sessions.values())
