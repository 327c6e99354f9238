"""The records plugins and the server exchange: frozen, validated once.

Actions, responses and their blocks, events, authentication requests and
decisions, session snapshots, CLI commands, timers and deferred replies.
The objects through which plugins act on the server live in
:mod:`ami_server.context`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from .deferred import Deferred, TimerHandle
from .privileges import ClassListError, mask_of
from .protocol import ascii_lower, render_block, render_response

if TYPE_CHECKING:  # pragma: no cover
    from .context import ActionContext

__all__ = [
    "Action",
    "action",
    "ActionError",
    "AuthDecision",
    "AuthRequest",
    "Block",
    "CliCommand",
    "CommandOutput",
    "Deferred",
    "Event",
    "Response",
    "ServerStatus",
    "SessionInfo",
    "TimerHandle",
    "wall_timestamp",
]

HeaderPairs = Tuple[Tuple[str, str], ...]
HeadersLike = Union[Mapping[str, Any], Iterable[Tuple[str, Any]]]


def wall_timestamp() -> str:
    """The wall clock as AMI prints it: unix seconds, a dot, six digits of microseconds (B-5.5).

    Truncated, never rounded, as Asterisk prints ``tv_sec.tv_usec``; made from
    the integer clock because formatting a float costs more than the rest of a Ping.
    """
    digits = str(time.time_ns())
    return f"{digits[:-9]}.{digits[-9:-3]}"


_ACTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


#: Names that passed :func:`_check_name`: the same few are checked for every
#: reply and event, so hot paths test membership first (bounded).
_TOKENS: set = set()


def _check_name(name: str, what: str) -> None:
    """A name supplied by code is a token (P-1.20): a non-empty string, no colon, CR, LF or outer blanks."""
    if name.__class__ is str and name in _TOKENS:
        return
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    if ":" in name or "\r" in name or "\n" in name or name != name.strip():
        raise ValueError(f"{what} {name!r} must not contain ':', CR, LF or outer blanks")
    if len(_TOKENS) < 4096:
        _TOKENS.add(name)


def _pairs(headers: HeadersLike, what: str, owner: Optional[str] = None) -> HeaderPairs:
    """Headers as a tuple of (name, str value); ``what`` and ``owner`` name them in errors."""
    if headers.__class__ is tuple:
        # The common case: a tuple of (str, str) pairs with known names is kept as it is.
        for item in headers:
            if item.__class__ is not tuple or len(item) != 2:
                break
            name, value = item
            if name.__class__ is not str or name not in _TOKENS or value.__class__ is not str:
                break
        else:
            return headers
        items: Any = headers
    elif headers.__class__ is list:
        items = headers
    else:
        items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for item in items:
        name, value = item
        if name.__class__ is not str or name not in _TOKENS:
            _check_name(name, f"{what} {owner!r} header name" if owner is not None else f"{what} header name")
        if value.__class__ is not str:
            if value is None:
                value = ""
            elif isinstance(value, bool):
                value = "Yes" if value else "No"
            else:
                value = str(value)
        out.append((name, value))
    return tuple(out)


@dataclass(frozen=True, init=False)
class Event:
    """An event to publish: a name, a non-empty class set and ordered headers (Q-7.1).

    ``classes`` accepts a class name (``"user"``), a list of names or a bit
    mask; it is stored as a bit mask. ``headers`` accepts a mapping or a
    sequence of ``(name, value)`` pairs; repeated names are allowed.
    """

    name: str
    classes: Any
    headers: Any = ()

    def __init__(self, name: str, classes: Any, headers: Any = ()) -> None:
        # Written by hand, as Response's: one per published event.
        if name.__class__ is not str or name not in _TOKENS:
            _check_name(name, "event name")
        try:
            mask = mask_of(classes)
        except ClassListError as exc:
            raise ValueError(f"event {name!r}: {exc}") from None
        if not mask:
            raise ValueError(f"event {name!r} needs at least one class (C-4.7)")
        fields = self.__dict__
        fields["name"] = name
        fields["classes"] = mask
        fields["headers"] = _pairs(headers, "event", name)

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """First header value called ``name`` (case-insensitive)."""
        key = ascii_lower(name)
        for hname, value in self.headers:
            if ascii_lower(hname) == key:
                return value
        return default


@dataclass(frozen=True)
class Block:
    """An event-shaped block written as part of a reply, not published (R-2.5).

    ``with_action_id`` inserts the request's ActionID right after ``Event:``,
    as list items and completion blocks carry it (R-2.6).
    """

    name: str
    headers: Any = ()
    with_action_id: bool = True

    def __post_init__(self) -> None:
        _check_name(self.name, "block name")
        object.__setattr__(self, "headers", _pairs(self.headers, f"block {self.name!r}"))

    def render(self, action_id: str) -> bytes:
        """The block as written in a reply to a request with ``action_id``."""
        return render_block(self.name, self.headers, action_id if self.with_action_id else "")

    @classmethod
    def verbatim(cls, lines: Sequence[Tuple[str, str]]) -> "Block":
        """A block written as another server wrote it: ``(name, rest)`` lines, ``Event`` first
        (see :mod:`ami_server.verbatim`); none is given an ActionID line it lacked."""
        return _VerbatimBlock(lines)


_STATUSES = frozenset(("Success", "Error", "Goodbye"))


@dataclass(frozen=True, init=False)
class Response:
    """A reply to one action (R-2.1), optionally with item blocks and a completion.

    Written contiguously: the response block, ``blocks``, then the events
    queued for the session while the action ran, then ``completion`` -- or,
    when ``events_before_completion`` is false (the default, R-2.6), the
    completion right after the blocks and the queued events last.
    """

    status: str = "Success"
    message: Optional[str] = None
    headers: Any = ()
    blocks: Tuple[Block, ...] = ()
    completion: Optional[Block] = None
    list_start: bool = False
    events_before_completion: bool = False
    close: bool = False

    def __init__(
        self,
        status: str = "Success",
        message: Optional[str] = None,
        headers: Any = (),
        blocks: Tuple[Block, ...] = (),
        completion: Optional[Block] = None,
        list_start: bool = False,
        events_before_completion: bool = False,
        close: bool = False,
    ) -> None:
        # Written by hand: every reply is one of these, and the generated
        # frozen __init__ costs a guarded setattr per field (the fields are
        # stored straight into the instance dict, bypassing the frozen guard).
        if status not in _STATUSES:
            raise ValueError(f"response status must be Success, Error or Goodbye, not {status!r}")
        headers = _pairs(headers, "response")
        if blocks:
            blocks = tuple(blocks)
            for block in blocks:
                if not isinstance(block, Block):
                    raise TypeError(f"response blocks must be Block records, got {block!r}")
        elif blocks.__class__ is not tuple:
            blocks = tuple(blocks)
        if completion is not None and not isinstance(completion, Block):
            raise TypeError(f"response blocks must be Block records, got {completion!r}")
        fields = self.__dict__
        fields["status"] = status
        fields["message"] = message
        fields["headers"] = headers
        fields["blocks"] = blocks
        fields["completion"] = completion
        fields["list_start"] = list_start
        fields["events_before_completion"] = events_before_completion
        fields["close"] = close

    def render_head(self, action_id: str) -> bytes:
        """The response block (R-2.1) for a request with ``action_id``, without items or completion."""
        return render_response(self.status, action_id, self.message, self.headers, self.list_start)

    def render_parts(self, action_id: str) -> Tuple[List[bytes], bytes]:
        """The response block and the item blocks, and the completion block (``b""`` if none)."""
        parts = [self.render_head(action_id)]
        for block in self.blocks:
            parts.append(block.render(action_id))
        completion = self.completion.render(action_id) if self.completion is not None else b""
        return parts, completion

    @classmethod
    def verbatim(
        cls, lines: Sequence[Tuple[str, str]], blocks: Sequence[Block] = (), completion: Optional[Block] = None,
    ) -> "Response":
        """A reply written as another server wrote it (a gateway passing one on): ``(name, rest)``
        lines, ``Response`` first with any status token (see :mod:`ami_server.verbatim`)."""
        return _VerbatimResponse(lines, blocks, completion)

    @classmethod
    def verbatim_bytes(cls, data: bytes) -> "Response":
        """A one-message reply passed on as received (``Response:`` line first, CRLF framed, the
        blank line included): only its ActionID line is rewritten, nothing is parsed into lines.
        ``ValueError`` when the bytes are not what :meth:`verbatim` would write unchanged."""
        return _VerbatimBytesResponse(data)

    @classmethod
    def success(cls, message: Optional[str] = None, headers: HeadersLike = ()) -> "Response":
        return cls("Success", message, headers)

    @classmethod
    def error(cls, message: str, headers: HeadersLike = ()) -> "Response":
        return cls("Error", message, headers)

    @classmethod
    def list(
        cls,
        items: Sequence[Block],
        complete_event: str,
        message: str = "Results will follow",
        complete_headers: HeadersLike = (),
    ) -> "Response":
        """A list response (R-2.6): start, one block per item, then ``<complete_event>``."""
        items = tuple(items)
        completion = Block(
            complete_event,
            (("EventList", "Complete"), ("ListItems", str(len(items))))
            + _pairs(complete_headers, "completion"),
        )
        return cls("Success", message, (), items, completion, list_start=True)


class ActionError(Exception):
    """Raise from a handler to answer ``Response: Error`` with ``message``."""

    def __init__(self, message: str, headers: HeadersLike = ()) -> None:
        super().__init__(message)
        self.response = Response.error(message, headers)


@dataclass(frozen=True)
class SessionInfo:
    """A read-only snapshot of one session, as plugins see it."""

    session_id: str
    remote_address: str
    local_address: str
    transport: str
    authenticated: bool
    username: str
    read_classes: int
    write_classes: int
    event_mask: int
    state: str = ""
    opened_at: float = 0.0
    login_time: Optional[float] = None
    #: The authentication backend (plugin name) that accepted the Login.
    backend: Optional[str] = None
    #: The client's IP address, IPv4-mapped IPv6 shown as IPv4 (for ACL checks).
    peer_ip: str = ""
    #: What the accepting backend attached to the login (``AuthDecision.attributes``).
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoginCheck:
    """An accepted Login about to take effect, shown to plugins' login checks.

    ``single_login`` is True when the user may hold one session only
    (``allow_multiple_login`` false for this login): a check that spans
    several servers enforces it beyond this one.
    """

    session: SessionInfo
    username: str
    single_login: bool
    backend: Optional[str] = None


@dataclass(frozen=True)
class AuthRequest:
    """Credentials of one Login, handed to each ``authenticate`` implementation.

    ``auth_type`` is ``"plain"`` (``secret`` set) or ``"md5"`` (``challenge``
    and ``key`` set when the client supplied them). ``peer_ip`` is the
    client's IP address (IPv4-mapped IPv6 as IPv4) for address checks;
    ``remote_address`` and ``local_address`` are the A-3.14 forms
    (``IPV4/TLS/192.0.2.1/5039``), so ``local_address`` and ``transport``
    identify the listener. Secrets are excluded from ``repr`` so that a
    logged request never leaks them.
    """

    username: str
    auth_type: str
    secret: Optional[str] = field(default=None, repr=False)
    challenge: Optional[str] = field(default=None, repr=False)
    key: Optional[str] = field(default=None, repr=False)
    remote_address: str = ""
    local_address: str = ""
    transport: str = "TCP"
    peer_ip: str = ""


@dataclass(frozen=True)
class AuthDecision:
    """What an authentication backend decided (return ``None`` for "not mine").

    ``reason`` on a rejection selects the security event: ``"unknown_user"``
    (InvalidAccountID), ``"acl_denied"`` (FailedACL), ``"invalid_password"``
    (InvalidPassword), ``"challenge_failed"`` (ChallengeResponseFailed) or
    ``None`` (no event). ``detail`` is a short explanation for the audit
    record only -- never put a secret in it.

    On an acceptance, ``allow_multiple_login`` and ``require_tls_for_plaintext``
    override the ``[server]`` settings of the same names for this user
    (``None``: the server's setting applies), and ``attributes`` is data for
    other plugins (a gateway's per-user policy), shown to them as
    ``SessionInfo.attributes``.
    """

    accepted: bool
    read: int = 0
    write: int = 0
    reason: Optional[str] = None
    allow_multiple_login: Optional[bool] = None
    detail: str = ""
    require_tls_for_plaintext: Optional[bool] = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    REASONS = ("unknown_user", "acl_denied", "invalid_password", "challenge_failed", None)

    def __post_init__(self) -> None:
        if self.reason not in self.REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}")
        object.__setattr__(self, "read", mask_of(self.read))
        object.__setattr__(self, "write", mask_of(self.write))

    @classmethod
    def accept(
        cls,
        read: Any = 0,
        write: Any = 0,
        allow_multiple_login: Optional[bool] = None,
        require_tls_for_plaintext: Optional[bool] = None,
        attributes: Optional[Mapping[str, Any]] = None,
    ) -> "AuthDecision":
        return cls(
            True, read, write, None, allow_multiple_login, require_tls_for_plaintext=require_tls_for_plaintext,
            attributes=attributes or {},
        )

    @classmethod
    def reject(cls, reason: Optional[str] = None, detail: str = "") -> "AuthDecision":
        return cls(False, 0, 0, reason, detail=detail)


Handler = Callable[["ActionContext"], Any]


@dataclass(frozen=True)
class Action:
    """An action a plugin adds (returned from ``register_actions``).

    ``privileges`` is the class set of C-4.3 and must be given explicitly
    (``()`` or ``"none"`` for an action open to every logged-in user, C-4.4).
    ``read_only`` actions (Ping and the like) are audited only when the
    configuration asks for it. A ``blocking`` handler (one that waits on a
    database, a file, another server) runs in the server's bounded worker
    pool instead of on the event loop; its reply is handed back to the loop.
    A ``control`` action (Login, Events, SessionKick, ...) receives the
    session-control capability as ``ctx.control``; other actions do not.
    ``timeout`` replaces ``[server] action_timeout`` for this action's
    deferred or blocking replies (a synchronous Originate waits longer).
    A ``concurrent`` action's deferred reply does not hold up the session:
    the server runs the session's following concurrent requests while it
    is outstanding and still writes the replies in request order (for an
    action that forwards to a server answering in order: a gateway). It
    cannot be ``blocking`` or ``control``.
    """

    name: str
    handler: Handler
    synopsis: str
    privileges: Any
    read_only: bool = False
    blocking: bool = False
    control: bool = False
    timeout: Optional[float] = None
    concurrent: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _ACTION_NAME_RE.match(self.name):
            raise ValueError(
                f"action name {self.name!r} must be ASCII letters, digits, '_' or '-' (B-5.8)"
            )
        if not callable(self.handler):
            raise TypeError(f"action {self.name!r}: handler must be callable")
        if (
            not isinstance(self.synopsis, str)
            or not self.synopsis.strip()
            or "\r" in self.synopsis
            or "\n" in self.synopsis
        ):
            raise ValueError(f"action {self.name!r}: synopsis must be one non-empty line")
        if self.concurrent and (self.blocking or self.control):
            raise ValueError(f"action {self.name!r}: a concurrent action cannot be blocking or control")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and 0 < self.timeout <= 86400):
            raise ValueError(f"action {self.name!r}: timeout must be a number of seconds in (0, 86400]")
        try:
            object.__setattr__(self, "privileges", mask_of(self.privileges))
        except ClassListError as exc:
            raise ValueError(f"action {self.name!r}: privileges: {exc}") from None


def action(
    name: str,
    synopsis: str,
    privileges: Any,
    *,
    read_only: bool = False,
    blocking: bool = False,
    control: bool = False,
    timeout: Optional[float] = None,
    concurrent: bool = False,
) -> Callable[[Handler], Action]:
    """Decorator: turn a handler function into an :class:`Action` record."""

    def wrap(handler: Handler) -> Action:
        return Action(name, handler, synopsis, privileges, read_only=read_only, blocking=blocking, control=control,
                      timeout=timeout, concurrent=concurrent)

    return wrap


@dataclass(frozen=True)
class CommandOutput:
    """What a CLI command answers: output lines, and whether it succeeded (B-5.16)."""

    lines: Tuple[str, ...] = ()
    success: bool = True

    def __post_init__(self) -> None:
        lines = (self.lines,) if isinstance(self.lines, str) else tuple(self.lines)
        for line in lines:
            if not isinstance(line, str):
                raise TypeError(f"command output lines must be strings, got {line!r}")
        object.__setattr__(self, "lines", lines)


CliHandler = Callable[["ActionContext", Tuple[str, ...]], Any]


@dataclass(frozen=True)
class CliCommand:
    """A CLI command that the ``Command`` action runs (B-5.16), returned from ``register_actions``.

    ``command`` is its words (``"core show version"``); a request matches
    the registered command with the most leading words in common
    (case-insensitively), and the handler receives the context and the
    remaining words. The handler returns a :class:`CommandOutput` or a
    sequence of lines (success), or raises :class:`ActionError` (for
    example ``ActionError("Command blacklisted")``). It runs on the event
    loop and must not block.
    """

    command: str
    handler: CliHandler
    synopsis: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.command, str) or not self.command.split():
            raise ValueError(f"CLI command {self.command!r} must have at least one word")
        if "\r" in self.command or "\n" in self.command:
            raise ValueError(f"CLI command {self.command!r} must be one line")
        if not callable(self.handler):
            raise TypeError(f"CLI command {self.command!r}: handler must be callable")
        object.__setattr__(self, "command", " ".join(self.command.split()))

    @property
    def words(self) -> Tuple[str, ...]:
        return tuple(ascii_lower(word) for word in self.command.split(" ") if word)


@dataclass(frozen=True)
class ServerStatus:
    """Counters and times of a running server (CoreStatus, ServerStatus)."""

    started_at: float
    reloaded_at: float
    sessions: int
    authenticated: int
    unauthenticated: int
    events_published: int
    events_dropped: int
    slow_consumer_disconnects: int
    sessions_accepted: int
    plugins: Tuple[str, ...]
    shutting_down: bool


from .verbatim import _VerbatimBlock, _VerbatimBytesResponse, _VerbatimResponse  # noqa: E402 - they subclass Block and Response
