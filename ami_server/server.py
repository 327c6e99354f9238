"""The AMI server: accept, read, dispatch, publish, write -- on one thread.

The protocol module turns bytes into messages; this module applies the rules
of spec §2-§3 and §7 to them and moves bytes between sessions and sockets.
Sockets are non-blocking and written only when writable; every wait is a
loop timer.
"""

from __future__ import annotations

import functools
import socket
import ssl
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import pluggy
import selectors

from .api import (
    Action,
    ActionContext,
    ActionError,
    AuthDecision,
    AuthRequest,
    Block,
    CommandOutput,
    Deferred,
    Event,
    Response,
    ServerHandle,
    ServerStatus,
    SessionInfo,
    TimerHandle,
    wall_timestamp,
)
from .audit import (
    REDACTED,
    TRUSTED_FIELDS_KEY,
    AuditFields,
    RecordKind,
    LogSink,
    Redactor,
    StreamSink,
    default_format,
    make_audit_logger,
    make_logger,
)
from .config import Config, ConfigError, load_config
from .loop import Loop
from .plugins import (
    ActionRegistry,
    HookCaller,
    PluginRecord,
    collect_actions,
    create_plugin_manager,
    load_plugins,
)
from .privileges import CLASSES, format_privilege, parse_event_mask
from .protocol import Message, ReplyRenderer, clean, encode, render_block, render_reply, render_response
from .acl import ip_of, normalize_ip
from .security import format_address, new_challenge, new_session_id, security_event
from .session import AUTHENTICATED, CLOSING, ActionRun, EventFilters, Session
from .workers import Outcome, WorkerPool

__all__ = ["Server", "ServerError", "INPUT_LIMIT", "core_plugins"]

#: Stop reading a session's socket while this much input waits unprocessed (P-1.18).
INPUT_LIMIT = 256 * 1024
#: How long a closing session may take to hand its last bytes to the kernel.
LINGER_SECONDS = 2.0
#: A plugin object with this attribute set to True promises its ``authenticate`` never blocks.
NONBLOCKING_ATTRIBUTE = "ami_server_nonblocking"
#: Messages of one session dispatched per loop turn before others get their turn.
MESSAGES_PER_TURN = 64
#: Graceful shutdown: how long output may take to drain before every session is closed (Q-7.8).
SHUTDOWN_FLUSH_SECONDS = 2.0
_RECV_SIZE = 65536
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_SYSTEM = CLASSES["system"]
_SECURITY_EVENT_NAMES = frozenset(
    {
        "SuccessfulAuth", "InvalidAccountID", "InvalidPassword", "ChallengeResponseFailed",
        "SessionLimit", "RequestNotAllowed", "RequestBadFormat", "FailedACL",
    }
)
_REJECT_EVENTS = {
    "acl_denied": "FailedACL",
    "unknown_user": "InvalidAccountID",
    "invalid_password": "InvalidPassword",
    "challenge_failed": "ChallengeResponseFailed",
}
_PRE_LOGIN = frozenset({"login", "logoff", "challenge"})
#: Audit fields whose values the server makes itself (never client input): not scrubbed.
_TRUSTED_AUDIT_FIELDS = frozenset({
    "event", "audit", "level", "timestamp", "session", "remote_address", "local_address", "remote_ip", "tls",
    "result", "duration_ms", "duration", "limit", "buffered", "timeout", "auth_type", "backend",
})
#: The fields about a session that the server made (the username is what a client typed).
_TRUSTED_WHO_FIELDS = frozenset({"session", "remote_address", "local_address", "remote_ip", "tls"})
#: ActionExecuted: ``action`` is the registered name, not text a client typed.
_TRUSTED_EXECUTED_FIELDS = _TRUSTED_AUDIT_FIELDS | {"action"}
#: One per answered action: the hottest record.
_EXECUTED = RecordKind(
    "ActionExecuted", ("action", "action_id", "result", "message", "duration_ms"), _TRUSTED_EXECUTED_FIELDS
)
#: Security-event records: the server-made headers of A-3.14 (AccountID,
#: RequestType and the like quote the client and are scrubbed).
_TRUSTED_SECURITY_FIELDS = _TRUSTED_AUDIT_FIELDS | {
    "EventTV", "Severity", "Service", "EventVersion", "SessionID", "LocalAddress", "RemoteAddress",
    "SessionTV", "UsingPassword", "Challenge",
}


class ServerError(Exception):
    """The server cannot start (address in use, plugin failure, ...)."""


def core_plugins(config: Config) -> List[Tuple[str, Any]]:
    """Plugins the server builds from its own configuration (the ``config`` auth backend)."""
    from ami_server.builtin.config_auth import ConfigBackend

    return [("config", ConfigBackend(config.users))]


class _SessionBackend(ActionRun):
    """One action run, and the session capabilities behind its :class:`ActionContext`.

    A single object for both: one allocation fewer per request.
    """

    __slots__ = ("server", "session")

    # Built with ActionRun's __init__; the dispatcher sets ``server`` and ``session``.
    server: "Server"
    session: Session

    def _on_loop(self, what: str) -> None:
        if not self.server.loop.in_loop_thread():
            raise RuntimeError(f"ActionContext.{what}() may only be called on the event loop, not in a blocking handler")

    def publish(self, event: Event) -> None:
        self.server._publish(event, None)

    def timestamp(self) -> str:
        server = self.server
        shared = server._read_stamp
        if shared:
            return shared
        stamp = wall_timestamp()
        # Kept only inside a read, and only by the loop: a blocking handler's
        # thread could otherwise store it after the read ended.
        if shared is not None and server.loop.in_loop_thread():
            server._read_stamp = stamp
        return stamp

    def make_log(self) -> Any:
        plugin = self.entry.plugin if self.entry is not None else "core"
        return self.server.log.bind(plugin=plugin, action=self.name, session=self.session.session_id)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.server.loop.call_later(delay, callback)

    def login(self, request: Message) -> Any:
        self._on_loop("login")
        return self.server._login(self.session, self, request)

    def challenge(self) -> str:
        self._on_loop("challenge")
        session = self.session
        if session.challenge is None:
            session.challenge = new_challenge()
        return session.challenge

    def set_event_mask(self, mask: int) -> None:
        self._on_loop("set_event_mask")
        self.server._settle()
        self.session.mask = mask
        self.session.changed()

    def permitted_actions(self) -> List[Action]:
        self._on_loop("permitted_actions")
        write = self.session.write
        return [
            entry.action
            for entry in self.server.actions.all()
            if not entry.action.privileges or entry.action.privileges & write
        ]

    def add_event_filter(self, pattern: Any, include: bool) -> None:
        self._on_loop("add_event_filter")
        self.server._settle()
        filters = self.session.filters
        if filters is None:
            filters = self.session.filters = EventFilters()
        if len(filters) >= EventFilters.LIMIT:
            raise ActionError(f"Too many filters (at most {EventFilters.LIMIT} per session)")
        (filters.include if include else filters.exclude).append(pattern)

    def run_cli(self, context: ActionContext, text: str) -> Optional[CommandOutput]:
        self._on_loop("run_cli")
        found = self.server.actions.find_cli(text)
        if found is None:
            return None
        entry, args = found
        result = entry.command.handler(context._with_config(entry.config), args)
        if isinstance(result, CommandOutput):
            return result
        if isinstance(result, str):
            return CommandOutput((result,))
        return CommandOutput(tuple(result))

    def server_status(self) -> ServerStatus:
        return self.server.status()

    def sessions(self) -> List[SessionInfo]:
        self._on_loop("sessions")
        return [s.info() for s in self.server.sessions.values() if s.opened]

    def kick(self, session_id: str, reason: str) -> bool:
        self._on_loop("kick")
        return self.server.revoke(session_id, reason)

    def reload(self) -> Tuple[bool, str]:
        self._on_loop("reload")
        return self.server.reload()

    def wait_for_event(self, timeout: Optional[float], reply: Response) -> Deferred:
        self._on_loop("wait_for_event")
        return self.server._wait_for_event(self.session, self, timeout, reply)


class Server:
    """One AMI server instance: its config, plugin manager, listener and sessions.

    Build it, :meth:`start` it (binds the listener, loads plugins), then call
    :meth:`serve_forever` on the thread that will own the loop. :meth:`stop`
    may be called from any thread or a signal handler.
    """

    def __init__(
        self,
        config: Config,
        *,
        plugin_manager: Optional[pluggy.PluginManager] = None,
        log_sink: Optional[LogSink] = None,
        entry_points: Optional[Iterable[Any]] = None,
        extra_plugins: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.config = config
        self.settings = config.server
        self.loop = Loop()
        self.loop.on_error = self._loop_error
        self.manager = plugin_manager or create_plugin_manager()
        self._entry_points = entry_points
        self._extra_plugins = tuple(extra_plugins)
        self._own_sink = log_sink is None
        if log_sink is None:
            if config.logging.file:
                try:
                    stream = open(config.logging.file, "a", encoding="utf-8", buffering=1)
                except OSError as exc:
                    raise ServerError(f"{config.source}: logging.file: cannot open {config.logging.file!r}: {exc.strerror}") from None
                log_sink = StreamSink(stream, owns_stream=True)
                fmt = "json" if config.logging.format == "auto" else config.logging.format
            else:
                log_sink = StreamSink(sys.stderr)
                fmt = default_format(config.logging.format)
        else:
            fmt = "json" if config.logging.format == "auto" else config.logging.format
        self.log_sink = log_sink
        self.redactor = Redactor(_secrets_of(config))
        self.log = make_logger(log_sink, config.logging.level, fmt, self.redactor)
        self._audit_log = make_audit_logger(log_sink, config.logging.level, fmt, self.redactor)
        self.sessions: Dict[int, Session] = {}
        self._session_ids: set = set()
        self.authenticated: Dict[int, Session] = {}
        self.unauthenticated = 0
        self.listener: Optional[socket.socket] = None
        self.address: Optional[Tuple[str, int]] = None
        self.tls_listener: Optional[socket.socket] = None
        self.tls_address: Optional[Tuple[str, int]] = None
        self.tls_context: Optional[ssl.SSLContext] = None
        self.plugins: List[PluginRecord] = []
        self.actions = ActionRegistry()
        self.started_at = time.monotonic()
        self.reloaded_at = self.started_at
        self.started_wall = time.time()
        self.reloaded_wall = self.started_wall
        self.stats = {
            "events_published": 0, "events_dropped": 0, "slow_consumer_disconnects": 0, "sessions_accepted": 0,
        }
        self.shutting_down = False
        self._core_plugins: Dict[str, Any] = {}
        self._dirty: List[Session] = []
        #: The wall clock shared by the requests answered from one read (ActionContext.timestamp):
        #: ``None`` outside such a read, ``""`` inside one until first asked.
        self._read_stamp: Optional[str] = None
        self._replies = ReplyRenderer()
        #: Events published and not yet delivered, as (classes, bytes), and the union of their classes.
        #: Delivery is deferred to the end of the loop turn -- or to the moment a session that
        #: receives them writes, starts or ends an action, or changes (see _settle) -- so that a
        #: burst of events reaches each recipient as one append (Q-7.2 to Q-7.4).
        self._broadcast: List[Tuple[int, bytes]] = []
        self._broadcast_classes = 0
        self._stopping = False
        self._running = False
        self._privilege_cache: Dict[int, str] = {}
        self._hooks: Dict[str, HookCaller] = {}
        self.workers = WorkerPool(
            self.settings.worker_threads, self.settings.worker_queue_limit, self._loop_error
        )
        self.auth_workers = WorkerPool(
            config.auth.worker_threads, self.settings.auth_limit, self._loop_error, name="ami-auth"
        )
        self.handle = ServerHandle(
            self.publish, self.loop.call_soon_threadsafe, self.loop.call_later, lambda: self.settings, self.status,
        )

    # ------------------------------------------------------------------ setup
    def load(self) -> None:
        """Load plugins and collect actions (no socket is opened)."""
        core = core_plugins(self.config)
        self._core_plugins = dict(core)
        extra = [*core, *self._extra_plugins]
        try:
            self.plugins = load_plugins(self.manager, self.config.plugins, extra, self._entry_points)
            self.actions = collect_actions(self.manager, self.plugins, self.handle, self.config.plugins.tables)
        except Exception as exc:
            raise ServerError(str(exc)) from exc
        for name in ("on_event", "on_session_open", "on_session_close", "authenticate"):
            self._hooks[name] = HookCaller(self.manager, name)
        self._hooks["authenticate"].impls = self._auth_chain(self.config)
        if self.settings.tls is not None:
            self.tls_context = self._tls_context(self.config)

    def _auth_chain(self, config: Config) -> List[Tuple[str, Callable[..., Any], Tuple[str, ...]]]:
        """Only the backends named in [auth] backends are asked, in that order:
        installing a package never silently adds an authenticator."""
        by_plugin = {
            plugin: (plugin, function, argnames)
            for plugin, function, argnames in HookCaller(self.manager, "authenticate").impls
        }
        missing = [name for name in config.auth_backends if name not in by_plugin]
        if missing:
            raise ServerError(
                f"{config.source}: auth.backends: no loaded plugin named {missing[0]!r} implements authenticate"
            )
        return [by_plugin[name] for name in config.auth_backends]

    def _tls_context(self, config: Config) -> ssl.SSLContext:
        """Load the certificate and key now, so that a bad file stops start-up (and --check-config)."""
        tls = config.server.tls
        assert tls is not None
        source = config.source
        for key, path in (("certificate", tls.certificate), ("key", tls.key)):
            try:
                with open(path, "rb") as stream:
                    stream.read(1)
            except OSError as exc:
                raise ServerError(f"{source}: server.tls.{key}: cannot read {path!r}: {exc.strerror or exc}") from None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(tls.certificate, tls.key)
        except ssl.SSLError as exc:
            raise ServerError(
                f"{source}: server.tls: cannot use certificate {tls.certificate!r} with key {tls.key!r}: "
                f"{exc.reason or exc}"
            ) from None
        return context

    def start(self) -> Tuple[str, int]:
        """Load plugins, bind and listen; returns the bound address of the plain listener."""
        self.load()
        listener = self._listen(self.settings.host, self.settings.port, "server")
        self.listener = listener
        self.address = listener.getsockname()[:2]
        self._watch_listener(listener, "TCP")
        addresses = [f"{self.address[0]}:{self.address[1]}"]
        tls = self.settings.tls
        if tls is not None:
            try:
                tls_listener = self._listen(tls.host, tls.port, "server.tls")
            except ServerError:
                self.loop.unregister(listener)
                listener.close()
                self.listener = None
                raise
            self.tls_listener = tls_listener
            self.tls_address = tls_listener.getsockname()[:2]
            self._watch_listener(tls_listener, "TLS")
            addresses.append(f"{self.tls_address[0]}:{self.tls_address[1]} (TLS)")
        self.log.info(
            "ServerStarted",
            address=addresses[0],
            addresses=addresses,
            plugins=[r.name for r in self.plugins if r.status == "loaded"],
            actions=len(self.actions),
        )
        return self.address

    def _watch_listener(self, listener: socket.socket, transport: str) -> None:
        self.loop.register(listener, _READ, lambda mask: self._on_accept(listener, transport))

    def _listen(self, host: str, port: int, key: str) -> socket.socket:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ServerError(f"{self.config.source}: {key}.host: cannot resolve {host!r}: {exc}") from None
        family, _, _, _, sockaddr = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(512)
        except OSError as exc:
            listener.close()
            raise ServerError(f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}") from None
        listener.setblocking(False)
        return listener

    def serve_forever(self) -> None:
        """Run the loop until :meth:`stop`; then close every session."""
        self._running = True
        try:
            while not self._stopping:
                self.loop.run_once(1.0)
                self._flush_dirty()
            self._drain()
        finally:
            self._shutdown()

    def run_once(self, max_wait: float = 0.05) -> None:
        """One loop turn (for embedding the server in another loop or in tests)."""
        self.loop.run_once(max_wait)
        self._flush_dirty()

    def stop(self) -> None:
        """Ask the loop to stop; safe from any thread and from signal handlers."""
        self._stopping = True
        try:
            self.loop.call_soon_threadsafe(lambda: None)
        except OSError:
            pass

    # ------------------------------------------------------- administration
    def status(self) -> ServerStatus:
        """Counters and times (CoreStatus, ServerStatus); a consistent read on the loop thread."""
        return ServerStatus(
            started_at=self.started_wall,
            reloaded_at=self.reloaded_wall,
            sessions=sum(1 for s in self.sessions.values() if s.opened),
            authenticated=len(self.authenticated),
            unauthenticated=self.unauthenticated,
            events_published=self.stats["events_published"],
            events_dropped=self.stats["events_dropped"],
            slow_consumer_disconnects=self.stats["slow_consumer_disconnects"],
            sessions_accepted=self.stats["sessions_accepted"],
            plugins=tuple(r.name for r in self.plugins if r.status == "loaded"),
            shutting_down=self.shutting_down,
        )

    def revoke(self, session_id: str, reason: str) -> bool:
        """Close the session called ``session_id`` at once (audited ``SessionRevoked``)."""
        for session in list(self.sessions.values()):
            if session.session_id == session_id and session.opened and not session.closed:
                self.audit("SessionRevoked", self._who(session), reason=reason)
                self._close(session, "revoked")
                return True
        return False

    def request_reload(self) -> None:
        """Reload on the loop soon; safe from any thread and from signal handlers (SIGHUP)."""
        try:
            self.loop.call_soon_threadsafe(self.reload)
        except OSError:
            self.log.warning("ReloadFailed", error="the server is stopping")

    def reload(self, new: Optional[Config] = None) -> Tuple[bool, str]:
        """Apply a new configuration to the running server (D-8.9); ``(ok, message)``.

        Without ``new`` the configuration file is read again. Every step that
        can fail (parsing, certificates, binding a moved listener, the auth
        backends) runs before anything changes: a failed reload leaves the
        server exactly as it was. Then live sessions take the new classes,
        and sessions of users removed, disabled, given a new secret or now
        refused by their ACL are closed (``SessionRevoked``).
        """
        old = self.config
        try:
            if new is None:
                new = load_config(old.source)
            auth_chain = self._auth_chain(new)
            tls_context = self._tls_context(new) if new.server.tls is not None else None
            listeners = self._rebind(old, new)
        except (ConfigError, ServerError) as exc:
            self.log.error("ReloadFailed", error=str(exc))
            return False, f"Reload failed: {exc}"
        restart_required = [
            key for key, before, after in (
                ("plugins.disable", old.plugins.disable, new.plugins.disable),
                ("plugins.required", old.plugins.required, new.plugins.required),
                ("logging", old.logging, new.logging),
            ) if before != after
        ]
        # -- commit: nothing below can fail -------------------------------
        for key, (listener, address) in listeners.items():
            previous = self.listener if key == "TCP" else self.tls_listener
            if previous is not None:
                self.loop.unregister(previous)
                previous.close()
            if key == "TCP":
                self.listener, self.address = listener, address
            else:
                self.tls_listener, self.tls_address = listener, address
            if listener is not None:
                self._watch_listener(listener, key)
        self.config = new
        self.settings = new.server
        self.tls_context = tls_context
        self._hooks["authenticate"].impls = auth_chain
        backend = self._core_plugins.get("config")
        if backend is not None:
            backend.replace_users(new.users)
        self.redactor.add_secrets(_secrets_of(new))
        self.actions = self.actions.with_tables(new.plugins.tables)
        self.workers.resize(new.server.worker_threads, new.server.worker_queue_limit)
        self.auth_workers.resize(new.auth.worker_threads, new.server.auth_limit)
        revoked, updated = self._apply_users(old, new)
        self.reloaded_at = time.monotonic()
        self.reloaded_wall = time.time()
        self.audit(
            "ConfigReloaded", source=new.source, users=len(new.users), sessions_updated=updated,
            sessions_revoked=revoked, restart_required=restart_required,
        )
        message = f"Configuration reloaded ({updated} sessions updated, {revoked} revoked)"
        if restart_required:
            message += f"; restart to apply {', '.join(restart_required)}"
        return True, message

    def _rebind(self, old: Config, new: Config) -> Dict[str, Tuple[Optional[socket.socket], Any]]:
        """Bind moved listeners before the old ones close; on failure close what was bound."""
        changes: Dict[str, Tuple[Optional[socket.socket], Any]] = {}
        try:
            if (old.server.host, old.server.port) != (new.server.host, new.server.port):
                listener = self._listen(new.server.host, new.server.port, "server")
                changes["TCP"] = (listener, listener.getsockname()[:2])
            old_tls, new_tls = old.server.tls, new.server.tls
            old_where = (old_tls.host, old_tls.port) if old_tls else None
            new_where = (new_tls.host, new_tls.port) if new_tls else None
            if old_where != new_where:
                if new_tls is None:
                    changes["TLS"] = (None, None)
                else:
                    listener = self._listen(new_tls.host, new_tls.port, "server.tls")
                    changes["TLS"] = (listener, listener.getsockname()[:2])
        except ServerError:
            for listener, _ in changes.values():
                if listener is not None:
                    listener.close()
            raise
        return changes

    def _apply_users(self, old: Config, new: Config) -> Tuple[int, int]:
        """D-8.9 for sessions the ``config`` backend accepted; returns (revoked, updated)."""
        revoked = updated = 0
        for session in list(self.authenticated.values()):
            if session.backend != "config" or session.closed:
                continue
            before, after = old.user(session.user_key), new.user(session.user_key)
            reason = None
            if after is None:
                reason = "user removed"
            elif not after.enabled:
                reason = "user disabled"
            elif before is None or (before.secret, before.secret_hash) != (after.secret, after.secret_hash):
                reason = "secret changed"
            elif not after.acl.allows(session.peer_ip):
                reason = "denied by ACL"
            if reason is not None:
                self.audit("SessionRevoked", self._who(session), reason=reason)
                self._close(session, "revoked")
                revoked += 1
            elif (session.read, session.write) != (after.read, after.write):
                self._settle()
                session.read, session.write = after.read, after.write
                session.changed()
                updated += 1
        return revoked, updated

    def _drain(self) -> None:
        """Q-7.8: publish Shutdown, stop accepting, answer E-6.16, let output drain for at most 2 s.

        Actions already running get the same 2 s to answer; what arrives
        meanwhile is answered ``Asterisk is shutting down``.
        """
        self.shutting_down = True
        self._close_listeners()
        self.log.info("ServerStopping", sessions=len(self.sessions))
        self.publish(Event("Shutdown", "system", (("Shutdown", "Cleanly"), ("Restart", "False"))))
        self._flush_dirty()
        deadline = time.monotonic() + SHUTDOWN_FLUSH_SECONDS
        while self.loop.has_callbacks() or any(
            s.out or (s.current is not None and not s.closed) for s in self.sessions.values()
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.loop.run_once(min(0.05, remaining))
            self._flush_dirty()

    def _close_listeners(self) -> None:
        for listener in (self.listener, self.tls_listener):
            if listener is not None:
                self.loop.unregister(listener)
                listener.close()
        self.listener = self.tls_listener = None

    def _shutdown(self) -> None:
        self._close_listeners()
        for session in list(self.sessions.values()):
            self._close(session, "shutdown")
        self.workers.close()
        self.auth_workers.close()
        self.log.info("ServerStopped")
        self.loop.close()
        if self._own_sink:
            self.log_sink.close()

    def _loop_error(self, exc: BaseException) -> None:
        self.log.error("LoopCallbackFailed", error=repr(exc), exc_info=exc)

    # ------------------------------------------------------------- accepting
    def _on_accept(self, listener: socket.socket, transport: str) -> None:
        for _ in range(64):
            try:
                sock, remote = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("AcceptFailed", error=exc.strerror or str(exc))
                return
            self._accepted(sock, remote, transport)

    def _accepted(self, sock: socket.socket, remote: Any, transport: str = "TCP") -> None:
        local = sock.getsockname()
        remote_address = format_address(remote, transport)
        local_address = format_address(local, transport)
        if self.unauthenticated >= self.settings.auth_limit:
            sock.close()
            self.audit(
                "AuthLimitReached", remote_address=remote_address, local_address=local_address,
                remote_ip=ip_of(remote),
                limit=self.settings.auth_limit,
            )
            return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not every socket family has TCP_NODELAY; it only affects latency
        if transport == "TLS":
            assert self.tls_context is not None
            try:
                sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                sock.close()
                self.audit("TLSHandshakeFailed", remote_address=remote_address, local_address=local_address,
                           remote_ip=ip_of(remote), error=str(exc))
                return
        session = Session(
            sock, new_session_id(self._session_ids),
            remote, local, remote_address, local_address, transport, time.time(),
        )
        self.sessions[session.fd] = session
        self._session_ids.add(session.session_id)
        self.unauthenticated += 1
        self.stats["sessions_accepted"] += 1
        session.on_ready = functools.partial(self._on_ready, session)
        self.loop.register(sock, _READ, session.on_ready)
        session.selector_events = _READ
        # The TLS handshake counts against auth_timeout (P-1.1, A-3.11).
        session.auth_timer = self.loop.call_later(self.settings.auth_timeout, lambda: self._auth_timeout(session))
        if transport == "TLS":
            session.handshaking = True
            self._handshake(session)
        else:
            self._opened(session)

    def _opened(self, session: Session) -> None:
        """The connection is a session now (after the TLS handshake): hooks, audit, banner."""
        session.opened = True
        self.audit("SessionOpened", self._who(session))
        hook = self._hook("on_session_open")
        if hook is not None:
            hook.call(self._hook_error("on_session_open"), session=session.info())
        self._write(session, f"Asterisk Call Manager/{self.settings.ami_version}\r\n".encode())

    def _handshake(self, session: Session) -> None:
        """Advance a non-blocking TLS handshake; never waits on the loop."""
        sock = session.sock
        try:
            sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._set_interest(session, _READ)
            return
        except ssl.SSLWantWriteError:
            self._set_interest(session, _WRITE)
            return
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            self.audit("TLSHandshakeFailed", self._who(session), error=str(reason))
            self._close(session, "TLS handshake failed")
            return
        session.handshaking = False
        self._set_interest(session, _READ)
        self._opened(session)

    def _set_interest(self, session: Session, events: int) -> None:
        """Tell the selector which readiness events this session waits for (0: none)."""
        if events == session.selector_events:
            return
        if not events:
            self.loop.unregister(session.sock)
        elif session.selector_events:
            self.loop.modify(session.sock, events, session.on_ready)
        else:
            self.loop.register(session.sock, events, session.on_ready)
        session.selector_events = events

    def _auth_timeout(self, session: Session) -> None:
        if session.closed or session.state == AUTHENTICATED:
            return
        if session.close_after_flush:
            return
        self.audit("AuthTimeout", self._who(session), timeout=self.settings.auth_timeout)
        self._close(session, "auth timeout")

    # ------------------------------------------------------------------- I/O
    def _on_ready(self, session: Session, mask: int) -> None:
        if session.closed:
            return
        if session.handshaking:
            self._handshake(session)
            return
        if mask & _WRITE:
            self._send(session)
            if session.closed:
                return
        if mask & _READ:
            self._receive(session)

    def _receive(self, session: Session) -> None:
        sock = session.sock
        try:
            data = sock.recv(_RECV_SIZE)
            if data and session.transport == "TLS":
                # Decrypted bytes already inside the TLS object never wake the selector.
                while sock.pending():  # type: ignore[attr-defined]
                    data += sock.recv(sock.pending())  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except ssl.SSLZeroReturnError:
            data = b""  # the peer's TLS close_notify: end of stream
        except OSError:
            self._close(session, "I/O error")
            return
        if not data:
            session.eof = True
            self._update_interest(session)
            if session.current is not None and session.current.wait_reply is not None:
                # A wait ended by the peer going away: nothing is sent (B-5.11).
                self._close(session, "peer closed")
                return
            self._process_input(session)
            return
        if session.state == CLOSING:
            return  # failed login or logoff: input is discarded (A-3.8, B-5.2)
        run = session.current
        if run is None and len(session.out) <= self.settings.output_queue_limit:
            # The common read: one whole request, answered without buffering it.
            message = session.parser.take(data)
            if message is not None:
                self._dispatch(session, message)
                self._input_settled(session, session.current is None and session.state != CLOSING)
                return
        else:
            session.parser.feed(data)
            if run is not None and run.wait_reply is not None:
                self._complete(session, run, run.wait_reply)
                return
        # The requests answered from this read share one clock reading
        # (ActionContext.timestamp); the scope closes whatever happens.
        self._read_stamp = ""
        try:
            self._process_input(session)
        finally:
            self._read_stamp = None

    def _process_input(self, session: Session) -> None:
        """Dispatch buffered messages one at a time while the session may run one (R-2.9, Q-7.7).

        At most ``MESSAGES_PER_TURN`` messages of one session are handled per
        loop turn; the rest wait for the next turn, so one client pipelining
        hundreds of requests cannot delay everyone else's replies.
        """
        limit = self.settings.output_queue_limit
        exhausted = False
        budget = MESSAGES_PER_TURN
        next_message = session.parser.next_message
        dispatch = self._dispatch
        out = session.out
        # A closed session is CLOSING too (_close), so one state test covers both.
        while session.current is None and session.state != CLOSING:
            if len(out) > limit:
                session.output_paused = True  # _send resumes once the output drained
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
            dispatch(session, message)
        self._input_settled(session, exhausted)

    def _input_settled(self, session: Session, exhausted: bool) -> None:
        """After dispatching: ``exhausted`` when every buffered message was taken."""
        if session.closed:
            return
        if exhausted and session.selector_events == _READ and not session.eof and not session.blocked:
            return  # still reading, nothing buffered: the interest stands
        if session.eof and exhausted:
            # P-1.17: every complete message was answered; a partial one is dropped.
            self._close_after_flush(session, "peer closed")
            return
        self._update_interest(session)

    def _resume_input(self, session: Session) -> None:
        session.resume_pending = False
        if not session.closed:
            self._process_input(session)

    def _update_interest(self, session: Session) -> None:
        if session.closed:
            return
        events = _READ if not session.eof and session.parser.buffered < INPUT_LIMIT else 0
        if session.blocked and session.out:
            # Only a socket that refused bytes is watched for writability; other
            # output is sent at the end of this loop turn (_flush_dirty).
            events |= _WRITE
        if events != session.selector_events:
            self._set_interest(session, events)

    def _write(self, session: Session, data: bytes) -> None:
        if session.closed:
            return
        if self._broadcast and session.receives & self._broadcast_classes:
            self._flush_broadcast()  # events published earlier go first
        if not session.out:
            self._dirty.append(session)
        session.out += data

    def _flush_dirty(self) -> None:
        while self._dirty or self._broadcast:
            if self._broadcast:
                self._flush_broadcast()
            dirty, self._dirty = self._dirty, []
            for session in dirty:
                if not session.closed:
                    self._send(session)

    def _send(self, session: Session) -> None:
        out = session.out
        if out:
            try:
                sent = session.sock.send(out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                sent = 0
            except OSError:
                self._close(session, "I/O error")
                return
            if sent:
                del out[:sent]
            session.blocked = bool(out)
        if not out and session.close_after_flush:
            self._close(session, session.close_reason)
            return
        if session.blocked or session.selector_events & _WRITE:
            # A send changes only the write interest (read depends on input).
            self._update_interest(session)
        if session.output_paused and len(out) <= self.settings.output_queue_limit:
            # Output drained below the limit: resume dispatching.
            session.output_paused = False
            self._process_input(session)

    def _close_after_flush(self, session: Session, reason: str) -> None:
        self._settle()  # what was published before goes out before the close
        session.state = CLOSING
        session.close_after_flush = True
        session.close_reason = reason
        session.changed()
        if not session.out:
            self._close(session, reason)
            return
        if session.linger_timer is None:
            session.linger_timer = self.loop.call_later(LINGER_SECONDS, lambda: self._close(session, reason))
        self._update_interest(session)

    def _close(self, session: Session, reason: str) -> None:
        """Close at once; run ``on_session_close`` exactly once (Q-7.9)."""
        if session.closed:
            return
        session.closed = True
        was_authenticated = session.fd in self.authenticated
        self.sessions.pop(session.fd, None)
        self._session_ids.discard(session.session_id)
        self.authenticated.pop(session.fd, None)
        if not was_authenticated:
            self.unauthenticated -= 1
        for timer in (session.auth_timer, session.linger_timer):
            if timer is not None:
                timer.cancel()
        run = session.current
        if run is not None:
            if run.timer is not None:
                run.timer.cancel()
            if run.deferred is not None:
                run.deferred._cancel()
        session.current = None
        if session.selector_events:
            self.loop.unregister(session.sock)
            session.selector_events = 0
        session.on_ready = None  # it refers back to the session
        try:
            session.sock.close()
        except OSError:
            pass
        session.state = CLOSING
        session.changed()
        if not session.opened:
            return  # a TLS handshake that never completed: never a session for the hooks
        self.audit(
            "SessionClosed", self._who(session), reason=reason,
            duration=round(time.time() - session.opened_at, 3),
        )
        hook = self._hook("on_session_close")
        if hook is not None:
            hook.call(self._hook_error("on_session_close"), session=session.info(), reason=reason)

    # -------------------------------------------------------------- dispatch
    def _dispatch(self, session: Session, message: Message) -> None:
        """R-2.8: the first step that answers ends it."""
        action_id = message.action_id
        if message.error is not None:
            self._write(session, render_response("Error", action_id, message.error))
            return
        if self.shutting_down:
            self._write(session, render_response("Error", action_id, "Asterisk is shutting down"))
            return
        name = message.action
        if not name:
            if not message.empty:
                self._security(session, "RequestBadFormat", extra=(("RequestType", "Action: NONE"),))
            self._write(session, render_response("Error", action_id, "Missing action in request"))
            return
        if session.state != AUTHENTICATED:
            key = name.lower()
            if key not in _PRE_LOGIN:
                self._deny(session, name, action_id)
                return
            if key in ("login", "challenge"):
                username = message.get("Username") or ""
                if username and self._login_in_use(username):
                    run = ActionRun(name, action_id, time.monotonic(), None, True)
                    self._settle()
                    session.current = run
                    self._security(session, "SessionLimit", account=username)
                    failed = self._fail_later(session, run, "Login Already In Use", "login in use")
                    self._handle_result(session, run, failed)
                    return
        entry = self.actions.by_spelling.get(name) or self.actions.by_name.get(name.lower())
        if entry is None:
            self._security(session, "RequestBadFormat", extra=(("RequestType", _cut(f"Action: {name}", 63)),))
            text = f"Invalid/unknown command: {name}. Use Action: ListCommands to show available commands."
            self._write(session, render_response("Error", action_id, _cut(text, 511)))
            return
        action = entry.action
        privileges = action.privileges
        if privileges and not privileges & session.write:
            self._deny(session, name, action_id)
            return
        audit = not action.read_only or self.config.logging.audit_read_only_actions
        run = _SessionBackend(action.name, action_id, time.monotonic() if audit else 0.0, entry, audit)
        run.server = self
        run.session = session
        if self._broadcast and session.receives & self._broadcast_classes:
            self._flush_broadcast()  # events published before this action are not held back
        session.current = run
        context = ActionContext(message, session.info(), run, entry.config)
        if action.blocking:
            self._run_blocking(session, run, action, context)
            return
        try:
            result = action.handler(context)
        except ActionError as exc:
            result = exc.response
        except Exception as exc:  # noqa: BLE001 - R-2.12
            self._handler_failed(session, run, exc)
            return
        if result.__class__ is Response:
            self._finish(session, run, result)
        else:
            self._handle_result(session, run, result)

    def _handle_result(self, session: Session, run: ActionRun, result: Any) -> None:
        if isinstance(result, Response):
            self._finish(session, run, result)
        elif isinstance(result, Deferred):
            early = result._claim()
            if early is not None:
                # Completed before the handler returned (e.g. a Login decided on the
                # loop): answered now, with no timer and no extra loop turn.
                self._complete(session, run, early)
                return
            run.deferred = result
            if run.timer is None and run.wait_reply is None and not session.state == CLOSING:
                run.timer = self.loop.call_later(self.settings.action_timeout, lambda: self._timed_out(session, run))
            result._bind(lambda response: self._resolve_threadsafe(session, run, response))
        else:
            self._handler_failed(session, run, TypeError(f"handler returned {type(result).__name__}, not a Response or Deferred"))

    def _run_blocking(self, session: Session, run: ActionRun, action: Action, context: ActionContext) -> None:
        """Run a blocking handler in the worker pool; its outcome comes back to the loop."""

        def done(outcome: Outcome) -> None:
            self.loop.call_soon_threadsafe(lambda: self._blocking_done(session, run, outcome))

        if not self.workers.submit(lambda: action.handler(context), done):
            self.log.warning(
                "WorkerQueueFull", action=run.name, session=session.session_id,
                limit=self.settings.worker_queue_limit,
            )
            self._finish(session, run, Response.error("Server busy, try again later"))
            return
        run.timer = self.loop.call_later(self.settings.action_timeout, lambda: self._timed_out(session, run))

    def _blocking_done(self, session: Session, run: ActionRun, outcome: Outcome) -> None:
        value, exc = outcome
        if session.closed or session.current is not run:
            self.log.info("LateReplyDiscarded", action=run.name, session=session.session_id)
            return
        if isinstance(exc, ActionError):
            value = exc.response
        elif exc is not None:
            self._handler_failed(session, run, exc)
            self.loop.call_soon(lambda: self._process_input(session))
            return
        if isinstance(value, Deferred):
            self._handle_result(session, run, value)
        else:
            self._complete(session, run, value)

    def _resolve_threadsafe(self, session: Session, run: ActionRun, response: Any) -> None:
        if self.loop.in_loop_thread():
            self.loop.call_soon(lambda: self._complete(session, run, response))
        else:
            self.loop.call_soon_threadsafe(lambda: self._complete(session, run, response))

    def _complete(self, session: Session, run: ActionRun, response: Any) -> None:
        """A deferred reply arrived on the loop: write it unless it is stale."""
        if session.closed or session.current is not run:
            return
        if run.deferred is not None:
            run.deferred._cancel()
        if not isinstance(response, Response):
            self._handler_failed(session, run, TypeError(f"deferred completed with {type(response).__name__}, not a Response"))
        else:
            self._finish(session, run, response)
        if not session.closed:
            self.loop.call_soon(lambda: self._process_input(session))

    def _timed_out(self, session: Session, run: ActionRun) -> None:
        if session.closed or session.current is not run:
            return
        self.log.warning("ActionTimedOut", action=run.name, session=session.session_id, timeout=self.settings.action_timeout)
        if run.deferred is not None:
            run.deferred._cancel()
        self._finish(session, run, Response.error("Action timed out"))
        self.loop.call_soon(lambda: self._process_input(session))

    def _handler_failed(self, session: Session, run: ActionRun, exc: BaseException) -> None:
        plugin = run.entry.plugin if run.entry else "core"
        self.log.error(
            "ActionFailed", action=run.name, plugin=plugin, session=session.session_id,
            error=repr(exc), traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        self._finish(session, run, Response.error("Internal error"))

    def _finish(self, session: Session, run: ActionRun, response: Response) -> None:
        """Write a complete reply, then the events queued meanwhile (R-2.9, R-2.10)."""
        if self._broadcast and session.receives & self._broadcast_classes:
            self._flush_broadcast()  # events published while it ran are queued behind the reply
        if run.timer is not None:
            run.timer.cancel()
        action_id = run.action_id
        if (
            not response.blocks and response.completion is None and not response.close
            and not session.pending and response.__class__ is Response
        ):
            # The common reply: one block and nothing queued behind it.
            try:
                replies = self._replies
                if response is replies.last:  # answered the previous request too (Ping in a read)
                    data = replies.render(response, response.status, action_id, response.message,
                                          response.headers, response.list_start)
                else:
                    replies.last = response
                    data = render_reply(response.status, action_id, response.message, response.headers,
                                        response.list_start)
            except Exception as exc:  # noqa: BLE001 - an invalid reply is an internal error
                self._handler_failed(session, run, exc)
                return
            session.current = None
            self._write(session, data)
            if run.audit:
                self._audit_executed(session, run, response)
            return
        try:
            parts = [render_response(response.status, action_id, response.message, response.headers, response.list_start)]
            for block in response.blocks:
                parts.append(render_block(block.name, block.headers, action_id if block.with_action_id else ""))
            completion = b""
            if response.completion is not None:
                block = response.completion
                completion = render_block(block.name, block.headers, action_id if block.with_action_id else "")
        except Exception as exc:  # noqa: BLE001 - an invalid reply is an internal error
            if response.status == "Error" and response.message == "Internal error":
                raise
            self._handler_failed(session, run, exc)
            return
        if completion and not response.events_before_completion:
            parts.append(completion)
            completion = b""
        session.current = None
        if response.close:
            session.pending.clear()
            session.pending_bytes = 0
        elif session.state == AUTHENTICATED and session.pending:
            parts.extend(session.pending)
            session.pending.clear()
            session.pending_bytes = 0
        if completion:
            parts.append(completion)
        self._write(session, b"".join(parts))
        if run.audit:
            self._audit_executed(session, run, response)
        if response.close:
            reason = session.close_reason or "logoff"
            self._close_after_flush(session, reason)

    def _audit_executed(self, session: Session, run: ActionRun, response: Response) -> None:
        self._audit_log.write(_EXECUTED, self._who(session), (
            run.name, run.action_id, response.status, response.message,
            round((time.monotonic() - run.started) * 1000, 3),
        ))

    def _deny(self, session: Session, name: str, action_id: str) -> None:
        self._security(session, "RequestNotAllowed", extra=(("RequestType", _cut(f"Action: {name}", 63)),))
        self.audit("ActionDenied", self._who(session), action=name, action_id=action_id)
        self._write(session, render_response("Error", action_id, "Permission denied"))

    # ---------------------------------------------------------------- login
    def _login_in_use(self, username: str) -> bool:
        key = username.lower()
        user = self.config.user(key)
        allowed = self.settings.allow_multiple_login
        if user is not None and user.allow_multiple_login is not None:
            allowed = user.allow_multiple_login
        if allowed:
            return False
        return any(s.user_key == key for s in self.authenticated.values())

    def _fail_later(
        self, session: Session, run: ActionRun, message: str, reason: str, deferred: Optional[Deferred] = None
    ) -> Deferred:
        """A-3.8: enter CLOSING now, answer ``message`` after the delay, then close."""
        self._settle()
        session.state = CLOSING
        session.close_reason = reason
        session.changed()
        if deferred is None:
            deferred = Deferred()
        if run.timer is not None:
            run.timer.cancel()
        answer = deferred
        run.timer = self.loop.call_later(
            self.settings.login_failure_delay,
            lambda: answer.complete(Response("Error", message, close=True)),
        )
        return deferred

    def _plaintext_refused(self, session: Session, username: str) -> bool:
        """``require_tls_for_plaintext``: a plaintext Secret only over TLS or from loopback."""
        required = self.settings.require_tls_for_plaintext
        user = self.config.user(username)
        if user is not None and user.require_tls_for_plaintext is not None:
            required = user.require_tls_for_plaintext
        if not required or session.transport == "TLS":
            return False
        try:
            return not normalize_ip(session.remote[0]).is_loopback
        except ValueError:
            return True

    def _login(self, session: Session, run: ActionRun, request: Message) -> Any:
        if session.state == AUTHENTICATED:
            return Response.success("Already authenticated")
        username = request.get("Username") or ""
        if not username:
            self.audit("LoginFailed", self._who(session, ""), reason="no username")
            return self._fail_later(session, run, "Authentication failed", "login failed")
        md5 = (request.get("AuthType") or "").lower() == "md5"
        auth_type = "md5" if md5 else "plain"
        if not md5 and self._plaintext_refused(session, username):
            self.audit(
                "LoginFailed", self._who(session, username), auth_type=auth_type,
                reason="plaintext secret refused without TLS", backend=None,
            )
            return self._fail_later(session, run, "Authentication failed", "login failed")
        auth = AuthRequest(
            username=username,
            auth_type=auth_type,
            secret=None if md5 else request.get("Secret"),
            challenge=session.challenge if md5 else None,
            key=request.get("Key") if md5 else None,
            remote_address=session.remote_address,
            local_address=session.local_address,
            transport=session.transport,
            peer_ip=session.peer_ip,
        )
        deferred = Deferred()
        attempt = _AuthAttempt(auth, deferred)
        chain = list(self._hooks["authenticate"].impls)
        tables = self.config.plugins.tables
        if all(getattr(self.manager.get_plugin(name), NONBLOCKING_ATTRIBUTE, False) is True for name, _, _ in chain):
            # Every backend promised never to block: decide on the loop, no thread hop.
            try:
                outcome: Outcome = (_ask_backends(chain, tables, attempt), None)
            except Exception as exc:  # noqa: BLE001 - fail closed like a worker would
                outcome = (None, exc)
            self._auth_done(session, run, request, attempt, outcome)
            return deferred

        def done(outcome: Outcome) -> None:
            self.loop.call_soon_threadsafe(lambda: self._auth_done(session, run, request, attempt, outcome))

        if not self.auth_workers.submit(lambda: _ask_backends(chain, tables, attempt), done):
            self.audit(
                "AuthBackendError", self._who(session, username), backend=None,
                error="too many logins waiting for a backend",
            )
            return self._fail_later(session, run, "Authentication failed", "login failed", deferred)
        run.timer = self.loop.call_later(self.config.auth.timeout, lambda: self._auth_timed_out(session, run, attempt))
        return deferred

    def _auth_timed_out(self, session: Session, run: ActionRun, attempt: "_AuthAttempt") -> None:
        if attempt.settled or session.closed or session.current is not run:
            return
        attempt.settled = True
        self.audit(
            "AuthBackendError", self._who(session, attempt.request.username), backend=attempt.backend,
            error=f"no answer within {self.config.auth.timeout:g} s",
        )
        self._reject(session, run, attempt, None, AuthDecision.reject())

    def _auth_done(self, session: Session, run: ActionRun, request: Message, attempt: "_AuthAttempt", outcome: Outcome) -> None:
        """The backend chain answered (on the loop): accept or reject the Login."""
        if attempt.settled or session.closed or session.current is not run:
            return
        attempt.settled = True
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        value, exc = outcome
        username = attempt.request.username
        if exc is not None:
            value = (attempt.backend, None, f"authentication chain failed: {exc!r}")
        backend, decision, error = value
        if error is not None:
            self.audit("AuthBackendError", self._who(session, username), backend=backend, error=error)
            decision = AuthDecision.reject()
        if decision is None:
            decision = AuthDecision.reject("unknown_user")
        if not decision.accepted:
            self._reject(session, run, attempt, backend, decision)
            return
        if self._login_in_use(username):
            # Another session of this user logged in while the backend was deciding.
            self._security(session, "SessionLimit", account=username)
            self._fail_later(session, run, "Login Already In Use", "login in use", attempt.deferred)
            return
        attempt.deferred.complete(self._accept_login(session, request, decision, backend, attempt.request.auth_type))

    def _reject(
        self, session: Session, run: ActionRun, attempt: "_AuthAttempt", backend: Optional[str], decision: AuthDecision
    ) -> None:
        username = attempt.request.username
        event = _REJECT_EVENTS.get(decision.reason or "")
        if event == "ChallengeResponseFailed":
            self._security(session, event, account=username, extra=(("Challenge", session.challenge or ""),))
        elif event:
            self._security(session, event, account=username)
        fields: Dict[str, Any] = {}
        if decision.detail:
            fields["detail"] = decision.detail
        self.audit(
            "LoginFailed", self._who(session, username), auth_type=attempt.request.auth_type,
            reason=decision.reason or "rejected", backend=backend, **fields,
        )
        self._fail_later(session, run, "Authentication failed", "login failed", attempt.deferred)

    def _accept_login(
        self, session: Session, request: Message, decision: AuthDecision, backend: Optional[str], auth_type: str
    ) -> Response:
        """A-3.7: authenticate, publish SuccessfulAuth, answer, FullyBooted, pending events."""
        self._settle()  # events published before this login are not for this session
        username = request.get("Username") or ""
        session.state = AUTHENTICATED
        session.username = username
        session.user_key = username.lower()
        session.read = decision.read
        session.write = decision.write
        session.backend = backend
        mask = parse_event_mask(request.get("Events"))
        if mask is not None:
            session.mask = mask
        session.login_time = time.time()
        if session.auth_timer is not None:
            session.auth_timer.cancel()
            session.auth_timer = None
        self.unauthenticated -= 1
        self.authenticated[session.fd] = session
        session.changed()
        self.audit("LoginSucceeded", self._who(session), auth_type=auth_type, backend=backend)
        self._security(session, "SuccessfulAuth", extra=(("UsingPassword", "0"),))
        blocks: Tuple[Block, ...] = ()
        if session.read & session.mask & _SYSTEM:
            now = time.monotonic()
            blocks = (
                Block(
                    "FullyBooted",
                    (
                        ("Privilege", "system,all"),
                        ("Uptime", str(int(now - self.started_at))),
                        ("LastReload", str(int(now - self.reloaded_at))),
                        ("Status", "Fully Booted"),
                    ),
                    with_action_id=False,
                ),
            )
        return Response("Success", "Authentication accepted", blocks=blocks)

    # ---------------------------------------------------------------- events
    def publish(self, event: Event) -> None:
        """Render once, deliver to every session that may receive it (Q-7.2 to Q-7.5).

        Safe from any thread: off the loop, the publication is handed over.
        """
        self._publish(event, None)

    def _publish(self, event: Event, audit_fields: Optional[AuditFields]) -> None:
        if not self.loop.in_loop_thread():
            self.loop.call_soon_threadsafe(lambda: self._publish(event, audit_fields))
            return
        if not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, not {type(event).__name__}")
        self.stats["events_published"] += 1
        self._broadcast.append((event.classes, self._render_event(event)))
        self._broadcast_classes |= event.classes
        if audit_fields is not None or event.name in _SECURITY_EVENT_NAMES:
            # every security event is an audit record too, received or not.
            fields = {**dict(event.headers), TRUSTED_FIELDS_KEY: _TRUSTED_SECURITY_FIELDS}
            self._audit_log.record(event.name, fields, audit_fields)
        hook = self._hook("on_event")
        if hook is not None:
            hook.call(self._hook_error("on_event"), event=event)

    def _settle(self) -> None:
        """Deliver deferred events before a session's state changes (state, classes, mask, filters)."""
        if self._broadcast:
            self._flush_broadcast()

    def _flush_broadcast(self) -> None:
        """Deliver the deferred events, in publication order, to every session that receives them.

        The common recipient -- idle, no filters, receiving every class
        published, well under its limit -- gets them all as one append; any
        other takes them one by one exactly as :meth:`_deliver` decides.
        """
        while self._broadcast:
            entries, self._broadcast = self._broadcast, []
            union, self._broadcast_classes = self._broadcast_classes, 0
            joined = entries[0][1] if len(entries) == 1 else b"".join([data for _, data in entries])
            size = len(joined)
            limit = self.settings.output_queue_limit
            dirty = self._dirty
            others: List[Session] = []
            # The hot loop.
            for session in self.authenticated.values():
                receives = session.receives
                if not receives & union:
                    continue  # none of its classes, or not (any more) authenticated
                if receives & union == union and session.filters is None:
                    out = session.out
                    if session.current is None and len(out) + size <= limit:
                        if not out:
                            dirty.append(session)
                        out += joined
                        continue
                others.append(session)
            texts: Dict[int, str] = {}
            for session in others:
                for index, (classes, data) in enumerate(entries):
                    if session.closed:
                        break
                    if session.receives & classes != classes:
                        continue
                    if session.filters is not None:
                        text = texts.get(index)
                        if text is None:
                            text = texts[index] = data.decode("utf-8", "surrogateescape")
                        if not session.filters.passes(text):
                            continue
                    self._deliver(session, data)

    def _render_event(self, event: Event) -> bytes:
        privilege = self._privilege_cache.get(event.classes)
        if privilege is None:
            privilege = self._privilege_cache[event.classes] = format_privilege(event.classes)
        head = f"Event: {event.name}\r\nPrivilege: {privilege}\r\n"
        if self.settings.timestamp_events:
            head += f"Timestamp: {wall_timestamp()}\r\n"
        if self.settings.system_name:
            head += f"SystemName: {self.settings.system_name}\r\n"
        headers = event.headers
        body = "".join([f"{name}: {value}\r\n" for name, value in headers])
        if body.count("\n") != len(headers) or body.count("\r") != len(headers):
            # A value holds a CR or LF: cleaned (names are checked tokens).
            body = "".join([f"{name}: {clean(value)}\r\n" for name, value in headers])
        return encode(head + body + "\r\n")

    def _deliver(self, session: Session, data: bytes) -> None:
        """Append to the output buffer, or to the pending list while an action runs (Q-7.4)."""
        if session.closed or session.state != AUTHENTICATED:
            return
        if len(session.out) + session.pending_bytes + len(data) > self.settings.output_queue_limit:
            self.stats["slow_consumer_disconnects"] += 1
            self.stats["events_dropped"] += 1 + len(session.pending)
            self.audit(
                "SlowConsumerDisconnect", self._who(session),
                buffered=len(session.out) + session.pending_bytes, limit=self.settings.output_queue_limit,
            )
            self._close(session, "slow consumer")
            return
        run = session.current
        if run is None:
            self._write(session, data)
            return
        session.pending.append(data)
        session.pending_bytes += len(data)
        if run.wait_reply is not None:
            self._resolve_threadsafe(session, run, run.wait_reply)

    def _wait_for_event(self, session: Session, run: ActionRun, timeout: Optional[float], reply: Response) -> Deferred:
        deferred = Deferred()
        if timeout == 0 or session.parser.has_input or session.pending:
            deferred.complete(reply)
            return deferred
        run.wait_reply = reply
        if timeout is not None:
            run.timer = self.loop.call_later(timeout, lambda: deferred.complete(reply))
        return deferred

    # ----------------------------------------------------------- security
    def _security(self, session: Session, name: str, account: Optional[str] = None, extra: Tuple[Tuple[str, str], ...] = ()) -> None:
        account_id = session.username if account is None else account
        event = security_event(
            name,
            session_id=session.session_id,
            local_address=session.local_address,
            remote_address=session.remote_address,
            account_id=account_id,
            session_tv=session.login_time,
            extra=extra,
        )
        self._publish(event, self._who(session, account_id))

    # ---------------------------------------------------------------- audit
    def audit(self, record: str, about: Optional[AuditFields] = None, /, **fields: Any) -> None:
        """Write the audit record ``record``: ``about`` (see :meth:`_who`), then ``fields``."""
        fields[TRUSTED_FIELDS_KEY] = _TRUSTED_AUDIT_FIELDS
        self._audit_log.record(record, fields, about)

    @staticmethod
    def _who(session: Session, username: Optional[str] = None) -> AuditFields:
        """The fields every audit record about a session carries (kept until its username changes)."""
        who = session.who
        if who is None or who["username"] != session.username:
            who = session.who = AuditFields({
                "session": session.session_id,
                "remote_address": session.remote_address,
                "local_address": session.local_address,
                "remote_ip": session.peer_ip,
                "tls": session.transport == "TLS",
                "username": session.username,
            }, _TRUSTED_WHO_FIELDS)
        if username is not None and username != who["username"]:
            return AuditFields({**who, "username": username}, _TRUSTED_WHO_FIELDS)
        return who

    def _hook(self, name: str) -> Optional[HookCaller]:
        """The hook ``name`` if any plugin implements it (callers skip building its arguments otherwise)."""
        hook = self._hooks.get(name)
        return hook if hook is not None and hook.impls else None

    def _hook_error(self, hook: str) -> Callable[[str, BaseException], None]:
        def report(plugin: str, exc: BaseException) -> None:
            self.log.error(
                "HookFailed", hook=hook, plugin=plugin, error=repr(exc),
                traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )

        return report


class _AuthAttempt:
    """One Login's trip through the backend chain; ``settled`` drops a late answer."""

    __slots__ = ("request", "deferred", "backend", "settled")

    def __init__(self, request: AuthRequest, deferred: Deferred) -> None:
        self.request = request
        self.deferred = deferred
        #: The backend being asked right now (named in a timeout's audit record).
        self.backend: Optional[str] = None
        self.settled = False


def _ask_backends(
    chain: Sequence[Tuple[str, Callable[..., Any], Tuple[str, ...]]],
    tables: Any,
    attempt: _AuthAttempt,
) -> Tuple[Optional[str], Optional[AuthDecision], Optional[str]]:
    """Run in an auth worker: ask each backend in order (A-3.15).

    Returns ``(backend, decision, error)``; any failure is an ``error`` and
    the login is then rejected (fail closed).
    """
    for plugin, function, argnames in chain:
        attempt.backend = plugin
        arguments = {"request": attempt.request, "config": tables.get(plugin, {})}
        try:
            result = function(*[arguments[a] for a in argnames])
        except Exception as exc:  # noqa: BLE001 - fail closed, audited by the caller
            return plugin, None, _without_credentials(repr(exc), attempt.request)
        if result is None:
            continue
        if not isinstance(result, AuthDecision):
            return plugin, None, f"returned {type(result).__name__}, not an AuthDecision"
        return plugin, result, None
    return None, None, None


def _secrets_of(config: Config) -> List[str]:
    """Every configured secret and secret hash: what the log redactor must never let through."""
    return [value for user in config.users.values() for value in (user.secret, user.secret_hash) if value]


def _without_credentials(text: str, request: AuthRequest) -> str:
    """A backend's error text may quote what it was given: never let it reach the log."""
    for value in (request.secret, request.key):
        if value:
            text = text.replace(value, REDACTED)
    return text


def _cut(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` bytes of UTF-8 as Asterisk's fixed buffers do."""
    data = encode(text)
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "surrogateescape")
