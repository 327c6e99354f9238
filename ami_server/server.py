"""The composition root: builds the parts of one server, wires them, runs their lifecycle.

The parts, each its own module: the loop (:mod:`.loop`), sockets
(:mod:`.connection`), the session core (:mod:`.core`) with its output
(:mod:`.outbox`), the event bus (:mod:`.events`), the dispatcher
(:mod:`.dispatch`), the login policy (:mod:`.login`), session control
(:mod:`.control`), reload (:mod:`.reload`) and the plugin host
(:mod:`.plugins`, :mod:`.hooks`). This module only connects them.
"""

from __future__ import annotations

import ssl
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import pluggy

from .audit import FileSink, LogSink, Redactor, StreamSink, default_format, make_audit_logger, make_logger
from .config import Config
from .connection import Listener, ListenError, Outbound, StreamProtocol, listen, server_tls_context
from .context import ServerHandle, SessionControl
from .control import ControlBackend, ServerControl
from .core import SessionCore
from .dispatch import Dispatcher
from .events import EventBus
from .health import OpsRegistry
from .hooks import ContainedHook
from .login import AuthChainError, LoginPolicy, build_chain
from .loop import Loop
from .plugins import (
    ActionRegistry,
    PluginRecord,
    RegisteredAction,
    collect_actions,
    create_plugin_manager,
    load_plugins,
)
from .records import Action, Event, ServerStatus
from .ops import OpsEndpoint, OpsStartError, start_http
from .reload import reload as _reload, secrets_of
from .security import host_port
from .session_audit import SessionAudit
from .workers import WorkerPool

__all__ = ["Server", "ServerError"]

#: Graceful shutdown: how long output may take to drain before every session is closed (Q-7.8).
SHUTDOWN_FLUSH_SECONDS = 2.0


class ServerError(Exception):
    """The server cannot start (address in use, plugin failure, ...)."""


class Server:
    """One AMI server instance: its config, plugin manager, listeners and sessions.

    Build it, :meth:`start` it (binds the listeners, loads plugins), then call
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
        loop: Optional[Loop] = None,
        worker: Optional[int] = None,
    ) -> None:
        self.config = config
        #: The configuration the process started with: what a reload cannot change is compared with it.
        self.boot_config = config
        #: Plugins' health checks and metrics; the [http] endpoint (None: off).
        self.ops = OpsRegistry()
        self.http: Optional[OpsEndpoint] = None
        #: This process's index under ``ami-server --workers N`` (``None``: a single process).
        self.worker = worker
        self.loop = loop or Loop()
        self.loop.on_error = self._loop_error
        self.manager = plugin_manager or create_plugin_manager()
        self._entry_points = entry_points
        self._extra_plugins = tuple(extra_plugins)
        self._own_sink = log_sink is None
        self.log_sink, fmt = self._sink(config, log_sink)
        self.redactor = Redactor(secrets_of(config))
        context = {"worker": worker} if worker is not None else None
        self.log = make_logger(self.log_sink, config.logging.level, fmt, self.redactor, context)
        audit_log = make_audit_logger(self.log_sink, config.logging.level, fmt, self.redactor, context)
        self.plugins: List[PluginRecord] = []
        self.actions = ActionRegistry()
        self.listeners: Dict[str, Listener] = {}
        self.tls_context: Optional[ssl.SSLContext] = None
        self.started_at = self.reloaded_at = time.monotonic()
        self.started_wall = self.reloaded_wall = time.time()
        self._stopping = False
        self._reload_listeners: List[Callable[[Config, SessionControl], None]] = []
        self._stop_listeners: List[Callable[[], None]] = []
        settings = self._settings
        self.workers = WorkerPool(config.server.worker_threads, config.server.worker_queue_limit, self._loop_error)
        self.auth_workers = WorkerPool(
            config.auth.worker_threads, config.server.auth_limit, self._loop_error, name="ami-auth"
        )
        # The audit helper publishes security events on the bus, which needs the core's outbox.
        self.audit = SessionAudit(audit_log, None)
        self.core = SessionCore(self.loop, settings, self.audit)
        self.bus = EventBus(
            self.core.outbox, settings, self.loop.in_loop_thread, self.loop.call_soon_threadsafe, audit_log,
            lambda who, exc: self._hook_failed("event subscriber", who, exc),
        )
        self.audit.publish = self.bus.publish
        self.login = LoginPolicy(
            self.core, self.loop, self.auth_workers, lambda: self.config,
            lambda: (self.started_at, self.reloaded_at),
        )
        self.dispatcher = Dispatcher(
            self.core, self.loop, self.bus, self.login, self.workers, settings,
            lambda: self.config.logging.audit_read_only_actions, self.log, self.status,
        )
        self.core.dispatcher = self.dispatcher
        # An event held for a session in WaitEvent ends the wait (B-5.11).
        self.core.outbox.on_held = lambda session, run: self.dispatcher.resolve_threadsafe(
            session, run, run.wait_reply)
        self.control = ControlBackend(self.core, self.login, lambda: self.actions, self.reload)
        self.dispatcher.control = self.control
        self.control.dispatcher = self.dispatcher
        self.handle = ServerHandle(self)

    def _settings(self) -> Any:
        return self.config.server

    @staticmethod
    def _sink(config: Config, log_sink: Optional[LogSink]) -> Tuple[LogSink, str]:
        if log_sink is not None:
            return log_sink, "json" if config.logging.format == "auto" else config.logging.format
        if config.logging.file:
            try:
                sink = FileSink(config.logging.file)
            except OSError as exc:
                raise ServerError(
                    f"{config.source}: logging.file: cannot open {config.logging.file!r}: {exc.strerror}"
                ) from None
            return sink, "json" if config.logging.format == "auto" else config.logging.format
        return StreamSink(sys.stderr), default_format(config.logging.format)

    # -- setup --------------------------------------------------------------
    @property
    def settings(self) -> Any:
        return self.config.server

    @property
    def address(self) -> Optional[Tuple[str, int]]:
        """The bound address of the plain listener."""
        listener = self.listeners.get("TCP")
        return listener.address if listener is not None else None

    @property
    def tls_address(self) -> Optional[Tuple[str, int]]:
        listener = self.listeners.get("TLS")
        return listener.address if listener is not None else None

    def load(self) -> None:
        """Load plugins and collect actions (no socket is opened)."""
        try:
            self.plugins = load_plugins(self.manager, self.config.plugins, self._extra_plugins, self._entry_points)
            self.actions = collect_actions(self.manager, self.plugins, self.handle, self.config.plugins.tables)
            self.login.chain = build_chain(self.manager, self.config.auth_backends, self.config.source)
        except AuthChainError as exc:
            raise ServerError(str(exc)) from None
        except Exception as exc:
            raise ServerError(str(exc)) from exc
        self.dispatcher.registry = self.actions
        on_event = ContainedHook(self.manager, "on_event", self._hook_failed)
        if on_event:
            self.bus.subscribe(lambda event, local: on_event(event=event))
        opened = ContainedHook(self.manager, "on_session_open", self._hook_failed)
        if opened:
            self.core.on_open = opened
        closed = ContainedHook(self.manager, "on_session_close", self._hook_failed)
        if closed:
            self.core.on_close = closed
        if self.config.server.tls is not None:
            self.tls_context = self.tls_context_of(self.config)

    def tls_context_of(self, config: Config) -> ssl.SSLContext:
        """The TLS listener's context, loaded now so that a bad file stops start-up (and --check-config)."""
        try:
            return server_tls_context(config)
        except ListenError as exc:
            raise ServerError(str(exc)) from None

    def start(self) -> Tuple[str, int]:
        """Load plugins, bind and listen; returns the bound address of the plain listener."""
        self.load()
        settings = self.config.server
        try:
            self.replace_listener("TCP", listen(settings.host, settings.port, "server", self.config.source,
                                                settings.reuse_port))
            if settings.tls is not None:
                self.replace_listener("TLS", listen(settings.tls.host, settings.tls.port, "server.tls",
                                                    self.config.source, settings.reuse_port))
            self.http = start_http(self)
        except (ListenError, OpsStartError) as exc:
            self._close_listeners()
            raise ServerError(str(exc)) from None
        addresses = [host_port(a[0], a[1]) + (" (TLS)" if t == "TLS" else "")
                     for t, a in ((t, listener.address) for t, listener in self.listeners.items())]
        self.log.info(
            "ServerStarted", address=addresses[0], addresses=addresses,
            plugins=[r.name for r in self.plugins if r.status == "loaded"], actions=len(self.actions),
            **({"http": host_port(*self.http.address)} if self.http is not None else {}),
        )
        address = self.address
        assert address is not None
        return address

    def replace_listener(self, transport: str, sock: Any) -> None:
        """Watch ``sock`` (or nothing, for ``None``) as the ``transport`` listener; close the old one."""
        previous = self.listeners.pop(transport, None)
        if previous is not None:
            previous.close()
        if sock is not None:
            self.listeners[transport] = Listener(
                sock, transport, self.core, self.loop, lambda: self.tls_context, self.log
            )

    def _close_listeners(self) -> None:
        for transport in list(self.listeners):
            self.replace_listener(transport, None)

    # -- running --------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run the loop until :meth:`stop`; then close every session."""
        flush = self.core.outbox.flush
        try:
            while not self._stopping:
                self.loop.run_once(1.0)
                flush()
            self._drain()
        finally:
            self.close()

    def run_once(self, max_wait: float = 0.05) -> None:
        """One loop turn (for embedding the server in another loop or in tests)."""
        self.loop.run_once(max_wait)
        self.core.outbox.flush()

    def stop(self) -> None:
        """Ask the loop to stop; safe from any thread and from signal handlers."""
        self._stopping = True
        try:
            self.loop.call_soon_threadsafe(lambda: None)
        except OSError:
            pass

    def _drain(self) -> None:
        """Q-7.8: publish Shutdown, stop accepting, answer E-6.16, let output drain for at most 2 s.

        Actions already running get the same 2 s to answer; what arrives
        meanwhile is answered ``Asterisk is shutting down``.
        """
        self.core.shutting_down = True
        self._close_listeners()
        for listener in self._stop_listeners:
            try:
                listener()
            except Exception as exc:  # noqa: BLE001 - reported; the shutdown goes on
                self._hook_failed("on_stop", getattr(listener, "__qualname__", repr(listener)), exc)
        self.log.info("ServerStopping", sessions=len(self.core.sessions))
        self.publish(Event("Shutdown", "system", (("Shutdown", "Cleanly"), ("Restart", "False"))))
        flush = self.core.outbox.flush
        flush()
        deadline = time.monotonic() + SHUTDOWN_FLUSH_SECONDS
        while self.loop.has_callbacks() or self.core.busy():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.loop.run_once(min(0.05, remaining))
            flush()

    def close(self) -> None:
        """Close the listeners, every session, the workers, the loop and an owned log sink."""
        self._close_listeners()
        if self.http is not None:
            self.http.close()
        self.core.close_all("shutdown")
        self.workers.close()
        self.auth_workers.close()
        self.log.info("ServerStopped")
        self.loop.close()
        if self._own_sink:
            self.log_sink.close()

    # -- what plugins reach through ServerHandle --------------------------------
    def publish(self, event: Event) -> None:
        """Render once, deliver to every session that may receive it (Q-7.2 to Q-7.5); any thread."""
        self.bus.publish(event)

    def status(self) -> ServerStatus:
        """Counters and times (CoreStatus, ServerStatus); a consistent read on the loop thread."""
        core = self.core
        return ServerStatus(
            started_at=self.started_wall,
            reloaded_at=self.reloaded_wall,
            sessions=sum(1 for s in core.sessions.values() if s.opened),
            authenticated=len(core.authenticated),
            unauthenticated=core.unauthenticated,
            events_published=self.bus.published,
            events_dropped=core.stats["events_dropped"],
            slow_consumer_disconnects=core.stats["slow_consumer_disconnects"],
            sessions_accepted=core.stats["sessions_accepted"],
            plugins=tuple(r.name for r in self.plugins if r.status == "loaded"),
            shutting_down=core.shutting_down,
        )

    def connect(self, host: str, port: int, protocol: StreamProtocol, **options: Any) -> Outbound:
        if not self.loop.in_loop_thread():
            raise RuntimeError("connect() may only be called on the event loop")
        return Outbound(self.loop, host, port, protocol, **options)

    def route_unknown(self, action: Action, plugin: str,
                      read_only: Optional[Callable[[str], bool]] = None) -> None:
        if self.dispatcher.router is not None:
            raise RuntimeError(
                f"plugin {plugin!r} cannot route unknown actions: plugin "
                f"{self.dispatcher.router.plugin!r} already does"
            )
        self.dispatcher.router = RegisteredAction(action, plugin, self.config.plugins.tables.get(plugin, {}))
        self.dispatcher.router_read_only = read_only

    def add_stop_listener(self, listener: Callable[[], None]) -> None:
        self._stop_listeners.append(listener)

    def add_reload_listener(self, listener: Callable[[Config, SessionControl], None]) -> None:
        self._reload_listeners.append(listener)

    def run_reload_listeners(self, config: Config) -> None:
        control = SessionControl(ServerControl(self.control))
        for listener in self._reload_listeners:
            try:
                listener(config, control)
            except Exception as exc:  # noqa: BLE001 - reported; the reload stands
                self._hook_failed("on_reload", getattr(listener, "__qualname__", repr(listener)), exc)

    # -- administration -------------------------------------------------------
    def revoke(self, session_id: str, reason: str) -> bool:
        """Close the session called ``session_id`` at once (audited ``SessionRevoked``)."""
        return self.core.revoke(session_id, reason)

    def request_reload(self) -> None:
        """Reload on the loop soon; safe from any thread and from signal handlers (SIGHUP)."""
        try:
            self.loop.call_soon_threadsafe(self.reload)
        except OSError:
            self.log.warning("ReloadFailed", error="the server is stopping")

    def reload(self, new: Optional[Config] = None) -> Tuple[bool, str]:
        """Apply a new configuration to the running server (D-8.9); see :mod:`.reload`."""
        return _reload(self, new)

    def _loop_error(self, exc: BaseException) -> None:
        self.log.error("LoopCallbackFailed", error=repr(exc), exc_info=exc)

    def _hook_failed(self, hook: str, plugin: str, exc: BaseException) -> None:
        self.log.error(
            "HookFailed", hook=hook, plugin=plugin, error=repr(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
