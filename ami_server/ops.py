"""Operations: the ``[http]`` endpoint (``/metrics``, ``/healthz``) and log reopening.

:func:`start_http` wires a :class:`~ami_server.metrics.MetricsRecorder`
into the dispatcher, login policy, audit trail and bus (only then do they
count anything), binds the listener on the server's loop and starts a
1-second heartbeat timer that tells whether the loop turns.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .connection import ListenError, listen
from .health import Health
from .http_server import HTTPListener, HTTPReply, HTTPRequest, check_credentials, reply_json
from .metrics import AMICollector, MetricsRecorder
from .ops_config import HTTPSettings

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server

__all__ = ["OpsEndpoint", "OpsStartError", "start_http", "reopen_logs", "HEARTBEAT_SECONDS", "STALL_SECONDS"]

#: The heartbeat timer's period; ``ami_loop_lag_seconds`` is how late it ran.
HEARTBEAT_SECONDS = 1.0
#: ``/healthz`` answers 503 when the heartbeat last ran longer ago than this.
STALL_SECONDS = 5.0


class OpsStartError(Exception):
    """The ``[http]`` listener cannot start (no prometheus_client, address in use, bad certificate)."""


def _registry(server: "Server", recorder: MetricsRecorder, lag: Any) -> Tuple[Any, Any]:
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
    except ImportError:
        raise OpsStartError(
            f"{server.config.source}: http: needs the prometheus_client package: "
            "pip install 'ami-server[metrics]'"
        ) from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AMICollector(server, recorder, lag))
    ProcessCollector(registry=registry)
    return registry, (generate_latest, CONTENT_TYPE_LATEST)


def tls_context(settings: HTTPSettings, source: str) -> Optional[ssl.SSLContext]:
    if not settings.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.certificate, settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise OpsStartError(f"{source}: http: cannot use certificate {settings.certificate!r} with key "
                            f"{settings.key!r}: {getattr(exc, 'reason', None) or exc}") from None
    return context


class OpsEndpoint:
    """The running ``[http]`` listener of one server and what it answers."""

    def __init__(self, server: "Server", settings: HTTPSettings) -> None:
        self.server = server
        self.settings = settings
        self.recorder = MetricsRecorder()
        self.registry, (self._generate, self._content_type) = _registry(server, self.recorder, self.loop_lag)
        context = tls_context(settings, server.config.source)
        try:
            sock = listen(settings.host, settings.port, "http", server.config.source)
        except ListenError as exc:
            raise OpsStartError(str(exc)) from None
        self.listener = HTTPListener(sock, server.loop, settings, self.handle, context, server.log)
        # From here on the server counts what only metrics need.
        server.dispatcher.observe = self.recorder.action
        server.login.observe = self.recorder.auth
        server.audit.tap = self.recorder.audit
        server.bus.by_class = self.recorder.published
        self._lag = 0.0
        self._beat_at = server.loop.time()
        self._timer = server.loop.call_later(HEARTBEAT_SECONDS, self._beat)

    @property
    def address(self) -> Tuple[str, int]:
        return self.listener.address

    # -- the loop's heartbeat -------------------------------------------------
    def _beat(self) -> None:
        now = self.server.loop.time()
        self._lag = max(0.0, now - self._beat_at - HEARTBEAT_SECONDS)
        self._beat_at = now
        if not self.listener.closed:
            self._timer = self.server.loop.call_later(HEARTBEAT_SECONDS, self._beat)

    def loop_lag(self) -> float:
        return self._lag

    # -- requests ---------------------------------------------------------------
    def handle(self, request: HTTPRequest) -> HTTPReply:
        path = request.path
        if path == "/metrics":
            reply = self._guarded(request, self.metrics)
        elif path == "/healthz":
            reply = self._guarded(request, self.healthz) if self.settings.protect_healthz else self.healthz()
        elif path == "/":
            reply = HTTPReply(200, b"ami-server: /metrics /healthz\n")
        else:
            reply = HTTPReply(404, b"not found\n")
        self.recorder.http(path if path in ("/metrics", "/healthz", "/") else "other", reply.status)
        return reply

    def _guarded(self, request: HTTPRequest, answer: Any) -> HTTPReply:
        if not check_credentials(self.settings, request):
            challenge = 'Basic realm="ami-server"' if self.settings.auth == "basic" else "Bearer"
            return HTTPReply(401, b"unauthorized\n", headers=(("WWW-Authenticate", challenge),))
        reply: HTTPReply = answer()
        return reply

    def metrics(self) -> HTTPReply:
        return HTTPReply(200, self._generate(self.registry), self._content_type)

    def health(self) -> Tuple[bool, Dict[str, Any]]:
        """``(healthy, body)``: listeners up, loop turning, not shutting down, required checks passing."""
        server = self.server
        reasons: List[str] = []
        draining = server.core.shutting_down or getattr(server, "_stopping", False)
        if draining:
            reasons.append("shutting down")  # the listeners close on purpose: not a second reason
        expected = [] if draining else ["TCP"] + (["TLS"] if server.config.server.tls is not None else [])
        for transport in expected:
            if transport not in server.listeners:
                reasons.append(f"{transport} listener down")
        stalled = server.loop.time() - self._beat_at
        if stalled > STALL_SECONDS:
            reasons.append(f"event loop stalled for {stalled:.1f} s")
        checks: Dict[str, Any] = {}
        for check in server.ops.checks:
            try:
                result = check.check()
                health = result if isinstance(result, Health) else Health(bool(result))
            except Exception as exc:  # noqa: BLE001 - a failing check counts as failing
                health = Health(False, f"check raised {type(exc).__name__}")
            checks[check.name] = {"ok": health.ok, "detail": health.detail, "required": check.required}
            if not health.ok and check.required:
                reasons.append(f"{check.name}: {health.detail or 'failing'}")
        body: Dict[str, Any] = {"status": "ok" if not reasons else "unavailable", "reasons": reasons,
                                "sessions": len(server.core.sessions), "loop_lag_seconds": round(self._lag, 4)}
        if checks:
            body["checks"] = checks
        return not reasons, body

    def healthz(self) -> HTTPReply:
        healthy, body = self.health()
        return reply_json(200 if healthy else 503, body)

    def close(self) -> None:
        self._timer.cancel()
        self.listener.close()


def start_http(server: "Server") -> Optional[OpsEndpoint]:
    """Start the ``[http]`` listener if configured; raises :class:`OpsStartError`."""
    settings = server.config.http
    if settings is None:
        return None
    return OpsEndpoint(server, settings)


def reopen_logs(server: "Server") -> bool:
    """Reopen the ``[logging] file`` (after logrotate moved it); False when logging to stderr."""
    ok = server.log_sink.reopen()
    if ok:
        server.log.info("LogReopened", file=server.config.logging.file)
    return ok
