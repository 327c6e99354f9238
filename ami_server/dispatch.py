"""Request -> action run -> reply (R-2.1 to R-2.12, C-4.3).

The dispatcher finds the action, checks the session's classes, runs the
handler (on the loop, in a worker thread, or deferred), and writes the
reply with the events held while it ran. A handler only answers: the
ActionID echo, permission checks, error mapping, ordering and the audit
record are the dispatcher's.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from .context import ActionContext
from .protocol import Message, ReplyRenderer, ascii_lower, encode, render_reply, render_response
from .records import (
    Action,
    ActionError,
    CommandOutput,
    Deferred,
    Event,
    Response,
    SessionInfo,
    TimerHandle,
    wall_timestamp,
)
from .concurrent_replies import ConcurrentReplies
from .session import AUTHENTICATED, CLOSING, ActionRun, Pipeline, Session
from .workers import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from .control import ControlBackend
    from .core import SessionCore
    from .events import EventBus
    from .login import LoginPolicy
    from .loop import Loop
    from .plugins import ActionRegistry, RegisteredAction
    from .workers import WorkerPool

__all__ = ["Dispatcher", "PRE_LOGIN"]

#: Actions a session may run before it logged in (R-2.8 step 2).
PRE_LOGIN = frozenset({"login", "logoff", "challenge"})
#: A list reply with more items than this is rendered and queued this many items per loop turn,
#: so that other sessions are served meanwhile and the output stays near its limit.
LIST_SLICE = 256
#: guard(session, action name, request or None) -> None to allow, or the name of the rule that refuses.
Guard = Callable[[SessionInfo, str, Optional[Message]], Optional[str]]


class _Run(ActionRun):
    """One action run, and the capabilities behind its :class:`ActionContext`.

    A single object for both: one allocation fewer per request.
    """

    __slots__ = ("dispatcher", "session")

    # Built with ActionRun's __init__; the dispatcher sets ``dispatcher`` and ``session``.
    dispatcher: "Dispatcher"
    session: Session

    def _on_loop(self, what: str) -> None:
        if not self.dispatcher.loop.in_loop_thread():
            raise RuntimeError(f"{what}() may only be called on the event loop, not in a blocking handler")

    def publish(self, event: Event) -> None:
        self.dispatcher.bus.publish(event)

    def timestamp(self) -> str:
        dispatcher = self.dispatcher
        shared = dispatcher.read_stamp
        if shared:
            return shared
        stamp = wall_timestamp()
        # Kept only inside a read, and only by the loop: a blocking handler's
        # thread could otherwise store it after the read ended.
        if shared is not None and dispatcher.loop.in_loop_thread():
            dispatcher.read_stamp = stamp
        return stamp

    def make_log(self) -> Any:
        plugin = self.entry.plugin if self.entry is not None else "core"
        return self.dispatcher.log.bind(plugin=plugin, action=self.name, session=self.session.session_id)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.dispatcher.loop.call_later(delay, callback)

    def has_control(self) -> bool:
        self._on_loop("control")
        return self.entry is not None and self.entry.action.control

    def run_cli(self, context: ActionContext, text: str) -> Optional[CommandOutput]:
        self._on_loop("run_cli")
        found = self.dispatcher.registry.find_cli(text)
        if found is None:
            return None
        entry, args = found
        result = entry.command.handler(context._with_config(entry.config), args)
        if isinstance(result, CommandOutput):
            return result
        if isinstance(result, str):
            return CommandOutput((result,))
        return CommandOutput(tuple(result))

    def server_status(self) -> Any:
        return self.dispatcher.status()

    # SessionControl's methods: the control backend, bound to this session and run.
    def _control(self, what: str) -> "ControlBackend":
        self._on_loop(what)
        return self.dispatcher.control

    def login(self, request: Message) -> Any:
        return self._control("login").login(self.session, self, request)

    def challenge(self) -> str:
        return self._control("challenge").challenge(self.session)

    def set_event_mask(self, mask: int) -> None:
        self._control("set_event_mask").set_event_mask(self.session, mask)

    def add_event_filter(self, pattern: Any, include: bool) -> None:
        self._control("add_event_filter").add_event_filter(self.session, pattern, include)

    def permitted_actions(self) -> Any:
        return self._control("permitted_actions").permitted_actions(self.session)

    def wait_for_event(self, timeout: Optional[float], reply: Response) -> Deferred:
        return self._control("wait_for_event").wait_for_event(self.session, self, timeout, reply)

    def sessions(self) -> Any:
        return self._control("sessions").sessions()

    def kick(self, session_id: str, reason: str) -> bool:
        return self._control("kick").kick(session_id, reason)

    def set_classes(self, session_id: str, read: int, write: int) -> bool:
        return self._control("set_classes").set_classes(session_id, read, write)

    def reload(self) -> Any:
        return self._control("reload").reload()

    def directory(self) -> Any:
        return self._control("directory").directory


class Dispatcher:
    """Runs one request of a session at a time and writes its reply."""

    def __init__(
        self,
        core: "SessionCore",
        loop: "Loop",
        bus: "EventBus",
        login: "LoginPolicy",
        workers: "WorkerPool",
        settings: Callable[[], Any],
        audit_read_only: Callable[[], bool],
        log: Any,
        status: Callable[[], Any],
    ) -> None:
        self.core = core
        self.outbox = core.outbox
        self.audit = core.audit
        self.loop = loop
        self.bus = bus
        self.login = login
        self.workers = workers
        self._settings = settings
        self._audit_read_only = audit_read_only
        self.log = log
        self.status = status
        self.registry: "ActionRegistry"
        self.control: "ControlBackend"
        #: Plugin guards asked before every action of a logged-in session (ServerHandle.add_action_guard).
        self.guards: List[Guard] = []
        #: The plugin action that answers actions no plugin registered (ServerHandle.route_unknown).
        self.router: Optional["RegisteredAction"] = None
        #: Which names the router answers change nothing (audited as read-only actions); None: none.
        self.router_read_only: Optional[Callable[[str], bool]] = None
        #: The wall clock shared by the requests answered from one read (ActionContext.timestamp):
        #: ``None`` outside such a read, ``""`` inside one until first asked.
        self.read_stamp: Optional[str] = None
        self._replies = ReplyRenderer()
        #: ``observe(name, result, started)`` per answered or denied action (metrics; None: off).
        self.observe: Optional[Callable[[str, str, float], None]] = None
        #: Replies of ``concurrent`` actions, kept in request order.
        self.concurrent = ConcurrentReplies(self)

    def dispatch(self, session: Session, message: Message) -> None:
        """R-2.8: the first step that answers ends it."""
        action_id = message.action_id
        write = self.outbox.write
        if message.error is not None:
            write(session, render_response("Error", action_id, message.error))
            return
        if self.core.shutting_down:
            write(session, render_response("Error", action_id, "Asterisk is shutting down"))
            return
        name = message.action
        if not name:
            if not message.empty:
                self.audit.security(session, "RequestBadFormat", extra=(("RequestType", "Action: NONE"),))
            write(session, render_response("Error", action_id, "Missing action in request"))
            return
        registry = self.registry
        if session.state != AUTHENTICATED:
            key = ascii_lower(name)
            if key not in PRE_LOGIN:
                self.deny(session, name, action_id)
                return
            if key in ("login", "challenge"):
                username = message.get("Username") or ""
                if username and self.login.in_use(username):
                    run = ActionRun(name, action_id, time.monotonic(), None, False)  # SessionLimit is its record
                    self.outbox.settle()
                    session.current = run
                    self.audit.security(session, "SessionLimit", account=username)
                    failed = self.login.fail_later(session, run, "Login Already In Use", "login in use")
                    self.handle_result(session, run, failed)
                    return
        entry = registry.by_spelling.get(name) or registry.by_name.get(ascii_lower(name))
        if entry is None and self.router is not None and session.state == AUTHENTICATED:
            entry = self.router
        if entry is None:
            write(session, self.unknown(session, name, action_id))
            return
        action = entry.action
        privileges = action.privileges
        if privileges and not privileges & session.write:
            self.deny(session, name, action_id)
            return
        run_name = action.name if entry is not self.router else name
        if self.guards and session.state == AUTHENTICATED and self._guarded(session, run_name, message):
            return
        audit = self.audits(entry, run_name)
        run = _Run(run_name, action_id, time.monotonic() if audit or self.observe else 0.0, entry, audit)
        run.dispatcher = self
        run.session = session
        self.outbox.settle_for(session)  # events published before this action are not held back
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
            self.handler_failed(session, run, exc)
            return
        if result.__class__ is Response:
            self.finish(session, run, result)
        else:
            self.handle_result(session, run, result)

    def audits(self, entry: "RegisteredAction", run_name: str) -> bool:
        """Whether a run of ``entry`` as ``run_name`` writes ``ActionExecuted``: read-only actions, and
        names the router says change nothing, only with ``audit_read_only_actions`` (A-3.16)."""
        if entry is self.router and self.router_read_only is not None and self.router_read_only(run_name):
            return self._audit_read_only()
        return not entry.action.read_only or self._audit_read_only()

    def dispatch_behind(self, session: Session, pipeline: Pipeline, message: Message) -> None:
        """Dispatch ``message`` while concurrent replies are outstanding (see :mod:`.concurrent_replies`)."""
        self.concurrent.dispatch(session, pipeline, message)

    def unknown(self, session: Session, name: str, action_id: str) -> bytes:
        """R-2.8 step 4: audit ``RequestBadFormat`` and render the error for an unregistered action."""
        self.audit.security(session, "RequestBadFormat", extra=(("RequestType", _cut(f"Action: {name}", 63)),))
        text = f"Invalid/unknown command: {name}. Use Action: ListCommands to show available commands."
        return render_response("Error", action_id, _cut(text, 511))

    def new_run(self, session: Session, name: str, action_id: str, started: float,
                entry: "RegisteredAction", audit: bool) -> ActionRun:
        """A run that is also its context's backend (see :class:`_Run`)."""
        run = _Run(name, action_id, started, entry, audit)
        run.dispatcher = self
        run.session = session
        return run

    def lookup(self, session: Session, name: str) -> Optional["RegisteredAction"]:
        """The registered action called ``name`` (case-insensitively), else the router for a logged-in session."""
        registry = self.registry
        entry = registry.by_spelling.get(name) or registry.by_name.get(ascii_lower(name))
        if entry is None and self.router is not None and session.state == AUTHENTICATED:
            entry = self.router
        return entry

    def handle_result(self, session: Session, run: ActionRun, result: Any) -> None:
        if isinstance(result, Response):
            self.finish(session, run, result)
        elif isinstance(result, Deferred):
            early = result._claim()
            if early is not None:
                # Completed before the handler returned (e.g. a Login decided on the
                # loop): answered now, with no timer and no extra loop turn.
                self.complete(session, run, early)
                return
            run.deferred = result
            if run.timer is None and run.wait_reply is None and not session.state == CLOSING:
                run.timer = self.loop.call_later(self._timeout(run), lambda: self._timed_out(session, run))
            if run.entry is not None and run.entry.action.concurrent and session.current is run:
                # The session goes on with its next requests while this reply is outstanding.
                session.current = Pipeline(run)
                result._bind(lambda response: self.concurrent.resolve(session, run, response))
                return
            result._bind(lambda response: self.resolve_threadsafe(session, run, response))
        else:
            self.handler_failed(
                session, run, TypeError(f"handler returned {type(result).__name__}, not a Response or Deferred")
            )

    def _run_blocking(self, session: Session, run: ActionRun, action: Action, context: ActionContext) -> None:
        """Run a blocking handler in the worker pool; its outcome comes back to the loop."""

        def done(outcome: Outcome) -> None:
            self.loop.call_soon_threadsafe(lambda: self._blocking_done(session, run, outcome))

        if not self.workers.submit(lambda: action.handler(context), done):
            self.log.warning(
                "WorkerQueueFull", action=run.name, session=session.session_id,
                limit=self._settings().worker_queue_limit,
            )
            self.finish(session, run, Response.error("Server busy, try again later"))
            return
        run.timer = self.loop.call_later(self._timeout(run), lambda: self._timed_out(session, run))

    def _timeout(self, run: ActionRun) -> float:
        """The action's own timeout, else ``[server] action_timeout``."""
        own = run.entry.action.timeout if run.entry is not None else None
        return own if own is not None else self._settings().action_timeout

    def _blocking_done(self, session: Session, run: ActionRun, outcome: Outcome) -> None:
        value, exc = outcome
        if session.closed or session.current is not run:
            self.log.info("LateReplyDiscarded", action=run.name, session=session.session_id)
            return
        if isinstance(exc, ActionError):
            value = exc.response
        elif exc is not None:
            self.handler_failed(session, run, exc)
            self.core.resume_soon(session)
            return
        if isinstance(value, Deferred):
            self.handle_result(session, run, value)
        else:
            self.complete(session, run, value)

    def resolve_threadsafe(self, session: Session, run: ActionRun, response: Any) -> None:
        if self.loop.in_loop_thread():
            self.loop.call_soon(lambda: self.complete(session, run, response))
        else:
            self.loop.call_soon_threadsafe(lambda: self.complete(session, run, response))

    def complete(self, session: Session, run: ActionRun, response: Any) -> None:
        """A deferred reply arrived on the loop: write it unless it is stale."""
        if session.closed:
            return
        if session.current is not run:
            self.concurrent.complete(session, run, response)  # one of several outstanding, or stale
            return
        if run.deferred is not None:
            run.deferred._cancel()
        if not isinstance(response, Response):
            self.handler_failed(
                session, run, TypeError(f"deferred completed with {type(response).__name__}, not a Response")
            )
        else:
            self.finish(session, run, response)
        if not session.closed:
            self.core.resume_soon(session)

    def _timed_out(self, session: Session, run: ActionRun) -> None:
        if session.closed:
            return
        if session.current is not run:
            self.concurrent.timed_out(session, run)
            return
        timeout = self._timeout(run)
        self.log.warning("ActionTimedOut", action=run.name, session=session.session_id, timeout=timeout)
        if run.deferred is not None:
            run.deferred._cancel()
        self.finish(session, run, Response.error("Action timed out"))
        self.core.resume_soon(session)

    def handler_failed(self, session: Session, run: ActionRun, exc: BaseException) -> None:
        self.log_failure(session, run, exc)
        self.finish(session, run, Response.error("Internal error"))

    def log_failure(self, session: Session, run: ActionRun, exc: BaseException) -> None:
        """R-2.12: a handler raised or answered something invalid; the client gets ``Internal error``."""
        plugin = run.entry.plugin if run.entry else "core"
        self.log.error(
            "ActionFailed", action=run.name, plugin=plugin, session=session.session_id,
            error=repr(exc), traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )

    def finish(self, session: Session, run: ActionRun, response: Response) -> None:
        """Write a complete reply, then the events queued meanwhile (R-2.9, R-2.10)."""
        outbox = self.outbox
        outbox.settle_for(session)  # events published while it ran are queued behind the reply
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
                self.handler_failed(session, run, exc)
                return
            session.current = None
            outbox.write(session, data)
            if run.audit:
                self.audit.executed(session, run, response)
            if self.observe is not None:
                self.observe(run.name, response.status, run.started)
            return
        if len(response.blocks) > LIST_SLICE:
            self._start_stream(session, run, response)
            return
        try:
            parts, completion = response.render_parts(action_id)
        except Exception as exc:  # noqa: BLE001 - an invalid reply is an internal error
            if response.status == "Error" and response.message == "Internal error":
                raise
            self.handler_failed(session, run, exc)
            return
        if completion and not response.events_before_completion:
            parts.append(completion)
            completion = b""
        session.current = None
        outbox.reply(session, parts, completion, response.close)
        if run.audit:
            self.audit.executed(session, run, response)
        if self.observe is not None:
            self.observe(run.name, response.status, run.started)
        if response.close:
            self.core.close_after_flush(session, session.close_reason or "logoff")

    # -- long list replies ---------------------------------------------------
    def _start_stream(self, session: Session, run: ActionRun, response: Response) -> None:
        """Write the response line now and the items a slice per turn; the run stays current,
        so events are held and later requests wait as for any reply (R-2.9, R-2.10)."""
        try:
            head = response.render_head(run.action_id)
        except Exception as exc:  # noqa: BLE001 - an invalid reply is an internal error
            self.handler_failed(session, run, exc)
            return
        run.stream = (response, 0)
        self.outbox.write(session, head)
        self.loop.call_soon(lambda: self.stream(session, run))

    def stream(self, session: Session, run: ActionRun) -> None:
        """Queue the next slice of a long list reply; finish it after the last one."""
        if session.closed or session.current is not run or run.stream is None:
            return
        if self.outbox.paused(session):
            session.output_paused = True  # SessionCore.output_sent calls back once it drained
            return
        response, start = run.stream
        blocks = response.blocks
        end = min(start + LIST_SLICE, len(blocks))
        action_id = run.action_id
        try:
            parts = [block.render(action_id) for block in blocks[start:end]]
            completion = b""
            if end == len(blocks) and response.completion is not None:
                completion = response.completion.render(action_id)
        except Exception as exc:  # noqa: BLE001 - half a list was sent: the session cannot go on
            self.log.error("ActionFailed", action=run.name, session=session.session_id, error=repr(exc),
                           traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            self.core.close(session, "I/O error")
            return
        if end < len(blocks):
            run.stream = (response, end)
            self.outbox.write(session, b"".join(parts))
            self.loop.call_soon(lambda: self.stream(session, run))
            return
        run.stream = None
        if completion and not response.events_before_completion:
            parts.append(completion)
            completion = b""
        self.outbox.settle_for(session)
        session.current = None
        self.outbox.reply(session, parts, completion, response.close)
        if run.audit:
            self.audit.executed(session, run, response)
        if response.close:
            self.core.close_after_flush(session, session.close_reason or "logoff")
        else:
            self.core.resume_soon(session)

    def deny(self, session: Session, name: str, action_id: str, rule: Optional[str] = None,
             response: Optional[Response] = None) -> None:
        """Refuse an action (C-4.3, or a plugin guard's ``rule``): audited, ``Permission denied``
        unless the guard answered otherwise."""
        self.audit.security(session, "RequestNotAllowed", extra=(("RequestType", _cut(f"Action: {name}", 63)),))
        fields = {"rule": rule} if rule is not None else {}
        if self.observe is not None:
            entry = self.registry.by_name.get(ascii_lower(name))
            self.observe(entry.action.name if entry is not None else "other", "denied", 0.0)
        self.audit.record("ActionDenied", self.audit.who(session), action=name, action_id=action_id, **fields)
        if response is None:
            data = render_response("Error", action_id, "Permission denied")
        else:
            data = render_reply(response.status, action_id, response.message, response.headers)
        current = session.current
        if current is not None and current.__class__ is Pipeline:
            self.concurrent.write(session, current, data)  # after the replies still outstanding
        else:
            self.outbox.write(session, data)

    def denial(self, info: SessionInfo, name: str, request: Optional[Message]) -> Optional[Tuple[str, Optional[Response]]]:
        """The first guard's refusal of ``name`` for this session: ``(rule, response)``, or None."""
        for guard in self.guards:
            try:
                rule = guard(info, name, request)
            except ActionError as exc:
                return str(exc), exc.response
            except Exception as exc:  # noqa: BLE001 - a failing guard refuses (fail closed)
                self.log.error("ActionGuardFailed", action=name, error=repr(exc),
                               traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                return "guard failed", None
            if rule:
                return str(rule), None
        return None

    def _guarded(self, session: Session, name: str, message: Message) -> bool:
        refused = self.denial(session.info(), name, message)
        if refused is None:
            return False
        self.deny(session, name, message.action_id, *refused)
        return True


def _cut(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` bytes of UTF-8 as Asterisk's fixed buffers do."""
    data = encode(text)
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "surrogateescape")
