"""Per-connection state: authentication, classes, mask, buffers (spec §2-§3).

A :class:`Session` holds no socket: the connection layer (or an in-memory
link in tests) moves its bytes. ``link`` is that transport, seen through
the small :class:`Link` interface.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Mapping, Optional, Tuple, Union

from .acl import ip_of
from .filters import EventFilters
from .privileges import ALL
from .protocol import Parser
from .records import Deferred, Response, SessionInfo, TimerHandle

if TYPE_CHECKING:  # pragma: no cover
    from .audit import AuditFields
    from .plugins import RegisteredAction

__all__ = ["Session", "ActionRun", "Pipeline", "EventFilters", "Link", "PREAUTH", "AUTHENTICATED", "CLOSING"]

PREAUTH = "PREAUTH"
AUTHENTICATED = "AUTHENTICATED"
CLOSING = "CLOSING"


class Link:
    """What the session core asks of a session's transport (a socket, or memory in tests)."""

    __slots__ = ()

    def send(self) -> None:
        """Hand the session's ``out`` bytes to the peer as far as it takes them now."""

    def update(self) -> None:
        """Input or output state changed (eof, buffered input, blocked output): adjust reading."""

    def close(self) -> None:
        """The session is closed: release the transport; nothing more is sent."""


class ActionRun:
    """The action a session is running; replies for a stale run are discarded."""

    __slots__ = ("name", "action_id", "started", "deferred", "timer", "wait_reply", "entry", "audit", "stream")

    def __init__(self, name: str, action_id: str, started: float, entry: Optional["RegisteredAction"], audit: bool) -> None:
        self.name = name
        self.action_id = action_id
        self.started = started
        self.entry = entry
        self.audit = audit
        self.deferred: Optional[Deferred] = None
        self.timer: Optional[TimerHandle] = None
        #: For WaitEvent: the reply to write when the wait ends.
        self.wait_reply: Optional[Response] = None
        #: A long list reply being written a slice per loop turn (see Dispatcher.finish).
        self.stream: Any = None

    def cancel(self) -> None:
        """The session closed: no timeout, and a late reply is refused."""
        if self.timer is not None:
            self.timer.cancel()
        if self.deferred is not None:
            self.deferred._cancel()


#: A reply rendered and waiting for its turn: (parts, completion, response).
Rendered = Tuple[List[bytes], bytes, Response]


class Pipeline(ActionRun):
    """The replies a session owes while ``concurrent`` actions run, in request order (R-2.9).

    Set as ``session.current`` while any is outstanding, so that everything
    that asks "does an action run?" (held events, shutdown, end of input)
    sees one; the core still dispatches the session's next requests, but
    only concurrent actions run: any other request is put back (``parked``)
    until every earlier reply is written. ``order`` holds, in request order,
    the runs (their rendered reply in ``replies``, ``None`` until it came)
    and the rendered error replies of requests that never ran a handler.
    """

    __slots__ = ("order", "replies", "parked")

    def __init__(self, first: ActionRun) -> None:
        super().__init__("(concurrent replies)", "", 0.0, None, False)
        self.order: Deque[Union[ActionRun, bytes]] = deque((first,))
        self.replies: Dict[ActionRun, Optional[Rendered]] = {first: None}
        #: A request that may not run concurrently was put back into the parser.
        self.parked = False

    def pending(self, run: ActionRun) -> bool:
        """``run`` belongs to this pipeline and its reply has not come yet."""
        return run in self.replies and self.replies[run] is None

    def cancel(self) -> None:
        for run in self.replies:
            run.cancel()
        self.replies.clear()
        self.order.clear()


class Session:
    """One client session.

    ``out`` holds bytes not yet accepted by the transport; ``pending`` holds
    event blocks that became deliverable while an action ran (R-2.10).
    """

    __slots__ = (
        "key", "link", "session_id", "transport", "remote", "local", "remote_address",
        "local_address", "state", "parser", "out", "pending", "pending_bytes",
        "username", "user_key", "read", "write", "mask", "challenge", "login_time",
        "current", "eof", "close_after_flush", "close_reason", "login_timeout",
        "linger_timer", "closed", "_info", "opened_at", "opened",
        "filters", "backend", "peer_ip", "resume_pending", "who", "receives",
        "output_paused", "single_login", "attributes",
    )

    def __init__(self, key: int, link: Link, session_id: str, remote: Any, local: Any,
                 remote_address: str, local_address: str, transport: str, opened_at: float) -> None:
        self.key = key
        self.link = link
        self.session_id = session_id
        self.transport = transport
        self.remote = remote
        self.local = local
        self.remote_address = remote_address
        #: The client's IP address, IPv4-mapped IPv6 shown as IPv4.
        self.peer_ip = ip_of(remote)
        self.local_address = local_address
        self.state = PREAUTH
        self.parser = Parser()
        self.out = bytearray()
        self.pending: List[bytes] = []
        self.pending_bytes = 0
        self.username = ""
        self.user_key = ""
        self.read = 0
        self.write = 0
        self.mask = ALL
        self.challenge: Optional[str] = None
        self.login_time: Optional[float] = None
        self.current: Optional[ActionRun] = None
        self.eof = False
        self.close_after_flush = False
        self.close_reason = ""
        #: The auth_timeout this session must log in within while it waits (A-3.11), else None.
        self.login_timeout: Optional[float] = None
        self.linger_timer: Optional[TimerHandle] = None
        self.closed = False
        self._info: Optional[SessionInfo] = None
        self.opened_at = opened_at
        #: on_session_open ran (so on_session_close must run exactly once).
        self.opened = False
        #: Event filters added with the Filter action (B-5.13), or None.
        self.filters: Optional[EventFilters] = None
        #: The authentication backend that accepted this session's Login.
        self.backend: Optional[str] = None
        #: More buffered messages wait for the next loop turn (fairness between sessions).
        self.resume_pending = False
        #: Dispatching stopped because the output was over its limit (Q-7.7).
        self.output_paused = False
        #: The audit fields about this session, made on first use and when the username changes.
        self.who: Optional[AuditFields] = None
        #: The classes of events this session is sent: read classes & event mask
        #: while authenticated, none otherwise (kept by :meth:`changed`).
        self.receives = 0
        #: Logged in with multiple logins refused for its user (A-3.13): a
        #: further Login of that user is refused before the backends are asked.
        self.single_login = False
        #: AuthDecision.attributes of the accepted login.
        self.attributes: Mapping[str, Any] = {}

    @property
    def authenticated(self) -> bool:
        return self.state == AUTHENTICATED

    def info(self) -> SessionInfo:
        """A snapshot for plugins, rebuilt only after the session changed."""
        if self._info is None:
            self._info = SessionInfo(
                session_id=self.session_id,
                remote_address=self.remote_address,
                local_address=self.local_address,
                transport=self.transport,
                authenticated=self.state == AUTHENTICATED,
                username=self.username,
                read_classes=self.read,
                write_classes=self.write,
                event_mask=self.mask,
                state=self.state,
                opened_at=self.opened_at,
                login_time=self.login_time,
                backend=self.backend,
                peer_ip=self.peer_ip,
                attributes=self.attributes,
            )
        return self._info

    def changed(self) -> None:
        """Call after any change of state, user, classes or mask."""
        self._info = None
        self.receives = self.read & self.mask if self.state == AUTHENTICATED else 0
