"""Upstream messages as ami-server's public records, so that they render as Asterisk sent them.

A forwarded ``Response`` keeps every header in wire order (the server writes
``Response:`` and the client's ``ActionID`` first, as Asterisk does); list
items and completions become :class:`Block` records whose ActionID line is
put back where the upstream had it (right after ``Event:`` for most lists,
last for ``Status`` and the queue lists), carrying the client's ActionID or
nothing. Events keep their headers; the server writes ``Event:`` and
``Privilege:`` from the event's classes, which give the same text for every
privilege list Asterisk writes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ami_server import Block, Event, Response, parse_event_mask

from .amiproto import Reply, UpMessage

__all__ = ["to_response", "to_event", "classes_of"]

_STATUS = {"success": "Success", "error": "Error", "goodbye": "Goodbye"}
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


def _block(message: UpMessage, client_action_id: str) -> Block:
    pairs = message.pairs
    return Block(pairs[0][1] or "Event", tuple(_with_client_id(pairs[1:], client_action_id)), with_action_id=False)


def to_response(reply: Reply, client_action_id: str) -> Response:
    """The client's reply: the upstream's response, items and completion, with its own ActionID."""
    pairs = reply.response.pairs
    status = _STATUS.get(pairs[0][1].strip().lower(), "Success")
    headers = []
    seen_id = False
    for name, value in pairs[1:]:
        if not seen_id and name.lower() == "actionid":
            seen_id = True  # the server writes the client's own, right after Response:
            continue
        headers.append((name, value))
    if reply.completion is None and not reply.items:
        return Response(status, None, tuple(headers))
    blocks = tuple(_block(item, client_action_id) for item in reply.items)
    completion = _block(reply.completion, client_action_id) if reply.completion is not None else None
    return Response(status, None, tuple(headers), blocks, completion)


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
