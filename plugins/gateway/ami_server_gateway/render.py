"""Upstream messages as ami-server's public records, so that they render as Asterisk sent them.

A forwarded reply is passed on byte for byte (``Response.verbatim`` and
``Block.verbatim``): its status token, every line with its own spacing, in
wire order, and the ActionID line where the upstream had it (right after
``Response:`` or ``Event:`` for most, last for ``Status`` and the queue
lists), the server putting the client's ActionID there (or leaving the line
out when the client sent none). Events keep their headers; the server
writes ``Event:`` and ``Privilege:`` from the event's classes, which give
the same text for every privilege list Asterisk writes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ami_server import Block, Event, Response, parse_event_mask

from .amiproto import Reply, UpMessage, raw_lines

__all__ = ["to_response", "to_event", "classes_of"]

_CLASS_CACHE: Dict[str, int] = {}
#: Classes of an upstream event whose Privilege line names none the server knows.
FALLBACK_CLASSES = "system"


def classes_of(privilege: Optional[str]) -> object:
    """The class mask of a ``Privilege:`` value (``call,all``); unknown -> ``system``."""
    if privilege is None:
        return FALLBACK_CLASSES
    mask = _CLASS_CACHE.get(privilege)
    if mask is None:
        names = ",".join(p.strip().lower() for p in privilege.split(",") if p.strip().lower() != "all")
        mask = (parse_event_mask(names) or 0) if names else 0
        if len(_CLASS_CACHE) < 1024:
            _CLASS_CACHE[privilege] = mask
    return mask or FALLBACK_CLASSES


def _with_client_id(pairs, client_action_id: str) -> List[Tuple[str, str]]:
    """The pairs with the first ActionID holding the client's value (removed when it had none)."""
    out = []
    done = False
    for name, value in pairs:
        if not done and name.lower() == "actionid":
            done = True
            if client_action_id:
                out.append(("ActionID", client_action_id))
            continue
        out.append((name, value))
    return out


def to_response(reply: Reply) -> Response:
    """The client's reply, as the upstream wrote it; the server puts the client's ActionID in."""
    head = raw_lines(reply.response)
    if reply.completion is None and not reply.items:
        return Response.verbatim(head)
    blocks = tuple(Block.verbatim(raw_lines(item)) for item in reply.items)
    completion = Block.verbatim(raw_lines(reply.completion)) if reply.completion is not None else None
    return Response.verbatim(head, blocks, completion)


def to_event(message: UpMessage, restored: Optional[str] = None, extra: Tuple[Tuple[str, str], ...] = ()) -> Event:
    """An upstream event to publish; ``restored`` replaces a gateway ActionID it quotes."""
    pairs = message.pairs
    privilege = None
    headers: List[Tuple[str, str]] = []
    for index in range(1, len(pairs)):
        name, value = pairs[index]
        if privilege is None and name == "Privilege":
            privilege = value
            continue
        headers.append((name, value))
    if restored is not None:
        headers = _with_client_id(headers, restored)
    if extra:
        headers.extend(extra)
    return Event(pairs[0][1], classes_of(privilege), tuple(headers))
