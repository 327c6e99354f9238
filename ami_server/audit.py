"""Structured logs and audit records (structlog), with secrets scrubbed: the public face.

Each server instance builds its own logger (no global structlog
configuration), so tests and embedded servers never interfere. This module
assembles them -- the processor chain (level, timestamp, redaction,
structlog's ``JSONRenderer`` with orjson) and the audit trail's logger --
from parts that each have one concern:

- :mod:`ami_server.log_sinks`: where lines go (a writer thread, memory);
- :mod:`ami_server.redaction`: what counts as a secret and how it is scrubbed.

The names the server and plugins use are re-exported here, so callers import
from ``ami_server.audit`` only.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, TextIO, Tuple

import orjson
import structlog

from .log_sinks import FileSink, LogSink, MemorySink, StreamSink
from .redaction import REDACTED, SENSITIVE_KEYS, TRUSTED_FIELDS_KEY, Redactor

__all__ = [
    "AuditFields", "AuditLogger", "LogSink", "StreamSink", "FileSink", "MemorySink", "make_audit_logger",
    "make_logger", "Redactor", "REDACTED", "SENSITIVE_KEYS", "TRUSTED_FIELDS_KEY", "default_format",
]

#: Method name -> level written in the record (as structlog's add_log_level names them).
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


#: Dataclasses and datetimes go to ``default`` (``str``), as :mod:`json` writes them.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _json_line(value: Any) -> bytes:
    """What orjson refuses -- a lone surrogate (undecodable bytes a client sent, P-1.22), an
    integer past 64 bits, a dict key that is no string -- written by :mod:`json`, non-ASCII
    escaped, so a record is never lost to its encoding. A float that is not finite is written
    ``null``, as orjson writes it (``NaN`` is no JSON)."""
    try:
        return json.dumps(value, default=str, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(value), default=str, separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _dumps(value: Any, default: Callable[[Any], Any] = str) -> bytes:
    """The log's serializer: orjson, or :func:`_json_line` for what orjson refuses (never raises)."""
    try:
        return orjson.dumps(value, default=default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return _json_line(value)


class _LevelTimeAndException:
    """Adds ``level`` and ``timestamp`` (UTC, ISO 8601, milliseconds) and renders ``exc_info``.

    One processor for three steps that every record takes; the date part of
    the timestamp is formatted once a second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._millisecond = -1
        self._last = ""

    def timestamp(self) -> str:
        """Now, as the records show it; records written within one millisecond share the text."""
        millisecond = time.time_ns() // 1_000_000
        if millisecond == self._millisecond:
            return self._last
        second, fraction = divmod(millisecond, 1000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        self._millisecond = millisecond
        self._last = f"{self._prefix}.{fraction:03d}+00:00"
        return self._last

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        event_dict["level"] = _LEVEL_NAMES.get(method, method)
        event_dict["timestamp"] = self.timestamp()
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
        return event_dict


class _Head:
    """What every record of one logger about one session starts with: scrubbed once, rendered once.

    The bound context (trusting nothing) and an :class:`AuditFields`
    (trusting its own names), scrubbed under one generation of secrets. The
    JSON renderer writes a record as this ``prefix`` and the record's own
    fields: orjson renders ``{**a, **b}`` as ``a``'s text without its ``}``,
    a comma, and ``b``'s without its ``{`` (a test holds the two to it).
    """

    __slots__ = ("generation", "context", "fields", "prefix")

    def __init__(self, redactor: Redactor, context: Dict[str, Any], about: Optional["AuditFields"],
                 render: Callable[..., Any]) -> None:
        self.generation = redactor.generation
        self.context = context
        fields = redactor(None, "info", dict(context))
        if about:
            fields.update(redactor(None, "info", {**about, TRUSTED_FIELDS_KEY: about.trusted}))
        self.fields = fields
        try:
            rendered = render(None, "info", fields)
        except TypeError:  # orjson refuses a value (a lone surrogate): such records take the slow path
            rendered = None
        #: ``{`` and the fields rendered, each followed by a comma; None: render whole records.
        self.prefix: Optional[bytes] = None
        if rendered.__class__ is bytes:
            self.prefix = rendered[:-1] + b"," if fields else b"{"


class AuditFields(dict):
    """Fields that many audit records repeat (who a session is), with the names among them to trust.

    These fields are scrubbed by their own ``trusted`` names, whatever the
    record they join; scrubbed and rendered behind the logger's bound
    context, they are kept per set of secrets, so a session's fields are
    scrubbed and rendered once, not once per record. Treat one as frozen
    once it was logged: a change makes a new one.
    """

    __slots__ = ("trusted", "head")

    def __init__(self, fields: Any = (), trusted: Iterable[str] = ()) -> None:
        super().__init__(fields)
        self.trusted = frozenset(trusted)
        #: This and a logger's context, made ready for records on first use (AuditLogger.record).
        self.head: Optional[_Head] = None


#: The names the logger adds to every record after the fields.
_STAMPED = frozenset({"level", "timestamp"})
_NOTHING: FrozenSet[str] = frozenset()


class AuditLogger(structlog.BoundLoggerBase):
    """The audit trail's logger: :meth:`record` writes a dict of fields through the processors.

    Audit records are written at level ``info``; with a higher ``[logging]
    level`` they are dropped, like any info record. The processors are the
    chain of :func:`make_logger` -- level and timestamp, the redactor,
    structlog's ``JSONRenderer`` with orjson -- applied so that what every
    record repeats costs once: the redactor and the renderer see only the
    record's own fields; the bound context and the session's
    :class:`AuditFields` come scrubbed and rendered from a :class:`_Head`.
    """

    enabled = True
    #: The configured level's number: records above info (faults) are written unless it is higher.
    threshold = logging.INFO
    _redactor: Redactor
    _stamp: "_LevelTimeAndException"
    _render: Callable[..., Any]
    _head: Optional[_Head] = None

    def __init__(self, logger: Any, processors: Any, context: Any) -> None:
        super().__init__(logger, processors, context)
        # The chain of make_logger: what record() runs apart, in order.
        self._stamp, self._redactor, self._render = processors

    def bind(self, **new_values: Any) -> "AuditLogger":
        """A logger with more context (``unbind`` and ``new`` come here too), at the same level."""
        bound = super().bind(**new_values)
        bound.enabled, bound.threshold = self.enabled, self.threshold
        return bound

    def record(self, event: str, fields: Dict[str, Any], about: Optional[AuditFields] = None,
               level: str = "info") -> None:
        """Write one record: the bound context, ``about``, ``fields``, then ``event``.

        ``fields`` is consumed; its ``TRUSTED_FIELDS_KEY`` names the fields
        written as they are, all others are scrubbed (and ``about``'s by its
        own trusted names). ``level`` ``warning`` or ``error`` marks a fault
        (a failing backend): written unless ``[logging] level`` is higher.
        """
        if level == "info":
            if not self.enabled:
                return
        elif _LEVELS[level] < self.threshold:
            return
        redactor = self._redactor
        trusted = fields.get(TRUSTED_FIELDS_KEY, _NOTHING)
        fields["event"] = event
        exc_info = fields.pop("exc_info", None)
        fields = redactor(None, level, fields)
        # As the chain's first processor adds them (the level is named as the method is).
        fields["level"] = level
        fields["timestamp"] = self._stamp.timestamp()
        if exc_info is not None:
            fields["exc_info"] = exc_info
            fields = structlog.processors.format_exc_info(None, level, fields)
            if "exception" not in trusted:
                fields["exception"] = redactor._scrub(fields["exception"])
        if not _STAMPED.issubset(trusted):
            for name in _STAMPED.difference(trusted):
                fields[name] = redactor._scrub(fields[name])
        head = about.head if about else self._head
        if head is None or head.generation != redactor.generation or head.context is not self._context:
            head = _Head(redactor, self._context, about, self._render)
            if about:
                about.head = head
            else:
                self._head = head
        self._logger.info(self._line(head, fields, level))

    def _line(self, head: _Head, fields: Dict[str, Any], level: str) -> Any:
        """The record's line: ``head`` and ``fields`` (a field named like one of ``head`` replaces it)."""
        if head.prefix is not None and head.fields.keys().isdisjoint(fields):
            try:
                return head.prefix + self._render(None, level, fields)[1:]
            except TypeError:
                pass
        event_dict = {name: value for name, value in head.fields.items() if name not in fields}
        event_dict.update(fields)
        try:
            return self._render(None, level, event_dict)
        except TypeError:  # orjson refuses a value: the json module writes it
            return _json_line(event_dict)


def make_logger(
    sink: LogSink, level: str = "info", fmt: str = "json", redactor: Optional[Redactor] = None,
    context: Optional[Dict[str, Any]] = None,
) -> Any:
    """Build this server's bound logger: level filter, timestamp, redaction, renderer.

    ``fmt`` is ``json`` (one JSON object per line) or ``console`` (readable,
    for a terminal). Exceptions are rendered into the record, then scrubbed.
    ``context`` is in every record (``worker`` when several processes share
    one log file).
    """
    return structlog.wrap_logger(
        sink,
        processors=_processors(fmt, redactor or Redactor()),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    ).bind(**(context or {}))


def make_audit_logger(
    sink: LogSink, level: str = "info", fmt: str = "json", redactor: Optional[Redactor] = None,
    context: Optional[Dict[str, Any]] = None,
) -> AuditLogger:
    """The audit trail beside :func:`make_logger`'s logger: same sink, chain and redactor; records marked ``audit``."""
    redactor = redactor or Redactor()
    processors = _processors(fmt, redactor)
    if fmt != "console":
        # orjson itself (raising what it refuses, which AuditLogger catches): the structlog docs' setup.
        processors[-1] = structlog.processors.JSONRenderer(serializer=orjson.dumps, default=str,
                                                           option=_ORJSON_OPTIONS)
    audit = AuditLogger(sink, processors, {"audit": True, **(context or {})})
    audit.enabled = _LEVELS[level] <= logging.INFO
    audit.threshold = _LEVELS[level]
    return audit


def _processors(fmt: str, redactor: Redactor) -> List[Callable[..., Any]]:
    renderer: Callable[..., Any]
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps, default=str)
    return [_LevelTimeAndException(), redactor, renderer]


def default_format(fmt: str, stream: TextIO = sys.stderr) -> str:
    """Resolve ``auto``: readable lines on a terminal, JSON lines otherwise."""
    if fmt != "auto":
        return fmt
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"
