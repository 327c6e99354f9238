"""Security events of spec A-3.14: field formats and the records themselves."""

from __future__ import annotations

import datetime
import functools
import math
import os
import secrets
import threading
import time
from typing import Container, Optional, Tuple

from .records import Event
from .privileges import CLASSES

__all__ = [
    "EPOCH_TV",
    "format_tv",
    "format_address",
    "host_port",
    "new_session_id",
    "new_challenge",
    "security_event",
]

EPOCH_TV = "1970-01-01T00:00:00.000+0000"
_SECURITY = CLASSES["security"]

#: Event name -> (Severity, EventVersion).
_KINDS = {
    "SuccessfulAuth": ("Informational", "1"),
    "InvalidAccountID": ("Error", "1"),
    "InvalidPassword": ("Error", "2"),
    "ChallengeResponseFailed": ("Error", "1"),
    "SessionLimit": ("Error", "1"),
    "RequestNotAllowed": ("Error", "1"),
    "RequestBadFormat": ("Error", "1"),
    "FailedACL": ("Error", "1"),
}


@functools.lru_cache(maxsize=8)
def _second_parts(second: int) -> Tuple[str, str]:
    """(date and time up to the seconds, zone offset) of one whole second, local zone."""
    moment = datetime.datetime.fromtimestamp(second).astimezone()
    return moment.strftime("%Y-%m-%dT%H:%M:%S."), moment.strftime("%z")


def format_tv(when: Optional[float]) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmm±hhmm`` in the server's local zone; epoch for ``None``."""
    if when is None:
        return EPOCH_TV
    second = math.floor(when)
    prefix, zone = _second_parts(second)
    return f"{prefix}{int((when - second) * 1000):03d}{zone}"


def format_address(sockaddr: Tuple, transport: str) -> str:
    """``IPV4|IPV6/TCP|TLS/<address>/<port>``; IPv4-mapped IPv6 is reported as IPv4."""
    host, port = sockaddr[0], sockaddr[1]
    if ":" in host:
        if host.lower().startswith("::ffff:") and "." in host:
            return f"IPV4/{transport}/{host[7:]}/{port}"
        return f"IPV6/{transport}/{host}/{port}"
    return f"IPV4/{transport}/{host}/{port}"


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:5038``) so the port can be told apart."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class _SessionIds:
    """Session ids from the OS's CSPRNG, read for 512 ids at a time (one ``getrandom`` per 512 sessions)."""

    BATCH = 512

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._next = 0

    def __call__(self) -> str:
        with self._lock:
            start = self._next
            if start >= len(self._hex):
                self._hex = os.urandom(6 * self.BATCH).hex()
                start = 0
            self._next = start + 12
            return "0x" + self._hex[start:start + 12]


    def forget(self) -> None:
        """In a forked child: never hand out the ids the parent may hand out too."""
        self._lock = threading.Lock()
        self._hex = ""
        self._next = 0


_session_ids = _SessionIds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_session_ids.forget)


def new_session_id(taken: Container[str] = frozenset()) -> str:
    """``0x`` + 12 random lower-case hex digits, unique among ``taken`` (D-8.15)."""
    while True:
        candidate = _session_ids()
        if candidate not in taken:
            return candidate


def new_challenge() -> str:
    """Nine decimal digits, first non-zero, from a CSPRNG (A-3.6)."""
    return str(100_000_000 + secrets.randbelow(900_000_000))


def security_event(
    name: str,
    *,
    session_id: str,
    local_address: str,
    remote_address: str,
    account_id: str,
    session_tv: Optional[float],
    extra: Tuple[Tuple[str, str], ...] = (),
    now: Optional[float] = None,
) -> Event:
    """Build one security event with the common block of A-3.14 in Asterisk's order."""
    severity, version = _KINDS[name]
    event_tv = format_tv(time.time() if now is None else now)
    common = [
        ("EventTV", event_tv),
        ("Severity", severity),
        ("Service", "AMI"),
        ("EventVersion", version),
    ]
    if name == "RequestBadFormat":
        headers = common + [
            ("SessionID", session_id),
            ("LocalAddress", local_address),
            ("RemoteAddress", remote_address),
            *extra,
            ("SessionTV", format_tv(session_tv)),
            ("AccountID", account_id),
        ]
    else:
        headers = common + [
            ("AccountID", account_id),
            ("SessionID", session_id),
            ("LocalAddress", local_address),
            ("RemoteAddress", remote_address),
            *extra,
            ("SessionTV", format_tv(session_tv)),
        ]
    return Event(name, _SECURITY, headers)
