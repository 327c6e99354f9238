"""The event bus: publish from anywhere, render once, deliver by class, mask and filter (Q-7.1 to Q-7.5).

:class:`EventBus` is the seam: the server and every plugin publish through
it and never see where an event goes. The in-process bus renders each
event to bytes once and queues the same bytes object for every recipient
(:class:`~ami_server.outbox.Outbox`). A bus that reaches other nodes (a
cluster) subscribes to what is published here and injects what arrives
from elsewhere; the session code is the same either way.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from .audit import TRUSTED_FIELDS_KEY, AuditFields
from .outbox import Outbox
from .privileges import format_privilege
from .protocol import clean, encode
from .records import Event, wall_timestamp

__all__ = ["EventBus", "Subscriber", "SECURITY_EVENT_NAMES"]

#: Called on the loop for every event delivered here: ``(event, local)``,
#: ``local`` False for an event injected from elsewhere.
Subscriber = Callable[[Event, bool], None]

SECURITY_EVENT_NAMES = frozenset(
    {
        "SuccessfulAuth", "InvalidAccountID", "InvalidPassword", "ChallengeResponseFailed",
        "SessionLimit", "RequestNotAllowed", "RequestBadFormat", "FailedACL",
    }
)
#: Security-event records: the server-made headers of A-3.14 (AccountID,
#: RequestType and the like quote the client and are scrubbed).
TRUSTED_SECURITY_FIELDS = frozenset({
    "event", "audit", "level", "timestamp", "session", "remote_address", "local_address", "remote_ip", "tls",
    "result", "duration_ms", "duration", "limit", "buffered", "timeout", "auth_type", "backend", "login",
    "EventTV", "Severity", "Service", "EventVersion", "SessionID", "LocalAddress", "RemoteAddress",
    "SessionTV", "UsingPassword", "Challenge",
})


class EventBus:
    """Publication of events to this node's sessions, and to whatever subscribes.

    ``publish`` and ``inject`` are safe from any thread: off the loop the
    event is handed over to the loop first. Subscribers run on the loop,
    after the event was queued for the sessions (Q-7.5); an exception in
    one is reported and does not affect delivery.
    """

    def __init__(
        self,
        outbox: Outbox,
        settings: Callable[[], Any],
        in_loop_thread: Callable[[], bool],
        call_soon_threadsafe: Callable[[Callable[[], None]], None],
        audit_log: Any,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._in_loop_thread = in_loop_thread
        self._call_soon_threadsafe = call_soon_threadsafe
        self._audit_log = audit_log
        self._on_error = on_error
        self._privileges: Dict[int, str] = {}
        self._subscribers: List[Subscriber] = []
        #: Events published on this node, and events delivered from elsewhere.
        self.published = 0
        self.injected = 0
        #: Events published by class mask (metrics; None: not counted).
        self.by_class: Optional[Dict[int, int]] = None

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(event, local)`` for every event delivered on this node."""
        self._subscribers.append(subscriber)

    def publish(self, event: Event, audit: Optional[AuditFields] = None,
                record: Optional[Dict[str, Any]] = None) -> None:
        """Deliver ``event`` to every session that may receive it, and tell the subscribers.

        Security events (A-3.14) are also audit records (A-3.16), with
        ``audit`` as the fields about the session they concern and
        ``record``'s fields after the event's headers (a login's outcome).
        """
        if not self._in_loop_thread():
            self._call_soon_threadsafe(lambda: self.publish(event, audit, record))
            return
        if not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, not {type(event).__name__}")
        self.published += 1
        counts = self.by_class
        if counts is not None:
            counts[event.classes] = counts.get(event.classes, 0) + 1
        self._outbox.add(event.classes, self.render(event))
        if audit is not None or event.name in SECURITY_EVENT_NAMES:
            # every security event is an audit record too, received or not.
            fields = dict(event.headers)
            if record:
                fields.update(record)
            fields[TRUSTED_FIELDS_KEY] = TRUSTED_SECURITY_FIELDS
            self._audit_log.record(event.name, fields, audit)
        if self._subscribers:
            self._notify(event, True)

    def inject(self, event: Event) -> None:
        """Deliver an event that was published elsewhere (another node) to this node's sessions."""
        if not self._in_loop_thread():
            self._call_soon_threadsafe(lambda: self.inject(event))
            return
        self.injected += 1
        self._outbox.add(event.classes, self.render(event))
        if self._subscribers:
            self._notify(event, False)

    def _notify(self, event: Event, local: bool) -> None:
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event, local)
            except Exception as exc:  # noqa: BLE001 - one subscriber must not stop the others
                self._on_error(getattr(subscriber, "__qualname__", repr(subscriber)), exc)

    def render(self, event: Event) -> bytes:
        """The event's bytes as every recipient receives them (Q-7.2)."""
        privilege = self._privileges.get(event.classes)
        if privilege is None:
            privilege = self._privileges[event.classes] = format_privilege(event.classes)
        settings = self._settings()
        head = f"Event: {event.name}\r\nPrivilege: {privilege}\r\n"
        if settings.timestamp_events:
            head += f"Timestamp: {wall_timestamp()}\r\n"
        if settings.system_name:
            head += f"SystemName: {settings.system_name}\r\n"
        headers = event.headers
        body = "".join([f"{name}: {value}\r\n" for name, value in headers])
        if body.count("\n") != len(headers) or body.count("\r") != len(headers):
            # A value holds a CR or LF: cleaned (names are checked tokens).
            body = "".join([f"{name}: {clean(value)}\r\n" for name, value in headers])
        return encode(head + body + "\r\n")
