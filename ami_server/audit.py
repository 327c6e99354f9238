"""Structured logs and audit records (structlog), with secrets scrubbed.

Each server instance builds its own logger (no global structlog
configuration), so tests and embedded servers never interfere. Lines are
handed to a writer thread through a bounded queue: the event loop never waits
for a disk or a terminal, and a stuck sink costs dropped lines, not latency.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, TextIO

import structlog

__all__ = [
    "AuditLogger", "LogSink", "StreamSink", "MemorySink", "make_audit_logger", "make_logger", "Redactor", "REDACTED",
]

REDACTED = "[redacted]"
#: Field names whose values are never logged, whatever they hold (A-3.16, D-8.8).
SENSITIVE_KEYS = frozenset(
    {"secret", "key", "secret_hash", "password", "expected_response", "expectedresponse", "credentials"}
)

# "Secret: x", "key=x", "'Key': 'x'" inside free text (a logged request line, a repr).
_INLINE_SECRET_RE = re.compile(
    r"""(?i)((?:secret|key|secret_hash)['"]?\s*[:=]\s*['"]?)[^\s'",}\])]+"""
)

#: Method name -> level written in the record (as structlog's add_log_level names them).
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogSink:
    """Receives rendered log lines; subclasses decide where they go."""

    def write_line(self, line: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the sink."""

    # structlog calls the wrapped logger's method named after the level.
    def msg(self, line: str) -> None:
        self.write_line(line)

    debug = info = warning = warn = error = critical = exception = msg


class StreamSink(LogSink):
    """Writes lines to a text stream from a background thread through a bounded buffer.

    The event loop only appends to a deque (no lock on the common path); the
    writer thread takes everything queued at once and writes it in one call,
    so a burst of records costs one write and one flush. After a wake-up the
    writer lets lines gather for ``BATCH_SECONDS``: a thread woken for every
    record would compete with the event loop for the interpreter lock.
    """

    #: How long the writer lets lines gather before writing them.
    BATCH_SECONDS = 0.02

    def __init__(self, stream: TextIO, capacity: int = 10000, owns_stream: bool = False) -> None:
        self._stream = stream
        self._owns = owns_stream
        self._capacity = capacity
        self._lines: "collections.deque[str]" = collections.deque()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._closing = False
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ami-server-log", daemon=True)
        self._thread.start()

    def write_line(self, line: str) -> None:
        if len(self._lines) >= self._capacity:
            with self._lock:
                self._dropped += 1
            return
        self._lines.append(line)
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        lines = self._lines
        while True:
            self._wake.wait()
            self._closed.wait(self.BATCH_SECONDS)
            self._wake.clear()
            batch = []
            while lines:
                batch.append(lines.popleft())
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            try:
                if dropped:
                    self._stream.write(f'{{"event": "LogLinesDropped", "count": {dropped}}}\n')
                if batch:
                    self._stream.write("\n".join(batch) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                # The stream failed (full disk, closed): count the loss, keep serving.
                with self._lock:
                    self._dropped += len(batch)
            if self._closing and not lines:
                return

    def close(self) -> None:
        self._closing = True
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            self._stream.flush()
            if self._owns:
                self._stream.close()
        except (OSError, ValueError):
            pass


class MemorySink(LogSink):
    """Keeps lines in a list (tests, embedding); thread-safe."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def records(self, event: Optional[str] = None) -> List[dict]:
        """The JSON records written so far (lines that are not JSON are skipped), or those named ``event``."""
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (event is None or record.get("event") == event):
                out.append(record)
        return out


#: A record field naming the other fields of that record that need no scrubbing.
TRUSTED_FIELDS_KEY = "_trusted_fields"


class Redactor:
    """A structlog processor that removes secrets from every record.

    Values of sensitive field names are replaced, and any configured secret
    that appears inside another value is replaced too, so that a plugin that
    logs a whole request cannot leak one. A secret shorter than
    ``WHOLE_WORD_BELOW`` characters is replaced only where it stands alone
    (not inside a longer word), or a secret like ``x`` would mangle every
    record that contains the letter.
    """

    WHOLE_WORD_BELOW = 4

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self._known: frozenset = frozenset()
        self._short: Optional[re.Pattern] = None
        self.set_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Redact these too; secrets already known stay redacted (a reload never forgets one)."""
        self.set_secrets([*self._known, *secrets])

    def set_secrets(self, secrets: Iterable[str]) -> None:
        unique = {s for s in secrets if s}
        self._known = frozenset(unique)
        # Longest first so that a secret containing another is replaced whole.
        self._secrets = tuple(
            sorted((s for s in unique if len(s) >= self.WHOLE_WORD_BELOW), key=len, reverse=True)
        )
        short = sorted((s for s in unique if len(s) < self.WHOLE_WORD_BELOW), key=len, reverse=True)
        self._short = (
            re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, short)) + r")(?![A-Za-z0-9])")
            if short else None
        )
        # One scan tells whether a text needs any work: a secret, a short
        # secret or a "secret"/"key" hint; most values need none.
        alternatives = [re.escape(s) for s in self._secrets]
        if self._short is not None:
            alternatives.append(self._short.pattern)
        alternatives.append(r"(?i:secret|key)")
        self._suspect = re.compile("|".join(alternatives)).search

    def _scrub_text(self, value: str) -> str:
        """Replace secrets in a text that :attr:`_suspect` found something in."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if self._short is not None:
            value = self._short.sub(REDACTED, value)
        lowered = value.lower()
        if "secret" in lowered or "key" in lowered:
            value = _INLINE_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, value)
        return value

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):  # str subclasses (e.g. str enums) too
            return value if self._suspect(value) is None else self._scrub_text(value)
        if value is None or value.__class__ in (int, float, bool):
            return value
        if isinstance(value, dict):
            return {
                k: (REDACTED if str(k).lower() in SENSITIVE_KEYS else self._scrub(v))
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            if len(value) == 2 and isinstance(value[0], str) and value[0].lower() in SENSITIVE_KEYS:
                return type(value)((value[0], REDACTED))  # a (name, value) header pair
            return type(value)(self._scrub(v) for v in value)
        return value

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        # Audit records mark the fields the server itself produced (addresses,
        # ids, counters); everything else -- above all what a client typed --
        # is scrubbed.
        trusted = event_dict.pop(TRUSTED_FIELDS_KEY, ())
        suspect = self._suspect
        for name in event_dict.keys() - trusted if trusted else list(event_dict):
            value = event_dict[name]
            if name.lower() in SENSITIVE_KEYS:
                event_dict[name] = REDACTED
            elif value.__class__ is str:
                if suspect(value) is not None:
                    event_dict[name] = self._scrub_text(value)
            elif value.__class__ is not bool and value.__class__ is not int:
                event_dict[name] = self._scrub(value)
        return event_dict


def _json_lines() -> Callable[[Any, str, dict], str]:
    """The final processor: one JSON object per line, non-JSON values as ``str()``.

    The encoder is built once (``json.dumps`` builds one per call, a third of
    the cost of a short record).
    """
    encoder = json.JSONEncoder(default=str)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - a Python without the C accelerator
        return lambda logger, method, event_dict: encoder.encode(event_dict)
    fast = make(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    join = "".join
    return lambda logger, method, event_dict: join(fast(event_dict, 0))


class _LevelTimeAndException:
    """Adds ``level`` and ``timestamp`` (UTC, ISO 8601, milliseconds) and renders ``exc_info``.

    One processor for three steps that every record takes; the date part of
    the timestamp is formatted once a second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        event_dict["level"] = _LEVEL_NAMES.get(method, method)
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1000):03d}+00:00"
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
        return event_dict


class AuditLogger(structlog.BoundLoggerBase):
    """The audit trail's logger: :meth:`record` runs the processor chain on a dict of fields.

    Audit records are written at level ``info``; with a higher ``[logging]
    level`` they are dropped, like any info record.
    """

    enabled = True

    def record(self, event: str, fields: Dict[str, Any]) -> None:
        """Write one record: the bound context, ``fields``, then ``event``, through the chain.

        The chain ends in a renderer (a string); ``fields`` may be consumed.
        """
        if not self.enabled:
            return
        event_dict: Any = {**self._context, **fields}
        event_dict["event"] = event
        logger = self._logger
        try:
            for processor in self._processors:
                event_dict = processor(logger, "info", event_dict)
        except structlog.DropEvent:
            return
        logger.info(event_dict)


def make_logger(sink: LogSink, level: str = "info", fmt: str = "json", redactor: Optional[Redactor] = None) -> Any:
    """Build this server's bound logger: level filter, timestamp, redaction, renderer.

    ``fmt`` is ``json`` (one JSON object per line) or ``console`` (readable,
    for a terminal). Exceptions are rendered into the record, then scrubbed.
    """
    return structlog.wrap_logger(
        sink,
        processors=_processors(fmt, redactor or Redactor()),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    ).bind()


def make_audit_logger(
    sink: LogSink, level: str = "info", fmt: str = "json", redactor: Optional[Redactor] = None
) -> AuditLogger:
    """The audit trail beside :func:`make_logger`'s logger: same sink, chain and redactor; records marked ``audit``."""
    audit = AuditLogger(sink, _processors(fmt, redactor or Redactor()), {"audit": True})
    audit.enabled = _LEVELS[level] <= logging.INFO
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
