"""Cluster-wide sessions: single-login claims in Redis, and SessionList / SessionKick across nodes.

A single-login user's session holds the key ``<prefix>:login:<user>``
(``SET NX PX``), refreshed by its node every third of ``session_ttl`` and
deleted when the session ends; a node that dies stops refreshing, so its
claims expire within the TTL. Listing and kicking ask the live nodes over
their control streams and wait at most ``request_timeout``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from ami_server import LoginCheck, SessionControl, SessionInfo, TimerHandle, ascii_lower

if TYPE_CHECKING:  # pragma: no cover
    import redis

    from .node import ClusterNode

__all__ = ["Sessions"]

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
#: 1: refreshed; 2: was gone (Redis lost it) and claimed again; 0: another session holds it now.
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
#: Heartbeat: this node's time in the node set (Redis's clock), forget nodes silent for long.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
return 1
"""
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""
_INFO_FIELDS = (
    "session_id", "remote_address", "local_address", "transport", "authenticated", "username",
    "read_classes", "write_classes", "event_mask", "state", "opened_at", "login_time", "backend", "peer_ip",
)


@dataclass(frozen=True)
class Claim:
    """A single-login key this node holds for one of its sessions."""

    key: str
    value: str


@dataclass
class _Request:
    """A question to the other nodes (list or kick) and the answers so far."""

    expected: Set[str]
    done: Callable[[Any], None]
    stop_on: Callable[[Any], bool]
    answers: Dict[str, Any] = field(default_factory=dict)
    timer: Optional[TimerHandle] = None


def info_to_json(info: SessionInfo) -> Dict[str, Any]:
    return {name: getattr(info, name) for name in _INFO_FIELDS}


def info_from_json(data: Dict[str, Any]) -> SessionInfo:
    return SessionInfo(**{name: data[name] for name in _INFO_FIELDS if name in data})


class Sessions:
    """The loop-side half of cluster-wide sessions (claims, directory, control requests)."""

    def __init__(self, node: "ClusterNode") -> None:
        self.node = node
        self.config = node.config
        self.claims: Dict[str, Claim] = {}
        #: Sessions whose claim is on its way to Redis: released on close even if the answer comes later.
        self.claiming: Set[str] = set()
        self.closed_while_claiming: Set[str] = set()
        self.control: Optional[SessionControl] = None
        self._requests: Dict[str, _Request] = {}
        self._ids = itertools.count(1)

    # -- single login (ServerHandle.add_login_check) -------------------------------
    def check_login(self, login: LoginCheck, answer: Callable[..., None]) -> None:
        if not login.single_login:
            answer(None)
            return
        session_id = login.session.session_id
        claim = Claim(self.config.login_key(ascii_lower(login.username)), f"{self.config.node} {session_id}")
        ttl_ms = int(self.config.session_ttl * 1000)
        self.claiming.add(session_id)

        def done(result: Any, exc: Optional[BaseException]) -> None:
            self.claiming.discard(session_id)
            if session_id in self.closed_while_claiming:
                self.closed_while_claiming.discard(session_id)
                if exc is None and result:
                    self._release(claim)
                answer("session closed")
            elif exc is not None:
                answer("cluster login check failed: Redis unavailable")
            elif result:
                self.claims[session_id] = claim
                answer(None)
            else:
                answer("in_use")

        self.node.link.submit(lambda client: client.set(claim.key, claim.value, nx=True, px=ttl_ms), done)

    def session_closed(self, session_id: str) -> None:
        if session_id in self.claiming:
            self.closed_while_claiming.add(session_id)  # released when the claim's answer comes
            return
        claim = self.claims.pop(session_id, None)
        if claim is not None:
            self._release(claim)

    def _release(self, claim: Claim) -> None:
        def release(client: "redis.Redis") -> Any:
            return client.eval(_RELEASE, 1, claim.key, claim.value)

        self.node.link.submit(release, _ignore)

    def refresh(self) -> None:
        """Heartbeat and claim refresh, every third of the TTL (on the loop)."""
        config = self.config
        claims = list(self.claims.items())
        ttl_ms = str(int(config.session_ttl * 1000))

        def run(client: "redis.Redis") -> List[Tuple[str, int]]:
            pipe = client.pipeline(transaction=False)
            pipe.eval(_BEAT, 1, config.nodes_key, config.node, str(config.session_ttl))
            for _, claim in claims:
                pipe.eval(_REFRESH, 1, claim.key, claim.value, ttl_ms)
            results = pipe.execute()[1:]
            return [(sid, int(r)) for (sid, _), r in zip(claims, results)]

        def done(result: Any, exc: Optional[BaseException]) -> None:
            if exc is not None or not result:
                return
            for session_id, status in result:
                if status == 0 and session_id in self.claims:
                    self.node.log.warning("ClusterLoginConflict", session=session_id,
                                          detail="another node's session took the single-login key")

        self.node.link.submit(run, done)

    # -- the session directory (ServerHandle.set_session_directory) ------------------
    def list(self, local: List[SessionInfo], done: Callable[[List[Tuple[str, SessionInfo]]], None]) -> None:
        me = self.config.node
        mine = [(me, info) for info in local]

        def finish(answers: Dict[str, Any]) -> None:
            entries = list(mine)
            for node, body in answers.items():
                entries.extend((node, info) for info in body)
            done(entries)

        self._ask("list", {}, finish)

    def kick(self, session_id: str, reason: str, done: Callable[[bool], None]) -> None:
        def finish(answers: Dict[str, Any]) -> None:
            done(any(answers.values()))

        self._ask("kick", {"session": session_id, "reason": reason}, finish, stop_on=lambda ok: bool(ok))

    def _ask(
        self, op: str, body: Dict[str, Any], finish: Callable[[Dict[str, Any]], None],
        stop_on: Callable[[Any], bool] = lambda answer: False,
    ) -> None:
        config = self.config
        req = f"{config.node}/{next(self._ids)}"
        fields = {"op": op, "from": config.node, "req": req, "body": json.dumps(body)}

        def send(client: "redis.Redis") -> List[str]:
            nodes = [n.decode() for n in client.eval(_LIVE, 1, config.nodes_key, str(config.session_ttl))]
            others = [n for n in nodes if n != config.node]
            pipe = client.pipeline(transaction=False)
            for node in others:
                pipe.xadd(config.control_stream(node), fields, maxlen=1000, approximate=True)
            pipe.execute()
            return others

        def sent(others: Any, exc: Optional[BaseException]) -> None:
            if exc is not None or not others:
                finish({})
                return
            request = _Request(set(others), finish, stop_on)
            self._requests[req] = request
            request.timer = self.node.server.call_later(config.request_timeout, lambda: self._finish(req))

        self.node.link.submit(send, sent)

    def _finish(self, req: str) -> None:
        request = self._requests.pop(req, None)
        if request is None:
            return
        if request.timer is not None:
            request.timer.cancel()
        request.done(request.answers)

    # -- control messages from other nodes (reader thread -> loop) --------------------
    def on_control(self, message: Dict[str, Any]) -> None:
        op = message.get("op")
        sender = message.get("from", "")
        req = message.get("req", "")
        try:
            body = json.loads(message.get("body", "{}"))
        except ValueError:
            return
        if op in ("list", "kick"):
            self._answer(op, sender, req, body)
        elif op in ("sessions", "kicked"):
            request = self._requests.get(req)
            if request is None or sender not in request.expected:
                return  # late, or not asked
            if op == "sessions":
                value: Any = [info_from_json(item) for item in body.get("sessions", ())]
            else:
                value = bool(body.get("ok"))
            request.answers[sender] = value
            if set(request.answers) >= request.expected or request.stop_on(value):
                self._finish(req)

    def _answer(self, op: str, sender: str, req: str, body: Dict[str, Any]) -> None:
        control = self.control
        if control is None or not sender:
            return
        if op == "list":
            reply = {"sessions": [info_to_json(info) for info in control.sessions()]}
            kind = "sessions"
        else:
            ok = control.kick(str(body.get("session", "")), str(body.get("reason", "kicked")))
            reply = {"ok": ok}
            kind = "kicked"
        fields = {"op": kind, "from": self.config.node, "req": req, "body": json.dumps(reply)}
        stream = self.config.control_stream(sender)
        self.node.link.submit(lambda client: client.xadd(stream, fields, maxlen=1000, approximate=True), _ignore)


def _ignore(result: Any, exc: Optional[BaseException]) -> None:
    """Fire-and-forget commands: a release lost with Redis expires with its TTL."""
