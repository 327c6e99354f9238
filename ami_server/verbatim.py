"""Replies written as another server wrote them (:meth:`Response.verbatim`, :meth:`Block.verbatim`).

A gateway passing an upstream's reply on wants its bytes, not a rebuilt
copy: any status token, each header line's own spacing, and the ActionID
line where the upstream put it (holding the client's ActionID). These
records keep the lines as ``(name, rest)`` pairs, ``rest`` being the text
after the colon as received (``" Success"``, or ``"x"`` for a ``Name:x``
line), checked once and rendered by
:func:`~ami_server.protocol.render_verbatim`:

- each line is written as ``name:rest``; a response's first line is its
  ``Response`` line, whose status may be any token (``Follows``), a
  block's its ``Event`` line;
- the first ``ActionID`` line stays where it stands and holds the request's
  ActionID, and goes when the request had none; a response without one gets
  one second (R-2.2), a block none;
- CR and LF inside a rest become spaces (P-1.20), names are checked as for
  any header;
- a verbatim response takes ``blocks`` and a ``completion`` (verbatim or
  not) as any reply does; its ``status`` and ``message`` are read from its
  lines for the audit trail.

:meth:`Response.verbatim_bytes` takes one message as received instead of
its lines: nothing is split or joined again, only the ActionID line is
replaced when it is written. It accepts only what the line form would write
unchanged (CRLF line ends, a header on every line, no CR or LF inside a
value) and raises ``ValueError`` otherwise, so the caller can fall back to
the line form.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

from .protocol import ascii_lower, clean, decode, encode, render_verbatim
from .records import _TOKENS, Block, Response, _check_name

__all__: list = []


def _verbatim_lines(lines: Sequence[Tuple[str, str]], what: str, first: str) -> Tuple[Tuple[str, str], ...]:
    """``(name, rest)`` pairs checked once: names are tokens, CR and LF in a rest become spaces (P-1.20)."""
    out = []
    for item in lines:
        name, rest = item
        if name.__class__ is not str or rest.__class__ is not str:
            raise TypeError(f"{what} lines must be (str, str) pairs, got {item!r}")
        if name not in _TOKENS:
            _check_name(name, f"{what} header name")
        if "\r" in rest or "\n" in rest:
            rest = rest.replace("\r", " ").replace("\n", " ")
        out.append((name, rest))
    if not out or ascii_lower(out[0][0]) != first or not out[0][1].strip():
        raise ValueError(f"{what} must start with a non-empty {first.capitalize()!r} line")
    return tuple(out)


class _VerbatimBlock(Block):
    """:meth:`Block.verbatim`: ``headers`` holds every line, ``Event`` first, as ``(name, rest)``."""

    def __init__(self, lines: Sequence[Tuple[str, str]]) -> None:
        checked = _verbatim_lines(lines, "verbatim block", "event")
        object.__setattr__(self, "name", checked[0][1].strip())
        object.__setattr__(self, "headers", checked)
        object.__setattr__(self, "with_action_id", True)

    def render(self, action_id: str) -> bytes:
        return render_verbatim(self.headers, action_id, False)


class _VerbatimResponse(Response):
    """:meth:`Response.verbatim`: ``headers`` holds every line, ``Response`` first, as ``(name, rest)``."""

    def __init__(self, lines: Sequence[Tuple[str, str]], blocks: Sequence[Block] = (),
                 completion: Optional[Block] = None) -> None:
        checked = _verbatim_lines(lines, "verbatim response", "response")
        blocks = tuple(blocks)
        for block in (*blocks, *((completion,) if completion is not None else ())):
            if not isinstance(block, Block):
                raise TypeError(f"response blocks must be Block records, got {block!r}")
        message = None
        for name, rest in checked[1:]:
            if ascii_lower(name) == "message":
                message = rest.strip()
                break
        fields = self.__dict__
        fields["status"] = checked[0][1].strip()
        fields["message"] = message
        fields["headers"] = checked
        fields["blocks"] = blocks
        fields["completion"] = completion
        fields["list_start"] = False
        fields["events_before_completion"] = False
        fields["close"] = False

    def render_head(self, action_id: str) -> bytes:
        return render_verbatim(self.headers, action_id, True)


#: One response as received: a non-blank ``Response`` line, then header lines (a token name, a
#: colon, no CR or LF in the rest), then the blank line. Each part has one way to match (the
#: status's leading blanks, then its first non-blank): linear in the bytes, whatever they hold.
_RAW_RESPONSE = re.compile(
    rb"(?i:response):[^\S\r\n]*[^\s][^\r\n]*\r\n"
    rb"(?:[^\s:](?:[^:\r\n]*[^\s:])?:[^\r\n]*\r\n)*\r\n"
)
_RAW_ACTION_ID = re.compile(rb"\r\n((?i:actionid)):[^\r\n]*")
_RAW_MESSAGE = re.compile(rb"\r\n(?i:message):([^\r\n]*)")


class _VerbatimBytesResponse(Response):
    """:meth:`Response.verbatim_bytes`: one message as received; only its ActionID line is rewritten."""

    def __init__(self, data: bytes) -> None:
        if data.__class__ is not bytes:
            raise TypeError(f"verbatim_bytes takes bytes, got {type(data).__name__}")
        if _RAW_RESPONSE.fullmatch(data) is None:
            raise ValueError("verbatim bytes must be one CRLF-framed message, 'Response' first, a header per line")
        first = data.find(b"\r\n")
        found = _RAW_ACTION_ID.search(data)
        message = _RAW_MESSAGE.search(data)
        fields = self.__dict__
        fields["status"] = decode(data[data.find(b":") + 1:first]).strip()
        fields["message"] = decode(message.group(1)).strip() if message is not None else None
        fields["headers"] = ()
        fields["blocks"] = ()
        fields["completion"] = None
        fields["list_start"] = False
        fields["events_before_completion"] = False
        fields["close"] = False
        # Where the first ActionID line is: (start of the line, end of its text, its name).
        fields["_raw"] = (data, first, found.start() + 2 if found else -1, found.end() if found else -1,
                          found.group(1) if found else b"")

    def render_head(self, action_id: str) -> bytes:
        data, first, start, end, name = self.__dict__["_raw"]
        if start < 0:
            if not action_id:
                return data
            return b"".join((data[:first], b"\r\nActionID: ", encode(clean(action_id)), data[first:]))
        if not action_id:
            return data[:start - 2] + data[end:]
        return b"".join((data[:start], name, b": ", encode(clean(action_id)), data[end:]))
