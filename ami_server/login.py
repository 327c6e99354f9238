"""The login policy (spec §3): the authentication chain, its outcome, and the rules around it.

The ``authenticate`` hook is a chain of backends in ``[auth] backends``
order; the first answer wins (A-3.15). It runs in the auth worker threads,
or on the loop when every backend promises never to block. Every field of
the winning :class:`~ami_server.AuthDecision` is applied here: the classes,
the rejection reason (which security event), ``allow_multiple_login``
(A-3.13) and ``require_tls_for_plaintext``.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

import pluggy

from .acl import normalize_ip
from .hooks import plugin_callers
from .privileges import CLASSES, parse_event_mask
from .protocol import Message, ascii_lower
from .records import AuthDecision, AuthRequest, Block, Deferred, LoginCheck, Response
from .session import AUTHENTICATED, CLOSING, ActionRun, Session
from .workers import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from .core import SessionCore
    from .loop import Loop
    from .workers import WorkerPool

__all__ = ["LoginPolicy", "AuthChainError", "NONBLOCKING_ATTRIBUTE"]

#: A plugin object with this attribute set to True promises its ``authenticate`` never blocks.
NONBLOCKING_ATTRIBUTE = "ami_server_nonblocking"
_SYSTEM = CLASSES["system"]
_REJECT_EVENTS = {
    "acl_denied": "FailedACL",
    "unknown_user": "InvalidAccountID",
    "invalid_password": "InvalidPassword",
    "challenge_failed": "ChallengeResponseFailed",
}
#: (backend name, plugin object, caller of its ``authenticate`` alone)
Chain = List[Tuple[str, Any, Any]]
#: check(login, answer): call ``answer(None)`` to allow, ``answer("in_use")`` or ``answer(reason)`` to refuse.
LoginCheckFn = Callable[[LoginCheck, Callable[..., None]], None]


class AuthChainError(Exception):
    """``[auth] backends`` names a plugin that does not implement ``authenticate``."""


def build_chain(manager: pluggy.PluginManager, backends: Sequence[str], source: str) -> Chain:
    """The backends named in ``[auth] backends``, in that order: installing a
    package never silently adds an authenticator."""
    callers = dict(plugin_callers(manager, "authenticate", backends))
    missing = [name for name in backends if name not in callers]
    if missing:
        raise AuthChainError(f"{source}: auth.backends: no loaded plugin named {missing[0]!r} implements authenticate")
    return [(name, manager.get_plugin(name), callers[name]) for name in backends]


class _Attempt:
    """One Login's trip through the backend chain; ``settled`` drops a late answer."""

    __slots__ = ("request", "deferred", "backend", "settled", "started", "trace")

    def __init__(self, request: AuthRequest, deferred: Deferred) -> None:
        self.request = request
        self.deferred = deferred
        #: The backend being asked right now (named in a timeout's audit record).
        self.backend: Optional[str] = None
        self.settled = False
        self.started = time.monotonic()
        #: A failing backend's traceback, credentials scrubbed (logged with AuthBackendError).
        self.trace: Optional[str] = None


class LoginPolicy:
    """Decides Logins and applies the outcome to the session."""

    def __init__(
        self,
        core: "SessionCore",
        loop: "Loop",
        workers: "WorkerPool",
        config: Callable[[], Any],
        started: Callable[[], Tuple[float, float]],
    ) -> None:
        self.core = core
        self.outbox = core.outbox
        self.audit = core.audit
        self.loop = loop
        self.workers = workers
        self._config = config
        #: (monotonic start, monotonic last reload) for FullyBooted.
        self._started = started
        self.chain: Chain = []
        #: Plugins' event-name predicates for a session, asked once per login (ServerHandle.add_event_guard).
        self.event_guards: List[Callable[[Any], Optional[Callable[[str], bool]]]] = []
        #: Plugins' last word on an accepted login, asked in order (ServerHandle.add_login_check).
        self.login_checks: List[LoginCheckFn] = []
        #: ``observe(backend, seconds)`` once per chain answer or timeout (metrics; None: off).
        self.observe: Optional[Callable[[Optional[str], float], None]] = None

    # -- A-3.13 -----------------------------------------------------------
    def in_use(self, username: str, decision: Optional[AuthDecision] = None) -> bool:
        """Would another session of ``username`` break a single-login rule?

        Before the backends answer, only a live session of the user that
        logged in under the rule counts; with the ``decision``, its own
        ``allow_multiple_login`` (or the server's setting) applies as well.
        """
        key = ascii_lower(username)
        core = self.core
        if key not in core.user_sessions:
            return False
        if key in core.single_users:
            return True
        return decision is not None and not self._multiple_allowed(decision)

    def _multiple_allowed(self, decision: AuthDecision) -> bool:
        if decision.allow_multiple_login is not None:
            return decision.allow_multiple_login
        return self._config().server.allow_multiple_login

    def _plaintext_refused(self, session: Session, decision: AuthDecision) -> bool:
        """``require_tls_for_plaintext``: a plaintext Secret only over TLS or from loopback."""
        required = decision.require_tls_for_plaintext
        if required is None:
            required = self._config().server.require_tls_for_plaintext
        if not required or session.transport == "TLS":
            return False
        try:
            return not normalize_ip(session.remote[0]).is_loopback
        except ValueError:
            return True

    # -- A-3.8 ------------------------------------------------------------
    def fail_later(
        self, session: Session, run: ActionRun, message: str, reason: str, deferred: Optional[Deferred] = None
    ) -> Deferred:
        """Enter CLOSING now, answer ``message`` after the delay, then close."""
        self.outbox.settle()
        session.state = CLOSING
        session.close_reason = reason
        session.changed()
        if deferred is None:
            deferred = Deferred()
        if run.timer is not None:
            run.timer.cancel()
        answer = deferred
        run.timer = self.loop.call_later(
            self._config().server.login_failure_delay,
            lambda: answer.complete(Response("Error", message, close=True)),
        )
        return deferred

    # -- the chain --------------------------------------------------------
    def login(self, session: Session, run: ActionRun, request: Message) -> Any:
        if session.state == AUTHENTICATED:
            return Response.success("Already authenticated")
        run.audit = False  # the outcome's record says what ActionExecuted would
        username = request.get("Username") or ""
        who = self.audit.who
        if not username:
            self.audit.login(session, "LoginFailed", account="", reason="no username")
            return self.fail_later(session, run, "Authentication failed", "login failed")
        md5 = ascii_lower(request.get("AuthType") or "") == "md5"
        auth = AuthRequest(
            username=username,
            auth_type="md5" if md5 else "plain",
            secret=None if md5 else request.get("Secret"),
            challenge=session.challenge if md5 else None,
            key=request.get("Key") if md5 else None,
            remote_address=session.remote_address,
            local_address=session.local_address,
            transport=session.transport,
            peer_ip=session.peer_ip,
        )
        deferred = Deferred()
        attempt = _Attempt(auth, deferred)
        chain = self.chain
        config = self._config()
        tables = config.plugins.tables
        if all(getattr(plugin, NONBLOCKING_ATTRIBUTE, False) is True for _, plugin, _ in chain):
            # Every backend promised never to block: decide on the loop, no thread hop.
            try:
                outcome: Outcome = (_ask_backends(chain, tables, attempt), None)
            except Exception as exc:  # noqa: BLE001 - fail closed like a worker would
                outcome = (None, exc)
            self._decided(session, run, request, attempt, outcome)
            return deferred

        def done(outcome: Outcome) -> None:
            self.loop.call_soon_threadsafe(lambda: self._decided(session, run, request, attempt, outcome))

        if not self.workers.submit(lambda: _ask_backends(chain, tables, attempt), done):
            self.audit.fault(
                "AuthBackendError", who(session, username), backend=None,
                error="too many logins waiting for a backend",
            )
            return self.fail_later(session, run, "Authentication failed", "login failed", deferred)
        timeout = config.auth.timeout
        run.timer = self.loop.call_later(timeout, lambda: self._timed_out(session, run, attempt, timeout))
        return deferred

    def _timed_out(self, session: Session, run: ActionRun, attempt: _Attempt, timeout: float) -> None:
        if attempt.settled or session.closed or session.current is not run:
            return
        attempt.settled = True
        if self.observe is not None:
            self.observe(attempt.backend, time.monotonic() - attempt.started)
        self.audit.fault(
            "AuthBackendError", self.audit.who(session, attempt.request.username), backend=attempt.backend,
            error=f"no answer within {timeout:g} s",
        )
        self._reject(session, run, attempt, None, AuthDecision.reject())

    def _decided(self, session: Session, run: ActionRun, request: Message, attempt: _Attempt, outcome: Outcome) -> None:
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
            attempt.trace = _trace(exc, attempt.request)
        backend, decision, error = value
        if self.observe is not None:
            self.observe(backend, time.monotonic() - attempt.started)
        if error is not None:
            fields = {"traceback": attempt.trace} if attempt.trace else {}
            self.audit.fault("AuthBackendError", self.audit.who(session, username), backend=backend, error=error,
                             **fields)
            decision = AuthDecision.reject()
        if decision is None:
            decision = AuthDecision.reject("unknown_user")
        if not decision.accepted:
            self._reject(session, run, attempt, backend, decision)
            return
        if attempt.request.auth_type == "plain" and self._plaintext_refused(session, decision):
            self.audit.login(
                session, "LoginFailed", account=username, auth_type="plain",
                reason="plaintext secret refused without TLS", backend=backend,
            )
            self.fail_later(session, run, "Authentication failed", "login failed", attempt.deferred)
            return
        if self.in_use(username, decision):
            # Another session of this user is logged in and the rule forbids a second.
            self._refuse_in_use(session, run, attempt)
            return
        if self.login_checks:
            check = LoginCheck(session.info(), username, not self._multiple_allowed(decision), backend)
            self._ask_check(session, run, request, attempt, decision, check, 0)
            return
        attempt.deferred.complete(self._accept(session, request, decision, backend, attempt.request.auth_type))

    def _refuse_in_use(self, session: Session, run: ActionRun, attempt: _Attempt) -> None:
        self.audit.security(session, "SessionLimit", account=attempt.request.username)
        self.fail_later(session, run, "Login Already In Use", "login in use", attempt.deferred)

    # -- login checks (ServerHandle.add_login_check) -----------------------------
    def _ask_check(
        self, session: Session, run: ActionRun, request: Message, attempt: _Attempt, decision: AuthDecision,
        check: LoginCheck, index: int,
    ) -> None:
        """Ask check ``index``; its answer (any thread, within ``[auth] timeout``) asks the next or decides."""
        if index == len(self.login_checks):
            # Time passed while the checks answered: the local rule again, then accept.
            if self.in_use(check.username, decision):
                self._refuse_in_use(session, run, attempt)
                return
            attempt.deferred.complete(
                self._accept(session, request, decision, check.backend, attempt.request.auth_type))
            return
        answered = [False]
        timeout = self._config().auth.timeout

        def on_loop(verdict: Optional[str]) -> None:
            if answered[0]:
                return
            answered[0] = True
            if run.timer is not None:
                run.timer.cancel()
                run.timer = None
            if session.closed or session.current is not run:
                return
            if verdict is None:
                self._ask_check(session, run, request, attempt, decision, check, index + 1)
            elif verdict == "in_use":
                self._refuse_in_use(session, run, attempt)
            else:
                self.audit.login(
                    session, "LoginFailed", account=check.username, auth_type=attempt.request.auth_type,
                    reason=str(verdict), backend=check.backend,
                )
                self.fail_later(session, run, "Authentication failed", "login failed", attempt.deferred)

        def answer(verdict: Optional[str] = None) -> None:
            if self.loop.in_loop_thread():
                on_loop(verdict)
            else:
                self.loop.call_soon_threadsafe(lambda: on_loop(verdict))

        run.timer = self.loop.call_later(timeout, lambda: on_loop(f"login check gave no answer within {timeout:g} s"))
        try:
            self.login_checks[index](check, answer)
        except Exception as exc:  # noqa: BLE001 - a failing check refuses the login (fail closed)
            on_loop(f"login check failed: {exc!r}")

    def _reject(
        self, session: Session, run: ActionRun, attempt: _Attempt, backend: Optional[str], decision: AuthDecision
    ) -> None:
        event = _REJECT_EVENTS.get(decision.reason or "")
        extra = (("Challenge", session.challenge or ""),) if event == "ChallengeResponseFailed" else ()
        fields = {"detail": decision.detail} if decision.detail else {}
        self.audit.login(
            session, "LoginFailed", event, attempt.request.username, extra, auth_type=attempt.request.auth_type,
            reason=decision.reason or "rejected", backend=backend, **fields,
        )
        self.fail_later(session, run, "Authentication failed", "login failed", attempt.deferred)

    def _accept(
        self, session: Session, request: Message, decision: AuthDecision, backend: Optional[str], auth_type: str
    ) -> Response:
        """A-3.7: authenticate, publish SuccessfulAuth, answer, FullyBooted, pending events."""
        self.outbox.settle()  # events published before this login are not for this session
        username = request.get("Username") or ""
        session.state = AUTHENTICATED
        session.username = username
        session.user_key = ascii_lower(username)
        session.read = decision.read
        session.write = decision.write
        session.backend = backend
        session.attributes = decision.attributes
        session.single_login = not self._multiple_allowed(decision)
        mask = parse_event_mask(request.get("Events"))
        if mask is not None:
            session.mask = mask
        session.login_time = time.time()
        self.core.logged_in(session)
        session.changed()
        if self.event_guards:
            self._install_event_guards(session)
        self.audit.login(
            session, "LoginSucceeded", "SuccessfulAuth", extra=(("UsingPassword", "0"),), auth_type=auth_type,
            backend=backend,
        )
        blocks: Tuple[Block, ...] = ()
        if session.read & session.mask & _SYSTEM:
            now = time.monotonic()
            started, reloaded = self._started()
            blocks = (
                Block(
                    "FullyBooted",
                    (
                        ("Privilege", "system,all"),
                        ("Uptime", str(int(now - started))),
                        ("LastReload", str(int(now - reloaded))),
                        ("Status", "Fully Booted"),
                    ),
                    with_action_id=False,
                ),
            )
        return Response("Success", "Authentication accepted", blocks=blocks)


    def _install_event_guards(self, session: Session) -> None:
        from .filters import EventFilters

        info = session.info()
        for factory in self.event_guards:
            try:
                accepts = factory(info)
            except Exception as exc:  # noqa: BLE001 - a failing guard lets no event through (fail closed)
                self.audit.record("EventGuardFailed", self.audit.who(session), error=repr(exc))
                accepts = _refuse_all
            if accepts is not None:
                if session.filters is None:
                    session.filters = EventFilters()
                session.filters.names.append(accepts)


def _refuse_all(name: str) -> bool:
    return False


def _ask_backends(chain: Chain, tables: Any, attempt: _Attempt) -> Tuple[Optional[str], Optional[AuthDecision], Optional[str]]:
    """Ask each backend in order (A-3.15), in an auth worker or on the loop.

    Returns ``(backend, decision, error)``; any failure is an ``error`` and
    the login is then rejected (fail closed).
    """
    for name, _, caller in chain:
        attempt.backend = name
        try:
            result = caller(request=attempt.request, config=tables.get(name, {}))
        except Exception as exc:  # noqa: BLE001 - fail closed, audited by the caller
            attempt.trace = _trace(exc, attempt.request)
            return name, None, _without_credentials(repr(exc), attempt.request)
        if result is None:
            continue
        if not isinstance(result, AuthDecision):
            return name, None, f"returned {type(result).__name__}, not an AuthDecision"
        return name, result, None
    return None, None, None


def _trace(exc: BaseException, request: AuthRequest) -> str:
    """The traceback of a failing backend, without the credentials it may quote."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _without_credentials(text, request)


def _without_credentials(text: str, request: AuthRequest) -> str:
    """A backend's error text may quote what it was given: never let it reach the log."""
    from .audit import REDACTED

    for value in (request.secret, request.key):
        if value:
            text = text.replace(value, REDACTED)
    return text
