"""Structured logs and audit records (structlog), with secrets scrubbed: the public face.

Each server instance builds its own logger (no global structlog
configuration), so tests and embedded servers never interfere. This module
assembles them -- the processor chain (level, timestamp, redaction,
renderer) and the audit trail's logger -- from parts that each have one
concern:

- :mod:`ami_server.log_sinks`: where lines go (a writer thread, memory);
- :mod:`ami_server.redaction`: what counts as a secret and how it is scrubbed;
- :mod:`ami_server.audit_json`: the audit trail's cached JSON rendering.

The names the server and plugins use are re-exported here, so callers import
from ``ami_server.audit`` only.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO

import structlog

from .audit_json import AuditFields, JsonAuditLines, RecordKind, json_encoder
from .log_sinks import FileSink, LogSink, MemorySink, StreamSink
from .redaction import REDACTED, SENSITIVE_KEYS, TRUSTED_FIELDS_KEY, Redactor

__all__ = [
    "AuditFields", "AuditLogger", "RecordKind", "LogSink", "StreamSink", "FileSink", "MemorySink", "make_audit_logger",
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


def _json_lines() -> Callable[[Any, str, dict], str]:
    """The final processor: one JSON object per line."""
    encode = json_encoder()
    return lambda logger, method, event_dict: encode(event_dict)


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


class AuditLogger(structlog.BoundLoggerBase):
    """The audit trail's logger: :meth:`record` runs the processor chain on a dict of fields.

    Audit records are written at level ``info``; with a higher ``[logging]
    level`` they are dropped, like any info record. JSON records are rendered
    from cached parts where that gives the same line (:class:`JsonAuditLines`).
    """

    enabled = True
    #: The configured level's number: records above info (faults) are written unless it is higher.
    threshold = logging.INFO
    _json: Optional[JsonAuditLines] = None
    _redactor: Optional[Redactor] = None

    def record(self, event: str, fields: Dict[str, Any], about: Optional[AuditFields] = None,
               level: str = "info") -> None:
        """Write one record: the bound context, ``about``, ``fields``, then ``event``.

        ``fields`` may be consumed. ``level`` ``warning`` or ``error`` marks a
        fault (a failing backend): written unless ``[logging] level`` is higher.
        """
        if level != "info":
            if _LEVELS[level] >= self.threshold:
                self._through_chain(event, fields, about, level)
            return
        if not self.enabled:
            return
        if self._json is not None:
            line = self._json(event, fields, about)
            if line is not None:
                self._logger.info(line)
                return
        self._through_chain(event, fields, about)

    def write(self, kind: RecordKind, about: Optional[AuditFields], values: Any) -> None:
        """Write a record of ``kind``: ``about``, then ``values`` in the order of ``kind.names``."""
        if not self.enabled:
            return
        if self._json is not None:
            line = self._json.write(kind, about, values)
            if line is not None:
                self._logger.info(line)
                return
        self._through_chain(kind.event, kind.fields(values), about)

    def _through_chain(self, event: str, fields: Dict[str, Any], about: Optional[AuditFields],
                       method: str = "info") -> None:
        redactor = self._redactor
        if about and redactor is not None:
            # ``about`` is scrubbed by its own trusted names; a field of the record
            # with the same name replaces it and is scrubbed by the record's.
            shown = redactor(None, "info", {**about, TRUSTED_FIELDS_KEY: about.trusted})
            for name in fields.keys() & shown.keys():
                del shown[name]
            fields[TRUSTED_FIELDS_KEY] = frozenset(fields.get(TRUSTED_FIELDS_KEY, ())) | shown.keys()
            event_dict: Any = {**self._context, **shown, **fields}
        else:
            event_dict = {**self._context, **about, **fields} if about else {**self._context, **fields}
        event_dict["event"] = event
        logger = self._logger
        try:
            for processor in self._processors:
                event_dict = processor(logger, method, event_dict)
        except structlog.DropEvent:
            return
        logger.info(event_dict)


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
    audit = AuditLogger(sink, processors, {"audit": True, **(context or {})})
    audit.enabled = _LEVELS[level] <= logging.INFO
    audit.threshold = _LEVELS[level]
    audit._redactor = redactor
    if fmt != "console":
        audit._json = JsonAuditLines(audit._context, redactor, processors[0])
    return audit


def _processors(fmt: str, redactor: Redactor) -> List[Callable[..., Any]]:
    renderer: Callable[..., Any]
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = _json_lines()
    return [_LevelTimeAndException(), redactor, renderer]


def default_format(fmt: str, stream: TextIO = sys.stderr) -> str:
    """Resolve ``auto``: readable lines on a terminal, JSON lines otherwise."""
    if fmt != "auto":
        return fmt
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"
