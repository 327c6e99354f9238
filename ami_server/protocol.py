"""Sans-IO AMI framing: bytes in, messages out; replies and events in, bytes out.

Nothing here touches a socket, a clock or a logger. The parser reproduces the
line and message limits of Asterisk's manager (spec P-1.4 to P-1.15) exactly,
and the renderers guarantee that no CR or LF ever ends up inside an output
value (P-1.19, P-1.20).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = [
    "MAX_LINE",
    "MAX_LINES",
    "Message",
    "Parser",
    "decode",
    "encode",
    "render_block",
    "render_reply",
    "render_verbatim",
    "ReplyRenderer",
    "render_response",
    "clean",
    "ascii_lower",
]

#: Asterisk's input buffer: an LF must occur among the first 1024 bytes (P-1.6).
MAX_LINE = 1024
#: Lines stored per message; the 129th and later are dropped (P-1.9).
MAX_LINES = 128

# Bytes <= 0x20 stripped from the start of a header value (P-1.11). NUL never
# reaches here because lines are cut at their first NUL (P-1.5).
_LEADING_BLANKS = "".join(chr(c) for c in range(1, 0x21))

TOO_LONG = "Failed to parse message: line too long"
TOO_MANY = "Too many lines in message or allocation failure"


def decode(data: bytes) -> str:
    """Decode wire bytes losslessly: valid UTF-8 reads as text, anything else survives (P-1.22)."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    """Inverse of :func:`decode`; never raises for text that came from the wire."""
    try:
        return text.encode()  # the strict codec is the fast one
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")  # bytes that came from the wire (P-1.22)


def clean(value: str) -> str:
    """Replace every CR and LF with one space, so a value can never forge a line (P-1.20)."""
    if "\r" in value or "\n" in value:
        return value.replace("\r", " ").replace("\n", " ")
    return value


def ascii_lower(text: str) -> str:
    """Lower-case ``A``-``Z`` only, as Asterisk's ``strcasecmp`` does (P-1.12, P-1.15).

    ``str.lower`` maps some non-ASCII letters onto ASCII ones (U+212A KELVIN
    SIGN to ``k``), so ``SessionKic`` followed by U+212A would name
    SessionKick, and U+212A followed by ``ate`` would be the user ``kate``.
    Every character but ``A``-``Z`` is kept as it is.
    ASCII text, nearly all input, costs one ``isascii`` (O(1)) more than
    ``lower``; other text is folded as bytes, whose ``lower`` is ASCII-only.
    """
    if text.isascii():
        return text.lower()
    return text.encode("utf-8", "surrogatepass").lower().decode("utf-8", "surrogatepass")


class Message:
    """One request: the stored lines of a message, in arrival order (P-1.14).

    ``error`` is ``None`` for a message that may be dispatched, or the exact
    error text of P-1.10 when the message was too long or had too many lines.
    An empty message (a lone blank line, P-1.8) has no lines and ``empty`` set.
    """

    __slots__ = ("lines", "error", "empty", "_pairs", "action", "action_id")

    def __init__(self, lines: Sequence[str], error: Optional[str] = None) -> None:
        self.lines: Tuple[str, ...] = tuple(lines)
        self.error = error
        self.empty = not self.lines and error is None
        #: (ASCII-lower-cased name, name, value) per header line, made on first use.
        self._pairs: Optional[Tuple[Tuple[str, str, str], ...]] = None
        # Every message is dispatched, so the routing headers are picked out
        # now; the other headers are split only if the action reads them.
        action = ""
        action_id: Optional[str] = None
        for line in self.lines:
            name, sep, value = line.partition(":")
            if sep:
                # ``lower`` is safe here only with the isascii test on a hit (P-1.12).
                lname = name.lower()
                if lname == "action" and name.isascii():
                    if not action:
                        action = value.lstrip(_LEADING_BLANKS)
                elif lname == "actionid" and action_id is None and name.isascii():
                    action_id = value.lstrip(_LEADING_BLANKS)
        #: The first non-empty ``Action`` value, or ``""`` when there is none (P-1.13).
        self.action = action
        #: The first ``ActionID`` value (``""`` when absent or empty, R-2.2).
        self.action_id = action_id or ""

    def _header_pairs(self) -> Tuple[Tuple[str, str, str], ...]:
        """(ASCII-lower-cased name, name, value) for each line that has a colon (P-1.11, P-1.12)."""
        pairs = self._pairs
        if pairs is None:
            split = []
            for line in self.lines:
                name, sep, value = line.partition(":")
                if sep:
                    lname = name.lower() if name.isascii() else ascii_lower(name)
                    split.append((lname, name, value.lstrip(_LEADING_BLANKS)))
            pairs = self._pairs = tuple(split)
        return pairs

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first header called ``name`` (ASCII case-insensitive), even if empty (P-1.13)."""
        key = name.lower() if name.isascii() else ascii_lower(name)
        for lname, _, value in self._header_pairs():
            if lname == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``, in order (repeated headers, P-1.14)."""
        key = ascii_lower(name)
        return [value for lname, _, value in self._header_pairs() if lname == key]

    def headers(self) -> list[Tuple[str, str]]:
        """``(name, value)`` for every stored line that has a colon, in order."""
        return [(name, value) for _, name, value in self._header_pairs()]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Message({list(self.lines)!r}, error={self.error!r})"


#: A well-formed message up to this size is parsed in one step.
_FAST_MAX_BYTES = 16384
#: Pipelined messages within this many bytes are parsed together.
_AHEAD_BYTES = 4096


class Parser:
    """Incremental AMI request parser.

    Feed it bytes in any fragmentation with :meth:`feed`, take complete
    messages one at a time with :meth:`next_message`. At most about one line
    limit of a long line is held (P-1.6); at most 128 lines of a message are
    kept (P-1.9). Unconsumed input stays in the parser so that the caller can
    apply back-pressure by simply not calling :meth:`next_message` (P-1.18).

    Well-formed input -- CRLF-framed messages of short, clean lines, the
    common case by far -- is split in whole runs: the messages pipelined in up
    to ``_AHEAD_BYTES`` are made in one step and handed out one at a time, and
    their bytes count as unconsumed until the last is taken. Everything else
    (bare LF, NUL, long lines, many lines, empty messages) goes line by line
    (:meth:`_next_by_lines`), which gives the same messages.
    """

    __slots__ = ("_buf", "_pos", "_lines", "_too_long", "_too_many", "_ahead", "_ahead_end")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._lines: list[str] = []
        self._too_long = False
        self._too_many = False
        #: Messages parsed ahead, last first (a list: an empty deque costs 600 bytes per session).
        self._ahead: List[Message] = []
        self._ahead_end = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos and self._pos == len(self._buf) and not self._ahead:
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def take(self, data: bytes) -> Optional[Message]:
        """Hand over received bytes; the message itself when they are one whole message.

        The common read -- nothing buffered, and ``data`` exactly one short,
        well-formed message -- is parsed straight from ``data`` and nothing is
        kept. Anything else is buffered as :meth:`feed` does and ``None`` is
        returned: take the messages with :meth:`next_message`.
        """
        if (
            self._pos == len(self._buf) and not self._lines and not self._too_long and not self._too_many
            and not self._ahead
        ):
            end = len(data) - 4
            if (
                0 < end < MAX_LINE - 2  # no line can be too long (P-1.6)
                and data.find(b"\r\n\r\n") == end  # its first blank line ends it: one message, none empty
                and not data.startswith(b"\r\n")
                and 0 not in data  # (int membership: see next_message)
            ):
                crlf = data.count(b"\r\n")
                if data.count(b"\n") == crlf and crlf - 2 < MAX_LINES:
                    return Message(data[:end].decode("utf-8", "surrogateescape").split("\r\n"))
        self.feed(data)
        return None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as (or dropped from) a message."""
        return len(self._buf) - self._pos

    @property
    def has_input(self) -> bool:
        """True if any byte arrived that is not part of an already returned message."""
        return self.buffered > 0 or bool(self._lines) or self._too_long or self._too_many or bool(self._ahead)

    def unread(self, message: Message) -> None:
        """Put back the message :meth:`next_message` just returned: it is handed out again first.

        For a request that may not run yet (behind concurrent replies); its
        bytes are already consumed, so the position to resume from is kept.
        """
        if not self._ahead:
            self._ahead_end = self._pos
        self._ahead.append(message)

    def next_message(self) -> Optional[Message]:
        """Return the next complete message, or ``None`` until more input arrives."""
        ahead = self._ahead
        if ahead:
            message = ahead.pop()
            if not ahead:
                self._pos = self._ahead_end
            return message
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            return None  # everything received has been consumed
        if not self._lines and not self._too_long and not self._too_many:
            end = buf.find(b"\r\n\r\n", pos, pos + _FAST_MAX_BYTES)
            # The first blank line ends the buffer: exactly one message, with no
            # empty line inside (one request per read, the common case).
            single = end == len(buf) - 4
            if not single:
                last = buf.rfind(b"\r\n\r\n", pos, pos + _AHEAD_BYTES)
                if last > pos:
                    end = last
            if end > pos:
                run = buf[pos:end]
                crlf = run.count(b"\r\n")
                if (
                    # (``0 not in`` and ``find``: a bytearray's ``in`` with a bytes
                    # operand first fails as an integer, which costs ten times more.)
                    run.count(b"\n") == crlf and 0 not in run and not run.startswith(b"\r\n")
                    and (single or (not run.endswith(b"\r\n") and run.find(b"\r\n\r\n\r\n") < 0))
                    and (end - pos < MAX_LINE - 2 or max(map(len, run.split(b"\r\n"))) < MAX_LINE - 2)
                ):
                    # Only well-formed messages, none of them empty, in run.
                    text = run.decode("utf-8", "surrogateescape")
                    if crlf < MAX_LINES and (single or "\r\n\r\n" not in text):
                        self._pos = end + 4
                        return Message(text.split("\r\n"))
                    blocks = text.split("\r\n\r\n")
                    # Fewer CRLFs in all than the line limit: no message can exceed it.
                    if crlf < MAX_LINES or max(block.count("\r\n") for block in blocks) < MAX_LINES:
                        ahead.extend([Message(block.split("\r\n")) for block in reversed(blocks)])
                        self._ahead_end = end + 4
                        return self.next_message()
        return self._next_by_lines()

    def _next_by_lines(self) -> Optional[Message]:
        """Line by line, exactly as spec P-1.4 to P-1.10 describe it."""
        buf = self._buf
        while True:
            pos = self._pos
            end = buf.find(b"\n", pos, pos + MAX_LINE)
            if end < 0:
                if len(buf) - pos >= MAX_LINE:
                    # P-1.6 step 2: drop 1023 bytes, mark the message, retry.
                    self._pos = pos + MAX_LINE - 1
                    self._too_long = True
                    continue
                self._compact()
                return None
            self._pos = end + 1
            stop = end - 1 if end > pos and buf[end - 1] == 0x0D else end
            nul = buf.find(b"\x00", pos, stop)
            if nul >= 0:
                stop = nul
            if stop > pos:
                if len(self._lines) < MAX_LINES:
                    self._lines.append(buf[pos:stop].decode("utf-8", "surrogateescape"))
                else:
                    self._too_many = True
                continue
            # An empty line ends the message (or is an empty message, P-1.8).
            return self._finish()

    def _finish(self) -> Message:
        if self._too_many:
            error: Optional[str] = TOO_MANY
        elif self._too_long:
            error = TOO_LONG
        else:
            error = None
        message = Message(self._lines, error)
        self._lines = []
        self._too_long = self._too_many = False
        return message

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def messages(self) -> Iterator[Message]:
        """Yield every complete message currently buffered."""
        while True:
            message = self.next_message()
            if message is None:
                return
            yield message


Headers = Iterable[Tuple[str, str]]


def _header_lines(out: list[str], headers: Headers) -> None:
    for name, value in headers:
        out.append(f"{clean(name)}: {clean(str(value))}\r\n")


def render_response(
    status: str,
    action_id: str = "",
    message: Optional[str] = None,
    headers: Headers = (),
    list_start: bool = False,
) -> bytes:
    """Render a response block in the order of R-2.1."""
    out = [f"Response: {status}\r\n"]
    if action_id:
        out.append(f"ActionID: {clean(action_id)}\r\n")
    if list_start:
        out.append("EventList: start\r\n")
    if message is not None:
        out.append(f"Message: {clean(message)}\r\n")
    _header_lines(out, headers)
    out.append("\r\n")
    return encode("".join(out))


def render_reply(
    status: str,
    action_id: str,
    message: Optional[str],
    pairs: Tuple[Tuple[str, str], ...],
    list_start: bool = False,
) -> bytes:
    """:func:`render_response` for checked ``(name, value)`` string pairs (a ``Response``'s).

    The lines are joined first and the CR and LF counted once: only text that
    holds one (and must be cleaned, P-1.20) takes the general path.
    """
    if action_id:
        text = f"Response: {status}\r\nActionID: {action_id}\r\n"
        lines = 3 + len(pairs)
    else:
        text = f"Response: {status}\r\n"
        lines = 2 + len(pairs)
    if list_start:
        text += "EventList: start\r\n"
        lines += 1
    if message is not None:
        text += f"Message: {message}\r\n"
        lines += 1
    for name, value in pairs:
        text += f"{name}: {value}\r\n"
    text += "\r\n"
    if text.count("\n") != lines or text.count("\r") != lines:
        return render_response(status, action_id, message, pairs, list_start)
    return encode(text)


class ReplyRenderer:
    """:func:`render_reply` for a stream of replies, rendering once what repeats.

    A handler may answer several requests in a row with one (immutable)
    response object -- Ping does for the requests of one read. Such replies
    differ only in their ActionID line, so from the second in a row on, the
    lines after it are kept as bytes and only the ActionID line is made.
    ``key`` is the response object; one is kept at a time. ``status`` is a
    response's (Success, Error or Goodbye: one line).
    """

    __slots__ = ("last", "_split", "_head", "_tail")

    def __init__(self) -> None:
        #: The key of the previous reply (a caller may test and set it first, as the server does).
        self.last: Any = None
        #: The key whose ``Response:`` line is ``_head`` and whose lines after the ActionID are ``_tail``.
        self._split: Any = None
        self._head = b""
        self._tail = b""

    def render(
        self, key: Any, status: str, action_id: str, message: Optional[str],
        pairs: Tuple[Tuple[str, str], ...], list_start: bool = False,
    ) -> bytes:
        if key is self.last:
            if key is not self._split:
                whole = render_reply(status, "", message, pairs, list_start)
                cut = whole.index(b"\r\n") + 2
                self._head, self._tail, self._split = whole[:cut], whole[cut:], key
            if not action_id:
                return self._head + self._tail
            if "\r" not in action_id and "\n" not in action_id:  # else cleaned by render_reply (P-1.20)
                return self._head + encode(f"ActionID: {action_id}\r\n") + self._tail
        else:
            self.last = key
        return render_reply(status, action_id, message, pairs, list_start)


def render_verbatim(lines: Tuple[Tuple[str, str], ...], action_id: str, required: bool) -> bytes:
    """Render ``name:rest`` lines as given, the first ``ActionID`` line holding ``action_id``.

    ``rest`` is the text after the colon as another server wrote it (with
    or without a space). The ``ActionID`` line stays where it was, holding
    the request's ActionID, and goes when the request had none; with no such
    line, ``required`` (a response, R-2.2) puts one second. ``lines`` are
    checked: no CR or LF anywhere (:meth:`Response.verbatim`).
    """
    out = []
    placed = False
    for name, rest in lines:
        if not placed and ascii_lower(name) == "actionid":
            placed = True
            if action_id:
                out.append(f"{name}: {clean(action_id)}\r\n")
            continue
        out.append(f"{name}:{rest}\r\n")
    if not placed and required and action_id:
        out.insert(1, f"ActionID: {clean(action_id)}\r\n")
    out.append("\r\n")
    return encode("".join(out))


def render_block(name: str, headers: Headers = (), action_id: str = "") -> bytes:
    """Render an event-shaped block: ``Event:``, optional ActionID, headers, blank line."""
    out = [f"Event: {clean(name)}\r\n"]
    if action_id:
        out.append(f"ActionID: {clean(action_id)}\r\n")
    _header_lines(out, headers)
    out.append("\r\n")
    return encode("".join(out))
