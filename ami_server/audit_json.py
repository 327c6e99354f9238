"""The audit trail's fast path: JSON lines rendered from compiled record shapes.

A separate module because it is an optimisation with its own invariant: every
line it writes equals, byte for byte, the line the structlog processor chain
of :mod:`ami_server.audit` would write for the same record (tests compare
them). The server writes one ``ActionExecuted`` per answered action, so this
is on the hot path; anything unusual returns ``None`` and takes the chain.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple

from .redaction import REDACTED, SENSITIVE_KEYS, TRUSTED_FIELDS_KEY, Redactor

__all__ = ["AuditFields", "RecordKind", "JsonAuditLines", "json_encoder"]


class Clock(Protocol):
    """What the writer needs of the chain's timestamp processor: the current timestamp text."""

    def timestamp(self) -> str: ...


def json_encoder() -> Callable[[Any], str]:
    """One JSON text from a value, non-JSON values as ``str()``.

    The encoder is built once (``json.dumps`` builds one per call, a third of
    the cost of a short record).
    """
    encoder = json.JSONEncoder(default=str)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - a Python without the C accelerator
        return encoder.encode
    fast = make(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    join = "".join
    return lambda value: join(fast(value, 0))


class AuditFields(dict):
    """Fields that many audit records repeat (who a session is), with the names among them to trust.

    These fields are scrubbed by their own ``trusted`` names, whatever the
    record they join, so the JSON audit trail renders them once (per set of
    secrets), not once per record. Treat one as frozen once it was logged: a
    change makes a new one.
    """

    __slots__ = ("trusted", "rendered")

    def __init__(self, fields: Any = (), trusted: Iterable[str] = ()) -> None:
        super().__init__(fields)
        self.trusted = frozenset(trusted)
        #: (redactor generation, JSON members without braces), made on first use.
        self.rendered: Optional[Tuple[int, str]] = None


#: Fields the renderer adds to every record; a record that brings its own takes the processor chain.
_ADDED_FIELDS = ("event", "level", "timestamp", "exc_info")

_escape = json.encoder.encode_basestring_ascii
_INFINITIES = (float("inf"), float("-inf"))


class RecordKind:
    """An audit record written often: its event, field names and trusted names, declared once.

    :meth:`AuditLogger.write` takes the values in the order of ``names``; no
    dict is built per record, and the JSON trail finds the compiled template
    by this object. Trusted fields are written as they are; all others are
    scrubbed (A-3.16).
    """

    __slots__ = ("event", "names", "trusted")

    def __init__(self, event: str, names: Iterable[str], trusted: Iterable[str]) -> None:
        self.event = event
        self.names: Tuple[str, ...] = tuple(names)
        self.trusted = frozenset(trusted)

    def fields(self, values: Iterable[Any]) -> Dict[str, Any]:
        """The record as a dict of fields, as :meth:`AuditLogger.record` takes it."""
        fields = dict(zip(self.names, values))
        fields[TRUSTED_FIELDS_KEY] = self.trusted
        return fields


class _Shape:
    """A compiled record shape: one ``%`` template with the rendered names, context and event."""

    __slots__ = ("template", "untrusted", "timestamp_untrusted", "names", "generation")

    def __init__(
        self, template: str, untrusted: Tuple[int, ...], timestamp_untrusted: bool,
        names: Tuple[str, ...], generation: int,
    ) -> None:
        self.template = template
        #: Per field, in order: 0 trusted, 1 scrubbed, 2 a sensitive name (always redacted).
        self.untrusted = untrusted
        self.timestamp_untrusted = timestamp_untrusted
        self.names = names
        #: The redactor generation it was compiled under (names and event are scrubbed into it).
        self.generation = generation


class JsonAuditLines:
    """Renders audit records as the JSON processor chain would, from cached parts.

    Server records come in a few shapes (event, field names, trusted names);
    each shape is compiled once into a template holding the rendered names,
    the bound context and the event, and each :class:`AuditFields` is
    rendered once per set of secrets. What is left per record is
    scrubbing and escaping its values. The line equals the chain's byte for
    byte (a test compares them); anything unusual goes to the chain.
    """

    #: Shapes kept; the server writes a few dozen.
    SHAPES_KEPT = 256

    def __init__(self, context: Dict[str, Any], redactor: Redactor, stamp: Clock) -> None:
        self._context = context
        self._redactor = redactor
        self._stamp = stamp
        self._encode = json_encoder()
        self._shapes: Dict[Any, Tuple[int, Optional[_Shape]]] = {}

    def _members(self, fields: Dict[str, Any], trusted: Any) -> str:
        """Scrubbed JSON members of ``fields`` (no braces); ``fields`` is consumed."""
        fields[TRUSTED_FIELDS_KEY] = trusted
        return self._encode(self._redactor(None, "info", fields))[1:-1]

    def _compile(self, event: str, names: Tuple[str, ...], trusted: Any, with_about: bool) -> Optional[_Shape]:
        context = self._context
        for name in names:
            if name.__class__ is not str or name in context or name in _ADDED_FIELDS:
                return None
        for name in _ADDED_FIELDS:
            if name in context:
                return None
        parts = []
        if context:
            parts.append(self._members(dict(context), trusted).replace("%", "%%"))
        if with_about:
            parts.append("%s")
        untrusted = []
        for name in names:
            parts.append(_escape(name).replace("%", "%%") + ": %s")
            if name in trusted:
                untrusted.append(0)
            else:
                untrusted.append(2 if name.lower() in SENSITIVE_KEYS else 1)
        event_text = self._members({"event": event}, trusted).replace("%", "%%")
        level_text = self._members({"level": "info"}, trusted).replace("%", "%%")
        parts.extend((event_text, level_text, '"timestamp": %s'))
        return _Shape(
            "{" + ", ".join(parts) + "}", tuple(untrusted), "timestamp" not in trusted,
            names, self._redactor.generation,
        )

    def _shape(self, key: Any, event: str, names: Tuple[str, ...], trusted: Any, with_about: bool) -> Optional[_Shape]:
        """The compiled shape under ``key`` (``None``: the chain renders such records)."""
        shapes = self._shapes
        entry = shapes.get(key)
        generation = self._redactor.generation
        if entry is None or entry[0] != generation:
            if entry is None and len(shapes) >= self.SHAPES_KEPT:
                shapes.clear()
            entry = shapes[key] = (generation, self._compile(event, names, trusted, with_about))
        return entry[1]

    def __call__(self, event: str, fields: Dict[str, Any], about: Optional[AuditFields]) -> Optional[str]:
        """The line for a record given as a dict, or ``None`` where only the chain renders it."""
        trusted = fields.pop(TRUSTED_FIELDS_KEY, ())
        if trusted.__class__ is not frozenset and trusted.__class__ is not tuple:
            trusted = frozenset(trusted)
        names = tuple(fields)
        with_about = bool(about)
        shape = self._shape((event, names, trusted, with_about), event, names, trusted, with_about)
        line = None if shape is None else self.render(shape, about, fields.values())
        if line is None:
            fields[TRUSTED_FIELDS_KEY] = trusted
        return line

    def write(self, kind: RecordKind, about: Optional[AuditFields], values: Any) -> Optional[str]:
        """The line for a record of ``kind``, or ``None`` where only the chain renders it."""
        with_about = bool(about)
        shape = self._shape((kind, with_about), kind.event, kind.names, kind.trusted, with_about)
        return None if shape is None else self.render(shape, about, values)

    def render(self, shape: _Shape, about: Optional[AuditFields], values: Iterable[Any]) -> Optional[str]:
        redactor = self._redactor
        out: List[str] = []
        append = out.append
        if about:
            if not about.keys().isdisjoint(shape.names) or not about.keys().isdisjoint(self._context):
                return None
            cached = about.rendered
            if cached is None or cached[0] != shape.generation:
                cached = about.rendered = (shape.generation, self._members(dict(about), about.trusted))
            append(cached[1])
        scrub = redactor._scrub
        for value, untrusted in zip(values, shape.untrusted):
            if untrusted:
                value = REDACTED if untrusted == 2 else scrub(value)
            kind = value.__class__
            if kind is str:
                append(_escape(value))
            elif value is None:
                append("null")
            elif value is True:
                append("true")
            elif value is False:
                append("false")
            elif kind is int:
                append(int.__repr__(value))
            elif kind is float and value == value and value not in _INFINITIES:
                append(float.__repr__(value))
            else:
                append(self._encode(value))
        stamp = self._stamp.timestamp()
        append(_escape(scrub(stamp) if shape.timestamp_untrusted else stamp))
        return shape.template % tuple(out)
