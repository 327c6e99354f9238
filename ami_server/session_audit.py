"""The audit records about sessions: who a session is, actions answered, logins, security events (A-3.14 to A-3.16).

A connect/Login/Logoff/close cycle leaves three records (A-3.16):
``SessionOpened``, the login's outcome, ``SessionClosed`` (reason
``logoff``). The outcome is one record: where the outcome has a security
event (``SuccessfulAuth``, ``InvalidPassword``, ...) the record is named
after it and carries its headers, and every outcome record carries
``login`` (``LoginSucceeded`` or ``LoginFailed``) with the login's fields
(``auth_type``, ``backend``, a failure's ``reason``). Login and Logoff
write no ``ActionExecuted``: those records say the same.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Tuple

from .audit import TRUSTED_FIELDS_KEY, AuditFields
from .records import Response
from .security import security_event
from .session import ActionRun, Session

__all__ = ["SessionAudit"]

#: Audit fields whose values the server makes itself (never client input): not scrubbed.
TRUSTED_AUDIT_FIELDS = frozenset({
    "event", "audit", "level", "timestamp", "session", "remote_address", "local_address", "remote_ip", "tls",
    "result", "duration_ms", "duration", "limit", "buffered", "timeout", "auth_type", "backend", "login",
})
#: The fields about a session that the server made (the username is what a client typed).
_TRUSTED_WHO_FIELDS = frozenset({"session", "remote_address", "local_address", "remote_ip", "tls"})
#: ``ActionExecuted`` of a registered action: ``action`` is its registered name. An action the
#: router answers (``route_unknown``) is named as the client typed it, and scrubbed like any input.
_EXECUTED_TRUSTED = TRUSTED_AUDIT_FIELDS | {"action"}
#: Actions whose outcome another record carries: Logoff's is ``SessionClosed`` (reason ``logoff``).
_RECORDED_ELSEWHERE = frozenset({"Logoff"})


class SessionAudit:
    """Writes the server's audit records; security events go out on the bus too."""

    __slots__ = ("log", "publish", "tap")

    def __init__(self, audit_log: Any, publish: Any) -> None:
        self.log = audit_log
        #: The bus's publish(event, audit_fields).
        self.publish = publish
        #: ``tap(record, fields)`` sees every record (metrics count logins by reason); None: off.
        self.tap: Optional[Callable[[str, Dict[str, Any]], None]] = None

    def record(self, record: str, about: Optional[AuditFields] = None, /, **fields: Any) -> None:
        """Write the audit record ``record``: ``about`` (see :meth:`who`), then ``fields``."""
        fields[TRUSTED_FIELDS_KEY] = TRUSTED_AUDIT_FIELDS
        if self.tap is not None:
            self.tap(record, fields)
        self.log.record(record, fields, about)

    def fault(self, record: str, about: Optional[AuditFields] = None, /, **fields: Any) -> None:
        """Like :meth:`record`, at level ``warning``: something is broken (a backend failing every login)."""
        fields[TRUSTED_FIELDS_KEY] = TRUSTED_AUDIT_FIELDS
        if self.tap is not None:
            self.tap(record, fields)
        self.log.record(record, fields, about, level="warning")

    @staticmethod
    def who(session: Session, username: Optional[str] = None) -> AuditFields:
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

    def executed(self, session: Session, run: ActionRun, response: Response) -> None:
        """ActionExecuted: one per answered (audited) action, except those another record covers."""
        name = run.name
        if name in _RECORDED_ELSEWHERE:
            return
        entry = run.entry
        registered = entry is None or entry.action.name is name
        self.log.record("ActionExecuted", {
            "action": name, "action_id": run.action_id, "result": response.status, "message": response.message,
            "duration_ms": round((time.monotonic() - run.started) * 1000, 3),
            TRUSTED_FIELDS_KEY: _EXECUTED_TRUSTED if registered else TRUSTED_AUDIT_FIELDS,
        }, self.who(session))

    def login(
        self, session: Session, outcome: str, security: Optional[str] = None, account: Optional[str] = None,
        extra: Tuple[Tuple[str, str], ...] = (), **fields: Any,
    ) -> None:
        """The one record of a Login's outcome (A-3.16): ``outcome`` is ``LoginSucceeded`` or ``LoginFailed``.

        With a ``security`` event (A-3.14) the event is published and the
        record is named after it, its headers first; without one the record
        is named ``outcome``. Either way it carries ``login: outcome`` and
        ``fields``, so one filter on ``login`` finds every outcome.
        """
        fields = {"login": outcome, **fields}
        if security is None:
            self.record(outcome, self.who(session, account), **fields)  # the tap sees it there
            return
        if self.tap is not None:
            self.tap(outcome, fields)
        self.security(session, security, account, extra, fields)

    def security(
        self, session: Session, name: str, account: Optional[str] = None, extra: Tuple[Tuple[str, str], ...] = (),
        fields: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Publish the security event ``name`` about ``session`` (A-3.14); it is audited too, with ``fields``."""
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
        self.publish(event, self.who(session, account_id), fields)
