"""Connections to one upstream Asterisk: the main session, the blocking pool, reconnects.

Everything here runs on the server's event loop: connects through
``ServerHandle.connect``, retries on ``call_later`` timers with capped
exponential backoff, and answers each forwarded request exactly once -- with
the upstream's reply, or an error when the upstream is down, busy, slow or
goes away.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional

from ami_server import Action, ActionError, Backoff, Deferred, Response, StreamProtocol, TimerHandle, parse_event_mask

from .amiproto import (
    Broadcast, LoggedIn, LoginFailed, RawReply, Reply, ShutdownSeen, UpstreamProtocolError, UpstreamSession, parse_message,
)
from .config import UpstreamConfig
from .render import to_event, to_response

if TYPE_CHECKING:  # pragma: no cover
    from ami_server import Outbound

    from .gateway import Gateway

__all__ = ["Link", "Request", "Upstream"]


class Request:
    """One forwarded client request; answered exactly once (``deferred`` is ``None`` once its client left)."""

    __slots__ = ("deferred", "client_action_id", "session_id", "lines", "blocking", "link", "gw_id", "deadline",
                 "queue", "done", "drop")

    def __init__(self, deferred: Deferred, client_action_id: str, session_id: str, lines: List[str],
                 blocking: bool, drop: tuple = ()) -> None:
        self.deferred: Optional[Deferred] = deferred
        self.client_action_id = client_action_id
        self.session_id = session_id
        self.lines = lines
        self.blocking = blocking
        self.drop = drop
        self.link: Optional["Link"] = None
        self.gw_id = ""
        #: When it times out (``time.monotonic``); 0.0 until it is tracked.
        self.deadline = 0.0
        #: The deadline queue it waits in (Upstream._track).
        self.queue: Optional[Deque["Request"]] = None
        self.done = False


class Link(StreamProtocol):
    """One connection to the upstream: the sans-IO session and its ``Outbound``."""

    def __init__(self, upstream: "Upstream", role: str) -> None:
        config = upstream.config
        self.upstream = upstream
        self.role = role
        self.session = UpstreamSession(
            config.username, config.secret.value, prefix=upstream.new_prefix(), events=role == "main",
            auth=config.auth, fetch_commands=role == "main",
        )
        self.outbound: Optional["Outbound"] = None
        self.ready = False
        self.busy = False
        self.waiting: Optional[Request] = None
        self.login_failed = False
        self.idle_timer: Optional[TimerHandle] = None
        self._flush_scheduled = False
        #: Why this side closed the connection: the upstream broke the protocol.
        self.protocol_error: Optional[str] = None

    def open(self) -> None:
        config = self.upstream.config
        self.outbound = self.upstream.gateway.server.connect(
            config.host, config.port, self, tls=config.tls, server_hostname=config.tls_server_name,
            timeout=config.connect_timeout,
        )

    def connection_made(self, connection: "Outbound") -> None:
        self.outbound = connection
        self.session.start()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            effects = self.session.receive(data)
        except UpstreamProtocolError as exc:
            self.protocol_error = f"protocol error: {exc}"
            self.close()  # connection_lost follows: outstanding requests fail, the upstream reconnects
            return
        self.flush()
        if effects:
            self.upstream.handle(self, effects)

    def connection_lost(self, error: Optional[str]) -> None:
        self.ready = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.upstream.lost(self, error or self.protocol_error)

    def flush_soon(self) -> None:
        """Send at the end of this loop turn: requests of many clients read in one turn share one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.upstream.gateway.server.call_later(0, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        out = self.session.outgoing
        if out and self.outbound is not None:
            self.outbound.write(bytes(out))
            out.clear()

    def close(self) -> None:
        if self.outbound is not None and not self.outbound.closed:
            self.outbound.close()


def _listed(name: str, synopsis: str, privilege: str) -> Optional[Action]:
    """An upstream action as a record for ListCommands (never run: the gateway forwards it)."""

    def forwarded(ctx: Any) -> Response:  # pragma: no cover - listed only
        raise ActionError("forwarded by the gateway")

    names = ",".join(p.strip() for p in privilege.split(",") if p.strip() not in ("all", "<none>", ""))
    mask = (parse_event_mask(names) or 0) if names else 0
    try:
        return Action(name, forwarded, synopsis or name, mask)
    except ValueError:
        return None


#: Settings a reload applies to a running upstream session without reconnecting it.
_TUNABLE = ("action_timeout", "blocking_timeout", "backoff_initial", "backoff_cap", "backoff_jitter", "pool_size",
            "pool_idle", "blocking_actions", "max_pending")


class Upstream:
    """One configured Asterisk: state, main link, pool of links for blocking actions."""

    def __init__(self, config: UpstreamConfig, gateway: "Gateway") -> None:
        self.config = config
        self.gateway = gateway
        self.name = config.name
        self.state = "down"  # down | connecting | up
        self.main: Optional[Link] = None
        self.pool: List[Link] = []
        self.backoff = Backoff(config.backoff_initial, config.backoff_cap, config.backoff_jitter)
        self.retry: Optional[TimerHandle] = None
        self.listed: List[Action] = []
        self.privileges: Dict[str, int] = {}
        self.blocking = frozenset(a.lower() for a in config.blocking_actions)
        self.requests: Dict[int, Request] = {}
        # Deadlines in the order tracked, one queue per timeout value (the main session's, the
        # pool's, and those a reload replaced while requests still wait): a queue of one timeout is
        # in deadline order, so one timer for the earliest head serves every request.
        self._expiry: Dict[float, Deque[Request]] = {}
        self._sweep_timer: Optional[TimerHandle] = None
        self._sweep_at = 0.0
        self.ever_up = False
        self.reported_down = False
        self.stopped = False
        self.stop_reason: Optional[str] = None
        self._serial = 0
        self.stats = {"Connects": 0, "Forwarded": 0, "Events": 0, "Timeouts": 0, "Failed": 0, "Busy": 0,
                      "Discarded": 0, "LoginFailures": 0}

    def new_prefix(self) -> str:
        self._serial += 1
        return f"gw{self.gateway.instance}-{self.name}-{self._serial}-"

    # -- connection lifecycle ------------------------------------------------
    def connect(self) -> None:
        self.retry = None
        if self.stopped:
            return
        self.state = "connecting"
        self.main = Link(self, "main")
        self.main.open()

    def retire(self, reason: str) -> None:
        """Removed or replaced by a reload: close for good; what is outstanding is answered with an error."""
        self.stop_reason = reason
        self.stop()

    def reconfigure(self, config: UpstreamConfig) -> bool:
        """Settings a running session takes as they are (timeouts, pool, limits); True if any changed."""
        before = self.config
        self.config = config
        self.blocking = frozenset(a.lower() for a in config.blocking_actions)
        self.backoff = Backoff(config.backoff_initial, config.backoff_cap, config.backoff_jitter)
        return any(getattr(before, key) != getattr(config, key) for key in _TUNABLE)

    def stop(self) -> None:
        self.stopped = True
        if self.retry is not None:
            self.retry.cancel()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for link in [self.main, *self.pool]:
            if link is not None:
                link.close()

    def handle(self, link: Link, effects: List[object]) -> None:
        for effect in effects:
            cls = effect.__class__
            if cls is Broadcast:
                self._publish(effect)  # type: ignore[arg-type]
            elif cls is RawReply:
                try:
                    response = Response.verbatim_bytes(effect.data)  # type: ignore[attr-defined]
                except ValueError:  # what only the line form passes on (a bare CR, a line without colon)
                    message = parse_message(effect.data[:-4])  # type: ignore[attr-defined]
                    response = self._convert(Reply(effect.token, message)) if message is not None else \
                        Response.error(f"Upstream {self.name} sent a reply that cannot be passed on")
                self.answer(effect.token, response)  # type: ignore[attr-defined]
            elif cls is Reply:
                self.answer(effect.token, self._convert(effect))  # type: ignore[attr-defined, arg-type]
            elif cls is LoggedIn:
                self._logged_in(link, effect)  # type: ignore[arg-type]
            elif cls is LoginFailed:
                self._login_failed(link, effect)  # type: ignore[arg-type]
            elif cls is ShutdownSeen and link is self.main:
                restart = effect.message.get("Restart", "")  # type: ignore[attr-defined]
                self._down(link, f"Shutdown (Restart: {restart})" if restart else "Shutdown")
                link.close()

    def _convert(self, reply: Reply) -> Response:
        try:
            return to_response(reply)
        except ValueError:
            return Response.error(f"Upstream {self.name} sent a reply that cannot be passed on")

    def _publish(self, broadcast: Broadcast) -> None:
        self.stats["Events"] += 1
        try:
            event = to_event(broadcast.message, broadcast.action_id, self.gateway.event_extra(self.name))
        except ValueError:
            return  # a name the server cannot write as a header: not passed on
        self.gateway.server.publish(event)

    def _logged_in(self, link: Link, done: LoggedIn) -> None:
        link.ready = True
        if link is not self.main:
            waiting, link.waiting = link.waiting, None
            if waiting is not None and not waiting.done:
                self._send(link, waiting)
            else:
                self._idle(link)
            return
        self.state = "up"
        self.backoff.reset()
        self.stats["Connects"] += 1
        listed = [_listed(*command) for command in done.commands]
        self.listed = [a for a in listed if a is not None]
        self.privileges = {a.name.lower(): a.privileges for a in self.listed if a.privileges}
        headers = [("Upstream", self.name), ("Host", self.config.host), ("Port", str(self.config.port)),
                   ("Reconnect", "Yes" if self.ever_up else "No")]
        if done.booted is not None:
            for key in ("Uptime", "LastReload", "Status"):
                value = done.booted.get(key)
                if value is not None:
                    headers.append((key, value))
        self.ever_up = True
        self.reported_down = False
        self.gateway.state_change("UpstreamConnected", headers, upstream=self.name, host=self.config.host,
                                  port=self.config.port, actions=len(self.listed))

    def _login_failed(self, link: Link, failed: LoginFailed) -> None:
        link.login_failed = True
        self.stats["LoginFailures"] += 1
        if link is self.main:
            retry = self.config.backoff_cap * (1 + self.config.backoff_jitter * random.random())
            self.reported_down = True
            self.gateway.state_change(
                "UpstreamLoginFailed",
                [("Upstream", self.name), ("Host", self.config.host), ("Port", str(self.config.port)),
                 ("Message", failed.message), ("RetryIn", f"{retry:.1f}")],
                upstream=self.name, host=self.config.host, port=self.config.port, message=failed.message,
                retry_seconds=round(retry, 1),
            )
            link.retry_delay = retry  # type: ignore[attr-defined]
        link.close()

    def _down(self, link: Link, reason: str) -> None:
        """The main link is gone or going: fail what waits on it, tell everyone once."""
        failed = self._fail_link(link)
        was_up = self.state == "up"
        self.state = "down"
        if (was_up or not self.reported_down) and not link.login_failed:
            self.reported_down = True
            self.gateway.state_change(
                "UpstreamLost",
                [("Upstream", self.name), ("Host", self.config.host), ("Port", str(self.config.port)),
                 ("Reason", reason), ("Failed", str(failed))],
                upstream=self.name, host=self.config.host, port=self.config.port, reason=reason, failed=failed,
            )

    def _fail_link(self, link: Link) -> int:
        tokens = link.session.fail_all()
        if link.waiting is not None:
            tokens.append(link.waiting)
            link.waiting = None
        message = f"Upstream {self.name} unavailable"
        for request in tokens:
            self.answer(request, Response.error(message), failed=True)  # type: ignore[arg-type]
        return len(tokens)

    def lost(self, link: Link, error: Optional[str]) -> None:
        if link is self.main:
            if self.state != "down":
                self._down(link, error or self.stop_reason or "connection closed")
            self.main = None
            if self.stopped:
                return
            delay = getattr(link, "retry_delay", None) if link.login_failed else None
            if delay is None:
                delay = self.backoff.next()
            self.retry = self.gateway.server.call_later(delay, self.connect)
            return
        if link in self.pool:
            self.pool.remove(link)
        self._fail_link(link)

    # -- requests -------------------------------------------------------------
    def forward(self, request: Request) -> Optional[str]:
        """Send ``request``; an error text when it cannot be sent (down, busy)."""
        if self.state != "up" or self.main is None:
            return f"Upstream {self.name} unavailable"
        if len(self.requests) >= self.config.max_pending:
            self.stats["Busy"] += 1
            return f"Upstream {self.name} busy: {self.config.max_pending} requests outstanding"
        if request.blocking and self.config.pool_size:
            return self._forward_pool(request)
        self._send(self.main, request)
        return None

    def _forward_pool(self, request: Request) -> Optional[str]:
        for link in self.pool:
            if link.ready and not link.busy:
                self._send(link, request)
                return None
        if len(self.pool) >= self.config.pool_size:
            self.stats["Busy"] += 1
            return (f"Upstream {self.name} busy: all {self.config.pool_size} sessions for blocking actions "
                    "are in use")
        link = Link(self, "pool")
        link.busy = True
        link.waiting = request
        self.pool.append(link)
        self._track(request, True)
        link.open()
        return None

    def _track(self, request: Request, pool: bool) -> None:
        """Count ``request`` outstanding until answered, and give it a deadline (once)."""
        if request.deadline:
            return
        self.requests[id(request)] = request
        timeout = self.config.blocking_timeout if pool else self.config.action_timeout
        request.deadline = deadline = time.monotonic() + timeout
        queue = self._expiry.get(timeout)
        if queue is None:
            queue = self._expiry[timeout] = deque()
        queue.append(request)
        request.queue = queue
        if self._sweep_timer is None or deadline < self._sweep_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_at = deadline
        self._sweep_timer = self.gateway.server.call_later(max(0.0, deadline - time.monotonic()), self._sweep)

    def _sweep(self) -> None:
        """Time out every request past its deadline; then wait for the next earliest one."""
        self._sweep_timer = None
        now = time.monotonic()
        for timeout, queue in list(self._expiry.items()):
            while queue and (queue[0].done or queue[0].deadline <= now):
                request = queue.popleft()
                if not request.done:
                    self._timed_out(request)
            if not queue and self._expiry.get(timeout) is queue:
                del self._expiry[timeout]
        heads = [queue[0].deadline for queue in self._expiry.values() if queue]
        if heads:
            earliest = min(heads)
            if self._sweep_timer is None or earliest < self._sweep_at:
                self._arm(earliest)

    @staticmethod
    def _trim(queue: Deque[Request]) -> None:
        """Drop answered requests from the head: a queue holds little more than what is outstanding."""
        while queue and queue[0].done:
            queue.popleft()

    def _send(self, link: Link, request: Request) -> None:
        request.link = link
        if link is not self.main:
            link.busy = True
            if link.idle_timer is not None:
                link.idle_timer.cancel()
                link.idle_timer = None
        request.gw_id = link.session.submit(request.lines, request.client_action_id, request, request.drop)
        link.flush_soon()
        self.stats["Forwarded"] += 1
        self._track(request, link is not self.main)

    def answer(self, request: Request, response: Response, failed: bool = False) -> None:
        if request.done:
            return
        request.done = True
        self.requests.pop(id(request), None)
        queue = request.queue
        if queue and queue[0] is request:
            self._trim(queue)
        if failed:
            self.stats["Failed"] += 1
        link = request.link
        if link is not None and link is not self.main and link in self.pool:
            link.busy = False
            self._idle(link)
        deferred = request.deferred
        if deferred is None:
            self.stats["Discarded"] += 1
        else:
            deferred.complete(response)
        self.gateway.answered(request)

    def _idle(self, link: Link) -> None:
        link.busy = False
        if link.idle_timer is not None:
            link.idle_timer.cancel()
        link.idle_timer = self.gateway.server.call_later(self.config.pool_idle, link.close)

    def _timed_out(self, request: Request) -> None:
        if request.done:
            return
        self.stats["Timeouts"] += 1
        link = request.link
        if link is not None:
            link.session.abandon(request.gw_id)
        self.answer(request, Response.error(f"Upstream {self.name} timed out"))
        if link is not None and link is not self.main:
            link.close()  # a pool session still busy with the action cannot take another
        elif link is None:
            for pooled in list(self.pool):
                if pooled.waiting is request:
                    pooled.waiting = None
                    pooled.close()

    def client_closed(self, session_id: str) -> None:
        """The client left: its outstanding replies are dropped when they arrive (never mis-delivered)."""
        for request in self.requests.values():
            if request.session_id == session_id:
                request.deferred = None
