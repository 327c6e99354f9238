"""The narrow objects through which plugins act on the server.

:class:`ServerHandle` is what a plugin keeps from ``register_actions``;
:class:`ActionContext` is what a handler receives for one request;
:class:`SessionControl` (``ctx.control``) is the session-management
capability, given only to actions declared with ``control=True`` and to
reload listeners. None of them exposes the server's internal objects: each
forwards to a private backend that the core provides.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Tuple, Union

from .records import (
    Action, CommandOutput, Deferred, Event, LoginCheck, Response, ServerStatus, SessionInfo, TimerHandle,
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .connection import Outbound, StreamProtocol
    from .events import EventBus
    from .filters import FilterPattern
    from .protocol import Message

__all__ = ["ActionContext", "ServerHandle", "SessionControl"]


class SessionControl:
    """Session management: log in, set the mask, add filters, list, kick, reload.

    Bound to the calling session inside a ``control`` action; a reload
    listener receives one bound to no session, whose per-session methods
    raise ``RuntimeError``. Every method must be called on the event loop.
    """

    __slots__ = ("_backend", "_request")

    def __init__(self, backend: Any, request: Optional["Message"] = None) -> None:
        self._backend = backend
        self._request = request

    # -- the calling session -----------------------------------------------
    def login(self) -> Union[Response, Deferred]:
        """Authenticate the calling session with its request's credentials (spec §3)."""
        if self._request is None:
            raise RuntimeError("login() needs a session and its Login request")
        return self._backend.login(self._request)

    def challenge(self) -> str:
        """The calling session's MD5 challenge, created on first use (A-3.6)."""
        return self._backend.challenge()

    def set_event_mask(self, mask: int) -> None:
        """Set the calling session's event mask for events published from now on (B-5.6)."""
        self._backend.set_event_mask(mask)

    def add_event_filter(self, pattern: Union["FilterPattern", str], include: bool) -> None:
        """Add an event filter (B-5.13): include or exclude events whose text matches ``pattern``.

        A ``str`` is compiled with :func:`ami_server.compile_filter` (RE2, linear
        time); a refused pattern, or one filter too many, raises :class:`ActionError`.
        """
        self._backend.add_event_filter(pattern, include)

    def permitted_actions(self) -> List[Action]:
        """The actions the calling session may run (C-4.3), sorted as ListCommands shows them."""
        return self._backend.permitted_actions()

    def wait_for_event(self, timeout: Optional[float], reply: Response) -> Deferred:
        """Answer ``reply`` once an event for this session is queued, new input arrives,
        or ``timeout`` seconds pass (``None``: no limit). The events queued meanwhile are
        written as ``reply`` places them (B-5.11, B-5.12)."""
        return self._backend.wait_for_event(timeout, reply)

    # -- every session -----------------------------------------------------
    def sessions(self) -> List[SessionInfo]:
        """Snapshots of every live session."""
        return self._backend.sessions()

    def kick(self, session_id: str, reason: str) -> bool:
        """Close a session at once (audited ``SessionRevoked``); False if there is none."""
        return self._backend.kick(session_id, reason)

    def set_classes(self, session_id: str, read: int, write: int) -> bool:
        """Give a logged-in session new read and write classes (a reload's user change)."""
        return self._backend.set_classes(session_id, read, write)

    def reload(self) -> Tuple[bool, str]:
        """Reload the configuration file; ``(ok, message)``."""
        return self._backend.reload()

    @property
    def directory(self) -> Any:
        """The session directory a plugin installed (sessions of other servers), or ``None``.

        See :meth:`ServerHandle.set_session_directory`.
        """
        return self._backend.directory()


class ServerHandle:
    """What a plugin may do with the server outside of an action.

    Passed to ``register_actions``. :meth:`publish`, :meth:`call_soon_threadsafe`
    and :meth:`call_later` may be called from any thread; the others on the loop.
    """

    __slots__ = ("_host", "_plugin")

    def __init__(self, host: Any, plugin: str = "") -> None:
        self._host = host
        self._plugin = plugin

    def _for(self, plugin: str) -> "ServerHandle":
        """The handle given to ``plugin`` (it names the plugin in what it registers)."""
        return ServerHandle(self._host, plugin)

    @property
    def settings(self) -> Any:
        """The ``[server]`` settings in force (a reload may replace them)."""
        return self._host.config.server

    @property
    def config(self) -> "Config":
        """The whole configuration in force: a frozen record (a reload replaces it)."""
        return self._host.config

    def status(self) -> ServerStatus:
        """Counters and start/reload times of the server."""
        return self._host.status()

    def publish(self, event: Event) -> None:
        """Publish an event to every session allowed to receive it (non-blocking, any thread)."""
        self._host.publish(event)

    @property
    def worker(self) -> Optional[int]:
        """This process's index under ``ami-server --workers N``, or ``None`` for a single process.

        A plugin that names its process to others (a cluster node) makes the
        name unique per worker with it.
        """
        return getattr(self._host, "worker", None)

    @property
    def plugin_config(self) -> Mapping[str, Any]:
        """This plugin's ``[plugins.<name>]`` table in force (empty if absent; a reload replaces it)."""
        return self._host.config.plugins.tables.get(self._plugin, {})

    @property
    def bus(self) -> "EventBus":
        """The event bus: ``subscribe`` to every event delivered here, ``inject`` events from elsewhere."""
        return self._host.bus

    @property
    def log(self) -> Any:
        """A structlog logger bound to this plugin: the server's log, with its redaction (any thread)."""
        return self._host.log.bind(plugin=self._plugin)

    def add_login_check(self, check: Callable[[LoginCheck, Callable[..., None]], None]) -> None:
        """Have the last word on every accepted Login, before it takes effect.

        ``check(login, answer)`` is called on the loop after the backends
        accepted and the local ``allow_multiple_login`` rule passed. It
        must call ``answer()`` exactly once, from any thread, within
        ``[auth] timeout`` seconds: ``answer(None)`` lets the login
        proceed (the next check is asked), ``answer("in_use")`` refuses it
        as a second login of a single-login user (``SessionLimit``,
        ``Login Already In Use``), any other text refuses it with
        ``Authentication failed`` and that text as the ``LoginFailed``
        reason. No answer in time, or an exception, refuses the login.
        """
        self._host.login.login_checks.append(check)

    def set_session_directory(self, directory: Any) -> SessionControl:
        """Make ``SessionList`` and ``SessionKick`` reach sessions of other servers.

        ``directory.list(local, done)`` is given this server's
        ``SessionInfo`` list and calls ``done(entries)`` (any thread) with
        ``(node, SessionInfo)`` pairs for every server, this one included;
        ``directory.kick(session_id, reason, done)`` calls ``done(True)``
        once a session elsewhere was closed, ``done(False)`` if none is
        known. One plugin may install one; a second call raises
        ``RuntimeError``. Returns a :class:`SessionControl` bound to no
        session (``sessions``, ``kick``) for answering the other servers.
        """
        from .control import ServerControl

        control = self._host.control
        if control.directory is not None:
            raise RuntimeError(f"plugin {self._plugin!r} cannot install a session directory: one is installed")
        control.directory = directory
        return SessionControl(ServerControl(control))

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop soon; safe from any thread."""
        self._host.loop.call_soon_threadsafe(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the loop after ``delay`` seconds; safe from any thread."""
        return self._host.loop.call_later(delay, callback)

    def add_secret(self, secret: str) -> None:
        """Never let ``secret`` (an upstream password, a token) reach any log line."""
        self._host.redactor.add_secrets([secret])

    def on_stop(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the loop when the server begins to stop (before sessions close),
        to close outbound connections and flush what the plugin holds."""
        self._host.add_stop_listener(listener)

    def on_reload(self, listener: Callable[["Config", SessionControl], None]) -> None:
        """Call ``listener(config, control)`` on the loop after each successful reload.

        ``config`` is the new configuration; ``control`` can list, kick and
        re-class sessions (for example those a changed user table no longer
        admits). An exception is logged with the plugin's name and does not
        undo the reload.
        """
        self._host.add_reload_listener(listener)

    def add_health_check(self, name: str, check: Callable[[], Any], required: bool = True) -> None:
        """Report ``check()`` in ``/healthz`` (see docs/operations.md, "Metrics and health").

        ``check`` runs on the loop at each request and must not block: return
        :class:`ami_server.Health` (``ok``, short ``detail``) or a bool from
        state the plugin keeps (an upstream connection's state, a Redis
        link's). A failing ``required`` check answers 503.
        """
        self._host.ops.add_check(name, check, required)

    def add_metrics(self, source: Callable[[], Any]) -> None:
        """Add ``source()``'s :class:`ami_server.Metric` records to each ``/metrics`` scrape (on the loop)."""
        self._host.ops.add_source(self._plugin, source)

    def reopen_logs(self) -> bool:
        """Reopen the ``[logging] file`` (log rotation); False when the server logs to stderr."""
        from .ops import reopen_logs

        return reopen_logs(self._host)

    def add_action_guard(self, guard: Callable[[SessionInfo, str, Optional["Message"]], Optional[str]]) -> None:
        """Ask ``guard(session, action, request)`` before every action of a logged-in session.

        Return ``None`` to allow it, or a short name of the rule that refuses
        it: the client gets ``Permission denied`` (as for missing classes) and
        the ``ActionDenied`` audit record carries ``rule``. Raise
        :class:`ActionError` to answer with another error (a rate limit).
        ``ListCommands`` asks with ``request=None``: refuse by name only then.
        Guards run on the loop, after the class check, in the order added; an
        exception refuses the action.
        """
        self._host.dispatcher.guards.append(guard)

    def add_event_guard(self, guard: Callable[[SessionInfo], Any], on_text: bool = False) -> None:
        """At each login call ``guard(session)``; a predicate it returns must accept an event's
        name for the session to receive the event (on top of classes, mask and filters).

        With ``on_text`` the predicate is given the event as written (bytes,
        ``Event:`` line first, the blank line last) instead of its name.
        """
        if on_text:
            from .filters import OnText

            factory = guard

            def guard(session: SessionInfo) -> Any:
                accepts = factory(session)
                return None if accepts is None else OnText(accepts)

        self._host.login.event_guards.append(guard)

    def add_action_lister(self, lister: Callable[[SessionInfo], Any]) -> None:
        """Add ``lister(session)``'s :class:`Action` records to what ``ListCommands`` shows
        (actions another server answers); classes and guards still apply."""
        self._host.control.listers.append(lister)

    def route_unknown(self, action: Action, read_only: Optional[Callable[[str], bool]] = None) -> None:
        """Let ``action`` answer every action no plugin registered, for logged-in sessions.

        ``ctx.request.action`` is the name the client sent; classes of
        ``action.privileges`` and the guards apply as for any action. One
        plugin may claim this; a second call raises ``RuntimeError``.
        ``read_only(name)``, if given, says which of the names it answers
        change nothing: those are audited as ``read_only`` actions are
        (``ActionExecuted`` only with ``audit_read_only_actions``).
        """
        self._host.route_unknown(action, self._plugin, read_only)

    def connect(
        self,
        host: str,
        port: int,
        protocol: "StreamProtocol",
        *,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        timeout: float = 10.0,
    ) -> "Outbound":
        """Open a client connection owned by the event loop (loop thread only).

        The connect, the TLS handshake and every read and write run on the
        loop without blocking; ``protocol`` is told ``connection_made``,
        ``data_received`` and ``connection_lost`` (see
        :class:`ami_server.connection.StreamProtocol`). A connect that takes
        longer than ``timeout`` seconds ends in ``connection_lost``. Reconnect
        with :class:`ami_server.Backoff` timers.
        """
        return self._host.connect(host, port, protocol, tls=tls, server_hostname=server_hostname, timeout=timeout)


class ActionContext:
    """What a handler receives: the request, a session snapshot and a few capabilities.

    Ordinary plugin actions need only ``request``, ``session``, ``publish``,
    ``log`` and ``config``. Actions declared ``control=True`` also get
    :attr:`control`. In a ``blocking`` handler (a worker thread) ``publish``,
    ``call_later`` and ``log`` work; ``control`` and ``run_cli`` raise
    ``RuntimeError``.
    """

    __slots__ = ("request", "session", "config", "_log", "_backend")

    def __init__(
        self, request: "Message", session: SessionInfo, backend: Any, config: Mapping[str, Any], log: Any = None
    ) -> None:
        self.request = request
        self.session = session
        self.config = config
        self._log = log
        self._backend = backend

    @property
    def log(self) -> Any:
        """A structlog logger bound to this plugin, action and session (made on first use)."""
        if self._log is None:
            self._log = self._backend.make_log()
        return self._log

    @property
    def control(self) -> SessionControl:
        """Session control (log in, masks, filters, sessions, kick, reload): ``control`` actions only."""
        if not self._backend.has_control():
            raise RuntimeError(f"action {self._backend.name!r} was not declared with control=True")
        return SessionControl(self._backend, self.request)

    def publish(self, event: Event) -> None:
        """Publish an event; the calling session receives it after this reply (R-2.10)."""
        self._backend.publish(event)

    def timestamp(self) -> str:
        """The wall clock in :func:`wall_timestamp`'s format, shared by the requests of one read.

        The clock is read once for all requests that arrived in the same read
        from the socket (pipelined requests), so the value lies after this
        request arrived and before its reply is written, and handlers may
        share a reply built from it (Ping does). Anywhere else -- a timer, a
        deferred reply, a blocking handler -- it is read afresh.
        """
        return self._backend.timestamp()

    def defer(self) -> Deferred:
        """Create a reply to be completed later (returned from the handler)."""
        return Deferred()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the event loop after ``delay`` seconds (from any thread)."""
        return self._backend.call_later(delay, callback)

    def run_cli(self, text: str) -> Optional[CommandOutput]:
        """Run the CLI command ``text`` names (B-5.16); ``None`` if no plugin provides it.

        The command's handler sees this context with its own plugin's
        ``config``. An :class:`ActionError` it raises propagates.
        """
        return self._backend.run_cli(self, text)

    def _with_config(self, config: Mapping[str, Any]) -> "ActionContext":
        return ActionContext(self.request, self.session, self._backend, config, self._log)

    def server_status(self) -> ServerStatus:
        """The server's counters and times."""
        return self._backend.server_status()
