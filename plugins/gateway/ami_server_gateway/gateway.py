"""The gateway: forwards what no local plugin answers, applies the per-user policy.

Wired through the public seams only: ``route_unknown`` (forwarding),
``add_action_guard`` (policy, rate limit, the upstream's own classes),
``add_event_guard`` (event allow/deny), ``add_action_lister`` (the upstream's
actions in ListCommands), ``connect`` and ``publish`` (upstream sessions and
their events).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from ami_server import Action, ActionError, Block, Event, Response, SessionInfo

from .config import GatewayConfig
from .policy import ALWAYS_ALLOWED, Policy, RateLimiter, compile_policy
from .upstream import Request, Upstream

__all__ = ["Gateway", "Journal"]

_TRUE = frozenset({"yes", "true", "y", "t", "1", "on"})


class Journal:
    """The gateway's audit records, written to the server log.

    The public API offers a logger only inside a request (``ctx.log``), so
    records made before the first request are held (bounded) and written,
    with the time they happened, once a request lends its logger.
    """

    def __init__(self, server: Any) -> None:
        self._log: Any = getattr(server, "log", None)
        self._held: Deque[Tuple[str, Dict[str, Any]]] = deque(maxlen=256)
        self.recent: Deque[Tuple[float, str, Dict[str, Any]]] = deque(maxlen=64)

    @property
    def attached(self) -> bool:
        return self._log is not None

    def attach(self, log: Any) -> None:
        if self._log is not None:
            return
        for method in ("try_unbind", "unbind"):
            try:
                log = getattr(log, method)("action", "session")
                break
            except (AttributeError, KeyError):
                continue
        self._log = log
        while self._held:
            event, fields = self._held.popleft()
            self._log.info(event, **fields)

    def record(self, event: str, **fields: Any) -> None:
        fields["at"] = round(time.time(), 6)
        self.recent.append((fields["at"], event, dict(fields)))
        if self._log is not None:
            self._log.info(event, **fields)
        else:
            self._held.append((event, fields))


class Gateway:
    """One server's gateway: its upstreams, policies and rate limits."""

    def __init__(self, server: Any, config: GatewayConfig) -> None:
        self.server = server
        self.config = config
        self.instance = secrets.token_hex(3)
        self.journal = Journal(server)
        self.rates = RateLimiter()
        self.upstreams: Dict[str, Upstream] = {name: Upstream(c, self) for name, c in config.upstreams.items()}
        self._policies: Dict[int, Tuple[Any, Policy]] = {}
        self._header = config.upstream_header
        self._drop = (config.upstream_header.lower(),)
        self._extra: Dict[str, Tuple[Tuple[str, str], ...]] = {
            name: ((config.event_header, name),) if config.event_header else () for name in self.upstreams
        }

    # -- wiring --------------------------------------------------------------
    def register(self) -> List[Action]:
        server = self.server
        server.route_unknown(Action(
            "GatewayForward", self.route, "Forward an action to an upstream Asterisk.", (),
            timeout=self.config.longest_timeout + 5.0,
        ))
        server.add_action_guard(self.guard)
        server.add_event_guard(self.event_guard)
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
        return self._extra[name]

    def state_change(self, event: str, headers: Sequence[Tuple[str, str]], **fields: Any) -> None:
        """An upstream changed state: one audit record and one ``system`` event."""
        self.journal.record(event, **fields)
        self.server.publish(Event(event, "system", tuple(headers)))

    def session_closed(self, session_id: str) -> None:
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
        chosen = request.get(self._header) if request is not None else None
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

    def lister(self, session: SessionInfo) -> List[Action]:
        upstream = self.upstreams.get(self._upstream_name(self.policy(session), None))
        return list(upstream.listed) if upstream is not None else []

    # -- forwarding ------------------------------------------------------------
    def route(self, ctx: Any) -> Any:
        """Forward one action to the chosen upstream; the reply completes the deferred."""
        journal = self.journal
        if not journal.attached:
            journal.attach(ctx.log)
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
        forwarded = Request(deferred, request.action_id, ctx.session.session_id, lines, blocking, self._drop)
        error = upstream.forward(forwarded)
        if error is not None:
            return Response.error(error)
        return deferred

    def status_action(self, ctx: Any) -> Response:
        if not self.journal.attached:
            self.journal.attach(ctx.log)
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
