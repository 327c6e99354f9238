"""The gateway: forwards what no local plugin answers, applies the per-user policy.

Wired through the public seams only: ``route_unknown`` (forwarding, as a
``concurrent`` action, with the read-only names), ``add_action_guard``
(policy, rate limit, the upstream's own classes), ``add_event_guard``
(event allow/deny, and the upstreams a user may use), ``add_action_lister``
(the upstream's actions in ListCommands), ``connect`` and ``publish``
(upstream sessions and their events), ``log``, ``add_secret``, ``on_stop``
and ``on_reload`` (the ``[plugins.gateway]`` table read again).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from ami_server import Action, ActionError, Block, Event, Response, SessionInfo

from .config import ConfigError, GatewayConfig, parse_gateway_config
from .policy import ALWAYS_ALLOWED, Policy, RateLimiter, compile_policy
from .upstream import Request, Upstream

__all__ = ["Gateway"]

_TRUE = frozenset({"yes", "true", "y", "t", "1", "on"})


class _Line:
    """One client's forwarded requests in flight, all on one upstream session (``target``).

    An upstream session runs its actions one after another, so requests of
    a client that go to the same session may be in flight together and
    still run in the client's order. A request for another session (a pool
    session, another upstream) waits in ``waiting`` until the client's
    requests in flight are answered, and so does everything behind it.
    """

    __slots__ = ("target", "count", "waiting")

    def __init__(self) -> None:
        self.target: Any = None
        self.count = 0
        self.waiting: Deque[Tuple[Upstream, Request, Any]] = deque()


class _UpstreamFilter:
    """Which events a user limited to ``permitted`` upstreams receives (read on the rendered event).

    An upstream's event ends with the ``event_header`` line naming it (the
    gateway puts it last, so nothing the upstream sends can stand in for it);
    the gateway's own ``UpstreamConnected``, ``UpstreamLost`` and
    ``UpstreamLoginFailed`` name theirs in their ``Upstream`` header. The
    upstreams refused are worked out again after a reload, from every name
    ever configured: an upstream a reload removed still sends its
    ``UpstreamLost`` and the events it had in flight.
    """

    __slots__ = ("gateway", "permitted", "_config", "_tails", "_states")

    def __init__(self, gateway: "Gateway", permitted: frozenset) -> None:
        self.gateway = gateway
        self.permitted = permitted
        self._config: Any = None

    def _refresh(self) -> None:
        gateway = self.gateway
        self._config = gateway.config
        refused = [name for name in gateway.names if name not in self.permitted]
        marker = gateway._marker
        self._tails = tuple(marker + name.encode() + b"\r\n\r\n" for name in refused) if marker else ()
        self._states = tuple(f"\r\nUpstream: {name}\r\n".encode() for name in refused)

    def accepts(self, data: bytes) -> bool:
        if self._config is not self.gateway.config:
            self._refresh()
        if self._tails and data.endswith(self._tails):
            return False
        if data.startswith(b"Event: Upstream") and self._states:
            head = data[:data.find(b"\r\n", data.find(b"\r\nUpstream: ") + 2) + 2]
            return not head.endswith(self._states)
        return True


class Gateway:
    """One server's gateway: its upstreams, policies and rate limits."""

    def __init__(self, server: Any, config: GatewayConfig) -> None:
        self.server = server
        self.config = config
        self.instance = secrets.token_hex(3)
        self.log = server.log
        self.rates = RateLimiter()
        self.upstreams: Dict[str, Upstream] = {name: Upstream(c, self) for name, c in config.upstreams.items()}
        #: Every upstream name configured since start-up, in order (a reload only adds to it).
        self.names: Dict[str, None] = dict.fromkeys(config.upstreams)
        self._policies: Dict[int, Tuple[Any, Policy]] = {}
        #: Each client's requests in flight, by session id (kept until the session closes).
        self._lines: Dict[str, _Line] = {}
        self._settings(config)

    def _settings(self, config: GatewayConfig) -> None:
        """What is derived from the gateway-wide settings (at start and at each reload)."""
        self.config = config
        self._header = config.upstream_header
        self._header_key = config.upstream_header.lower()
        self._drop = (self._header_key,)
        self._read_only = frozenset(name.lower() for name in config.read_only_actions)
        self._extra: Dict[str, Tuple[Tuple[str, str], ...]] = {
            name: ((config.event_header, name),) if config.event_header else () for name in self.names
        }  # an upstream removed by a reload still marks what it sends before it is closed
        self._marker = f"\r\n{config.event_header}: ".encode() if config.event_header else b""

    # -- wiring --------------------------------------------------------------
    def register(self) -> List[Action]:
        server = self.server
        for upstream in self.config.upstreams.values():
            server.add_secret(upstream.secret.value())
        # Concurrent: a client's pipelined requests are in flight together (see _Line), and
        # the server writes their replies in request order.
        self._router_timeout = self.config.longest_timeout + 5.0
        server.route_unknown(Action(
            "GatewayForward", self.route, "Forward an action to an upstream Asterisk.", (),
            timeout=self._router_timeout, concurrent=True,
        ), read_only=self.read_only)
        server.on_stop(self.stop)
        server.on_reload(self.reload)
        server.add_action_guard(self.guard)
        server.add_event_guard(self.event_guard)
        server.add_event_guard(self.upstream_event_guard, on_text=True)
        server.add_action_lister(self.lister)
        server.call_soon_threadsafe(self.start)
        return [Action("GatewayStatus", self.status_action, "Show the gateway's upstream connections.", "system",
                       read_only=True)]

    def start(self) -> None:
        for upstream in self.upstreams.values():
            upstream.connect()

    def stop(self) -> None:
        for upstream in self.upstreams.values():
            upstream.stop()

    def event_extra(self, name: str) -> Tuple[Tuple[str, str], ...]:
        return self._extra.get(name, ())

    def read_only(self, action: str) -> bool:
        """Forwarded actions that only report are audited as read-only actions (``read_only_actions``)."""
        return action.lower() in self._read_only

    def reload(self, config: Any, control: Any) -> None:
        """Apply a reloaded ``[plugins.gateway]``: new upstreams connect, removed ones close, one
        whose session settings changed reconnects; the others keep their session."""
        try:
            new = parse_gateway_config(config.plugins.tables.get("gateway", {}))
        except ConfigError as exc:
            self.log.error("GatewayReloadFailed", error=str(exc))
            return
        if new is None:
            self.log.error("GatewayReloadFailed", error="no upstream configured; the running upstreams are kept")
            return
        added, removed, reconnected, updated = [], [], [], []
        for name in [name for name in self.upstreams if name not in new.upstreams]:
            self.upstreams.pop(name).retire("removed by reload")
            removed.append(name)
        for name, settings in new.upstreams.items():
            self.server.add_secret(settings.secret.value())
            running = self.upstreams.get(name)
            if running is not None and running.config.session_key == settings.session_key:
                if running.reconfigure(settings):
                    updated.append(name)
                continue
            if running is not None:
                running.retire("settings changed by reload")
            fresh = self.upstreams[name] = Upstream(settings, self)
            fresh.connect()
            (reconnected if running is not None else added).append(name)
        self.names.update(dict.fromkeys(new.upstreams))
        self._settings(new)
        # The server's own timeout for a forwarded action was fixed at start-up.
        restart = ["timeouts"] if new.longest_timeout + 5.0 > self._router_timeout else []
        self.log.info("GatewayReloaded", added=added, removed=removed, reconnected=reconnected, updated=updated,
                      restart_required=restart)

    def state_change(self, event: str, headers: Sequence[Tuple[str, str]], **fields: Any) -> None:
        """An upstream changed state: one audit record and one ``system`` event."""
        fields["at"] = round(time.time(), 6)
        self.log.info(event, **fields)
        self.server.publish(Event(event, "system", tuple(headers)))

    def session_closed(self, session_id: str) -> None:
        self._lines.pop(session_id, None)  # what waits is never sent
        for upstream in self.upstreams.values():
            upstream.client_closed(session_id)

    # -- policy ----------------------------------------------------------------
    def policy(self, session: SessionInfo) -> Policy:
        attributes = session.attributes
        cached = self._policies.get(id(attributes))
        if cached is not None and cached[0] is attributes:
            return cached[1]
        policy = compile_policy(attributes.get("gateway") if isinstance(attributes, Mapping) else None)
        if len(self._policies) > 4096:
            self._policies.clear()
        self._policies[id(attributes)] = (attributes, policy)
        return policy

    def _upstream_name(self, policy: Policy, request: Any) -> str:
        chosen = None
        if request is not None:
            # Most requests name no upstream: look for the header's name before parsing any header.
            key = self._header_key
            size = len(key)
            for line in request.lines:
                if line[:size].lower() == key:
                    chosen = request.get(self._header)
                    break
        return chosen or policy.upstream or self.config.default_upstream

    def guard(self, session: SessionInfo, action: str, request: Any) -> Optional[str]:
        """The policy's verdict on one action (``request`` is ``None`` when ListCommands asks)."""
        key = action.lower()
        if key in ALWAYS_ALLOWED:
            return None
        policy = self.policy(session)
        rule = policy.check_name(action)
        if rule is not None:
            return rule
        name = self._upstream_name(policy, request)
        if policy.upstreams is not None and name not in policy.upstreams:
            return "upstreams"
        upstream = self.upstreams.get(name)
        if upstream is not None:
            needed = upstream.privileges.get(key)
            if needed and not needed & session.write_classes:
                return "classes"
        if request is None:
            return None
        rule = policy.check_headers(action, request.get)
        if rule is not None:
            return rule
        if policy.rate > 0 and not self.rates.take(session.username.lower(), policy.rate, policy.burst):
            raise ActionError(f"Rate limit exceeded: {policy.rate:g} actions per second")
        return None

    def event_guard(self, session: SessionInfo) -> Optional[Callable[[str], bool]]:
        return self.policy(session).event_predicate()

    def upstream_event_guard(self, session: SessionInfo) -> Optional[Callable[[bytes], bool]]:
        """For a user limited to some upstreams: a predicate on events as written that refuses the
        others' events (marked by ``event_header``, last) and the gateway's events about them."""
        permitted = self.policy(session).upstreams
        if permitted is None:
            return None
        return _UpstreamFilter(self, permitted).accepts

    def lister(self, session: SessionInfo) -> List[Action]:
        upstream = self.upstreams.get(self._upstream_name(self.policy(session), None))
        return list(upstream.listed) if upstream is not None else []

    # -- forwarding ------------------------------------------------------------
    def route(self, ctx: Any) -> Any:
        """Forward one action to the chosen upstream; the reply completes the deferred."""
        request = ctx.request
        name = self._upstream_name(self.policy(ctx.session), request)
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise ActionError(f"Unknown upstream {name}")
        if upstream.state != "up":
            return Response.error(f"Upstream {name} unavailable")
        key = request.action.lower()
        blocking = key in upstream.blocking or (
            key == "originate" and (request.get("Async") or "").strip().lower() not in _TRUE
        )
        lines = getattr(request, "lines", None)
        if lines is None:
            lines = [f"{h}: {v}" for h, v in request.headers()]
        deferred = ctx.defer()
        session_id = ctx.session.session_id
        forwarded = Request(deferred, request.action_id, session_id, lines, blocking, self._drop)
        # The upstream session it runs on: the main one, or a pool session of its own.
        target: Any = forwarded if blocking and upstream.config.pool_size else upstream.main
        line = self._lines.get(session_id)
        if line is not None and line.count and (line.target is not target or line.waiting):
            line.waiting.append((upstream, forwarded, target))
            return deferred
        error = upstream.forward(forwarded)
        if error is not None:
            return Response.error(error)
        if line is None:
            line = self._lines[session_id] = _Line()
        line.target = target
        line.count += 1
        return deferred

    def answered(self, request: Request) -> None:
        """``request`` got its reply: once none of its client's is in flight, send what waits."""
        line = self._lines.get(request.session_id)
        if line is None or not line.count:
            return
        line.count -= 1
        if not line.count and line.waiting:
            # On the next turn: the upstream that answered may be failing every request it holds.
            self.server.call_later(0, lambda: self._release(request.session_id, line))

    def _release(self, session_id: str, line: _Line) -> None:
        """Send the waiting requests that share the first one's upstream session."""
        if self._lines.get(session_id) is not line or line.count:
            return
        while line.waiting:
            upstream, forwarded, target = line.waiting[0]
            if line.count and target is not line.target:
                return
            line.waiting.popleft()
            deferred = forwarded.deferred
            if deferred is None or deferred.done:
                continue  # the client left, or the server answered it (timed out)
            error = upstream.forward(forwarded)
            if error is not None:
                deferred.complete(Response.error(error))
                continue
            line.target = target
            line.count += 1

    def status_action(self, ctx: Any) -> Response:
        items = []
        for upstream in self.upstreams.values():
            stats = upstream.stats
            items.append(Block("GatewayUpstream", (
                ("Upstream", upstream.name), ("State", upstream.state), ("Host", upstream.config.host),
                ("Port", str(upstream.config.port)), ("Pending", str(len(upstream.requests))),
                ("UpstreamPending", str(upstream.main.session.pending if upstream.main else 0)),
                ("PoolSessions", str(len(upstream.pool))),
                ("PoolBusy", str(sum(1 for link in upstream.pool if link.busy))),
                ("Actions", str(len(upstream.listed))),
                *((key, str(value)) for key, value in stats.items()),
            )))
        return Response.list(items, "GatewayStatusComplete", message="Upstreams will follow")
