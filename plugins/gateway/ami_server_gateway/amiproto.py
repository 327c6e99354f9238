"""Sans-IO client side of AMI: one upstream session's bytes, login and reply routing.

:class:`UpstreamSession` never touches a socket, a clock or a logger. The
I/O layer feeds it received bytes and sends what it puts in ``outgoing``;
it answers with :class:`Effect` records: a reply for one forwarded request
(the ``Response`` and, for a list, every item and the completion event), a
broadcast event to publish, login outcomes and the upstream's ``Shutdown``.
Every forwarded request gets its own upstream ActionID, so a reply can only
ever reach the request that caused it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "Broadcast", "Effect", "LoginFailed", "LoggedIn", "RawReply", "Reply", "ShutdownSeen", "UpMessage",
    "UpstreamProtocolError", "UpstreamSession", "StreamParser", "build_request", "parse_listcommands",
    "parse_message", "raw_lines",
]

Pairs = Tuple[Tuple[str, str], ...]

#: Most gateway ActionIDs remembered after their reply, to restore the client's
#: ActionID in broadcast events that quote them (OriginateResponse, UserEvent).
RECENT_LIMIT = 20000
#: Most items one list response may carry through the gateway.
MAX_LIST_ITEMS = 200000
#: Most bytes of one message from the upstream (a Command's output included); a longer one
#: ends the connection (UpstreamProtocolError) rather than growing the buffer without bound.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
#: Most bytes of the banner line.
MAX_BANNER_BYTES = 1024


class UpstreamProtocolError(ValueError):
    """The upstream sent what no AMI server sends (a message or banner over its limit)."""


def _valid_name(name: str) -> bool:
    return bool(name) and name == name.strip() and "\r" not in name and "\n" not in name


@dataclass(frozen=True)
class UpMessage:
    """One message from the upstream: its header pairs in wire order (repeats kept).

    ``text`` is the message as received (lines joined by CRLF), for a reply
    passed on byte for byte (:func:`raw_lines`).
    """

    pairs: Pairs
    text: str = field(default="", compare=False, repr=False)

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        key = name.lower()
        for hname, value in self.pairs:
            if hname.lower() == key:
                return value
        return default

    @property
    def is_response(self) -> bool:
        return bool(self.pairs) and self.pairs[0][0].lower() == "response"

    @property
    def is_event(self) -> bool:
        return bool(self.pairs) and self.pairs[0][0].lower() == "event"


def _split_message(text: str) -> Pairs:
    pairs = []
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not _valid_name(name):
            continue  # a line that is not a header cannot be passed on as one
        if value.startswith(" "):
            value = value[1:]
        pairs.append((name, value))
    return tuple(pairs)


def parse_message(chunk: bytes) -> Optional[UpMessage]:
    """One message's bytes (no blank line) as an :class:`UpMessage`; ``None`` if no line is a header."""
    text = chunk.decode("utf-8", "surrogateescape")
    pairs = _split_message(text)
    return UpMessage(pairs, text) if pairs else None


def raw_lines(message: UpMessage) -> Pairs:
    """The message's header lines as ``(name, rest)``, ``rest`` as received after the colon.

    The same lines as ``pairs`` (a line that is not a header is left out),
    with their own spacing kept; made from ``pairs`` when no text was kept.
    """
    if not message.text:
        return tuple((name, " " + value) for name, value in message.pairs)
    out = []
    for line in message.text.split("\r\n"):
        name, sep, rest = line.partition(":")
        if sep and _valid_name(name):
            out.append((name, rest))
    return tuple(out)


class StreamParser:
    """Bytes from an AMI server -> the banner line, then messages (blank-line framed).

    Each byte is searched once: a partial message waits in the buffer and only
    the bytes after it (and the three before, where a blank line may start)
    are searched when more arrive. A message longer than ``limit`` raises
    :class:`UpstreamProtocolError`.
    """

    __slots__ = ("_buf", "_searched", "banner", "limit")

    def __init__(self, limit: Optional[int] = None) -> None:
        self._buf = bytearray()
        #: Bytes at the front of the buffer known to hold no blank-line terminator.
        self._searched = 0
        self.banner: Optional[str] = None
        self.limit = MAX_MESSAGE_BYTES if limit is None else limit

    def feed(self, data: bytes) -> List[UpMessage]:
        out = []
        for chunk in self.feed_raw(data):
            message = parse_message(chunk)
            if message is not None:
                out.append(message)
        return out

    def feed_raw(self, data: bytes) -> List[bytes]:
        """The complete messages in ``data`` (and what came before), as bytes without the blank line."""
        buf = self._buf
        if not buf and self.banner is not None:
            last = data.rfind(b"\r\n\r\n")
            if last < 0:
                self._keep(data)
                return []
            buf += data[last + 4:]  # the common read: whole messages, perhaps a partial one after them
            self._searched = len(buf)
            self._check(len(buf))
            return _split(data[:last])
        buf += data
        if self.banner is None:
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_BANNER_BYTES:
                    raise UpstreamProtocolError(f"banner longer than {MAX_BANNER_BYTES} bytes")
                return []
            self.banner = buf[:end].decode("utf-8", "surrogateescape")
            del buf[:end + 2]
            self._searched = 0
        last = buf.rfind(b"\r\n\r\n", max(0, self._searched - 3))
        if last < 0:
            self._searched = len(buf)
            self._check(len(buf))
            return []
        whole = bytes(buf[:last])
        del buf[:last + 4]
        self._searched = 0
        self._check(len(buf))
        return _split(whole)

    def _keep(self, data: bytes) -> None:
        self._buf += data
        self._searched = len(self._buf)
        self._check(len(self._buf))

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise UpstreamProtocolError(f"message longer than {self.limit} bytes")

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _split(whole: bytes) -> List[bytes]:
    """Blank-line separated messages, stray blank lines between them dropped."""
    out = []
    for chunk in whole.split(b"\r\n\r\n"):
        while chunk.startswith(b"\r\n"):
            chunk = chunk[2:]  # stray blank lines between messages
        if chunk:
            out.append(chunk)
    return out


def build_request(lines: Iterable[str], action_id: str, drop: Sequence[str] = ()) -> bytes:
    """A client's request lines for the upstream: its first ActionID replaced by ``action_id``.

    The lines are passed on as the client sent them (``Header2:value2``
    stays without a space; UserEvent copies them verbatim). Headers named in
    ``drop`` (lower-case; the upstream-choosing header) are left out. With no
    ActionID the gateway's is appended.
    """
    out = []
    replaced = False
    for line in lines:
        name = line.partition(":")[0].strip().lower()
        if name == "actionid" and not replaced:
            out.append(f"ActionID: {action_id}")
            replaced = True
        elif name in drop:
            continue
        else:
            out.append(line)
    if not replaced:
        out.append(f"ActionID: {action_id}")
    return ("\r\n".join(out) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def parse_listcommands(message: UpMessage) -> List[Tuple[str, str, str]]:
    """``(name, synopsis, privilege text)`` from a ListCommands response (``Name: text  (Priv: x)``)."""
    out = []
    for name, value in message.pairs[1:]:
        if name.lower() in ("actionid", "message", "response"):
            continue
        text, sep, priv = value.rpartition("(Priv:")
        if not sep:
            continue
        out.append((name, text.strip(), priv.rstrip(")").strip()))
    return out


@dataclass(frozen=True)
class Reply:
    """A complete answer to request ``token``: the response, list items and completion."""

    token: object
    response: UpMessage
    items: Tuple[UpMessage, ...] = ()
    completion: Optional[UpMessage] = None


@dataclass(frozen=True)
class RawReply:
    """A one-message answer to request ``token``, as received (the blank line included)."""

    token: object
    data: bytes


@dataclass(frozen=True)
class Broadcast:
    """An event for every subscriber; ``action_id`` restores a gateway ActionID it quotes.

    ``action_id`` is ``None`` when the event quotes no gateway ActionID;
    otherwise the client's value to put in its place (``""``: remove it).
    """

    message: UpMessage
    action_id: Optional[str] = None


@dataclass(frozen=True)
class LoggedIn:
    """The session is usable; ``commands`` from its ListCommands, ``booted`` from FullyBooted."""

    commands: Tuple[Tuple[str, str, str], ...] = ()
    booted: Optional[UpMessage] = None


@dataclass(frozen=True)
class LoginFailed:
    message: str


@dataclass(frozen=True)
class ShutdownSeen:
    """The upstream announced it is shutting down (``Restart`` tells whether it comes back)."""

    message: UpMessage


Effect = object


@dataclass
class _Pending:
    token: object
    response: Optional[UpMessage] = None
    items: List[UpMessage] = field(default_factory=list)


class UpstreamSession:
    """One AMI client session to an upstream, without I/O.

    Call :meth:`start` once connected, :meth:`receive` with every chunk read,
    and send (then clear) :attr:`outgoing` after each call. ``prefix`` makes
    this gateway's ActionIDs unique on the upstream. ``auth`` is ``"md5"``
    (Challenge, then Login with the key) or ``"plain"``.
    """

    def __init__(self, username: str, secret: Callable[[], str], *, prefix: str, events: bool = True,
                 auth: str = "md5", fetch_commands: bool = True) -> None:
        self._username = username
        self._secret = secret
        self._events = events
        self._auth = auth
        self._fetch = fetch_commands
        self.prefix = prefix
        self.parser = StreamParser()
        self.outgoing = bytearray()
        self.state = "new"  # new -> login -> commands -> up
        self._counter = 0
        self._pending: Dict[str, _Pending] = {}
        #: gateway ActionID -> the client's ActionID ("" when it had none); ``None``: expired.
        self._recent: "OrderedDict[str, Optional[str]]" = OrderedDict()
        self._booted: Optional[UpMessage] = None
        self._control: Dict[str, str] = {}

    # -- requests ----------------------------------------------------------
    def next_id(self) -> str:
        self._counter += 1
        return f"{self.prefix}{self._counter}"

    def submit(self, lines: Iterable[str], client_action_id: str, token: object,
               drop: Sequence[str] = ()) -> str:
        """Queue a client's request; the reply will carry ``token``. Returns the gateway ActionID."""
        gw_id = self.next_id()
        self.outgoing += build_request(lines, gw_id, drop)
        self._pending[gw_id] = _Pending(token)
        recent = self._recent
        recent[gw_id] = client_action_id
        if len(recent) > RECENT_LIMIT:
            recent.popitem(last=False)
        return gw_id

    def abandon(self, gw_id: str) -> None:
        """Forget a request (timed out): its late reply and items are dropped, never published."""
        self._pending.pop(gw_id, None)
        if gw_id in self._recent:
            self._recent[gw_id] = None

    def fail_all(self) -> List[object]:
        """The tokens of every outstanding request, forgotten (the connection ended)."""
        tokens = [p.token for p in self._pending.values()]
        for gw_id in self._pending:
            if gw_id in self._recent:
                self._recent[gw_id] = None
        self._pending.clear()
        return tokens

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the session -------------------------------------------------------
    def start(self) -> None:
        """Connected: log in (the banner may still be on its way; AMI allows pipelining)."""
        self.state = "login"
        if self._auth == "md5":
            self._send_control("challenge", [("Action", "Challenge"), ("AuthType", "MD5")])
        else:
            self._send_login([("Secret", self._secret())])

    def _send_control(self, what: str, pairs: Sequence[Tuple[str, str]]) -> None:
        gw_id = self.next_id()
        self._control[gw_id] = what
        text = "".join(f"{name}: {value}\r\n" for name, value in pairs)
        self.outgoing += f"{text}ActionID: {gw_id}\r\n\r\n".encode()

    def _send_login(self, credentials: List[Tuple[str, str]]) -> None:
        self._send_control("login", [("Action", "Login"), ("Username", self._username), *credentials,
                                     ("Events", "on" if self._events else "off")])

    def receive(self, data: bytes) -> List[Effect]:
        """The effects of ``data``. A plain reply to a forwarded request (``ActionID`` second, no
        ``EventList``) is routed on its bytes, unparsed: the common case, kept cheap."""
        effects: List[Effect] = []
        pending = self._pending
        up = self.state == "up"
        for chunk in self.parser.feed_raw(data):
            if up and chunk.startswith(b"Response: "):
                first = chunk.find(b"\r\n")
                if chunk.startswith(b"ActionID: ", first + 2):
                    end = chunk.find(b"\r\n", first + 12)
                    gw_id = chunk[first + 12:end if end >= 0 else len(chunk)].decode("latin-1")
                    waiting = pending.get(gw_id)
                    if waiting is not None and waiting.response is None and b"ventlist" not in chunk.lower():
                        del pending[gw_id]
                        effects.append(RawReply(waiting.token, chunk + b"\r\n\r\n"))
                        continue
            message = parse_message(chunk)
            if message is not None:
                self._route(message, effects)
        return effects

    def _route(self, message: UpMessage, effects: List[Effect]) -> None:
        pairs = message.pairs
        first = pairs[0][0].lower()
        action_id = message.get("ActionID")
        if first == "response":
            if action_id is None:
                return
            what = self._control.pop(action_id, None)
            if what is not None:
                self._control_reply(what, message, effects)
                return
            pending = self._pending.get(action_id)
            if pending is None:
                return  # a late reply to a request that timed out or was failed
            if message.get("EventList", "").lower() == "start":
                pending.response = message
                return
            del self._pending[action_id]
            effects.append(Reply(pending.token, message))
            return
        if first != "event":
            return
        if action_id is not None and action_id.startswith(self.prefix):
            if action_id in self._control:
                if message.get("EventList", "").lower() == "complete":
                    self._control.pop(action_id)
                return
            pending = self._pending.get(action_id)
            if pending is not None and pending.response is not None:
                if message.get("EventList", "").lower() == "complete":
                    del self._pending[action_id]
                    effects.append(Reply(pending.token, pending.response, tuple(pending.items), message))
                elif len(pending.items) < MAX_LIST_ITEMS:
                    pending.items.append(message)
                return
            restored = self._recent.get(action_id)
            if restored is None:
                return  # a stale item of a request that timed out or was failed
            effects.append(Broadcast(message, restored))
            return
        name = pairs[0][1]
        if name == "FullyBooted" and self.state != "up":
            self._booted = message  # the upstream's greeting to the gateway itself
            return
        effects.append(Broadcast(message))
        if name == "Shutdown":
            effects.append(ShutdownSeen(message))

    def _control_reply(self, what: str, message: UpMessage, effects: List[Effect]) -> None:
        ok = message.pairs[0][1] == "Success"
        if what == "challenge":
            challenge = message.get("Challenge")
            if not ok or not challenge:
                effects.append(LoginFailed(message.get("Message") or "Challenge refused"))
                return
            key = hashlib.md5((challenge + self._secret()).encode()).hexdigest()
            self._send_login([("AuthType", "MD5"), ("Key", key)])
        elif what == "login":
            if not ok:
                self.state = "failed"
                effects.append(LoginFailed(message.get("Message") or "Authentication failed"))
            elif self._fetch:
                self.state = "commands"
                self._send_control("commands", [("Action", "ListCommands")])
            else:
                self.state = "up"
                effects.append(LoggedIn((), self._booted))
        elif what == "commands":
            self.state = "up"
            commands = tuple(parse_listcommands(message)) if ok else ()
            effects.append(LoggedIn(commands, self._booted))
