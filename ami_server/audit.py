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
from typing import Any, Callable, Dict, Iterable, List, Optional, TextIO, Tuple

import structlog

__all__ = [
    "AuditFields", "AuditLogger", "RecordKind", "LogSink", "StreamSink", "MemorySink", "make_audit_logger", "make_logger", "Redactor", "REDACTED",
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
    #: Up to this many secrets, :meth:`suspicious` looks for each with ``in``.
    FEW_SECRETS = 16

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self._known: frozenset = frozenset()
        #: Counts changes of the secrets: text scrubbed under an older generation is stale.
        self.generation = 0
        self._short: Optional[re.Pattern] = None
        self.set_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Redact these too; secrets already known stay redacted (a reload never forgets one)."""
        self.set_secrets([*self._known, *secrets])

    def set_secrets(self, secrets: Iterable[str]) -> None:
        self.generation += 1
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
        # A few secrets are looked for with ``in``; many, with one regex scan.
        self._many = (
            re.compile("|".join(map(re.escape, self._secrets))).search
            if len(self._secrets) > self.FEW_SECRETS else None
        )

    def suspicious(self, value: str) -> bool:
        """Whether ``value`` needs scrubbing: it holds a secret, a short secret or a "secret"/"key" hint.

        Most values need none, so this is the cheap test in front of
        :meth:`_scrub_text` (a regex alternation costs several times more).
        """
        lowered = value.lower()
        if "secret" in lowered or "key" in lowered:
            return True
        if self._many is not None:
            if self._many(value) is not None:
                return True
        else:
            for secret in self._secrets:
                if secret in value:
                    return True
        return self._short is not None and self._short.search(value) is not None

    def _scrub_text(self, value: str) -> str:
        """Replace secrets in a text that :meth:`suspicious` found something in."""
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
            return self._scrub_text(value) if self.suspicious(value) else value
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
        suspicious = self.suspicious
        for name in event_dict.keys() - trusted if trusted else list(event_dict):
            value = event_dict[name]
            if name.lower() in SENSITIVE_KEYS:
                event_dict[name] = REDACTED
            elif value.__class__ is str:
                if suspicious(value):
                    event_dict[name] = self._scrub_text(value)
            elif value.__class__ is not bool and value.__class__ is not int:
                event_dict[name] = self._scrub(value)
        return event_dict


def _json_encoder() -> Callable[[Any], str]:
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


def _json_lines() -> Callable[[Any, str, dict], str]:
    """The final processor: one JSON object per line."""
    encode = _json_encoder()
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


class _JsonAuditLines:
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

    def __init__(self, context: Dict[str, Any], redactor: Redactor, stamp: _LevelTimeAndException) -> None:
        self._context = context
        self._redactor = redactor
        self._stamp = stamp
        self._encode = _json_encoder()
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


class AuditLogger(structlog.BoundLoggerBase):
    """The audit trail's logger: :meth:`record` runs the processor chain on a dict of fields.

    Audit records are written at level ``info``; with a higher ``[logging]
    level`` they are dropped, like any info record. JSON records are rendered
    from cached parts where that gives the same line (:class:`_JsonAuditLines`).
    """

    enabled = True
    _json: Optional[_JsonAuditLines] = None
    _redactor: Optional[Redactor] = None

    def record(self, event: str, fields: Dict[str, Any], about: Optional[AuditFields] = None) -> None:
        """Write one record: the bound context, ``about``, ``fields``, then ``event``.

        ``fields`` may be consumed.
        """
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

    def _through_chain(self, event: str, fields: Dict[str, Any], about: Optional[AuditFields]) -> None:
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
    redactor = redactor or Redactor()
    processors = _processors(fmt, redactor)
    audit = AuditLogger(sink, processors, {"audit": True})
    audit.enabled = _LEVELS[level] <= logging.INFO
    audit._redactor = redactor
    if fmt != "console":
        audit._json = _JsonAuditLines(audit._context, redactor, processors[0])
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
