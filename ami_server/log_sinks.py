"""Where log lines go: the sink interface, a threaded stream writer, an in-memory sink.

A separate module because where lines go is independent of what they say:
the server, the CLI and the tests pick a sink, and the loggers built in
:mod:`ami_server.audit` only hand rendered lines to it: JSON records as
UTF-8 bytes (orjson's output, written as it is), console lines as text. The stream writer
exists so that the event loop never waits for a disk or a terminal: lines
go through a bounded buffer to a writer thread, and a stuck sink costs
dropped lines, not latency.
"""

from __future__ import annotations

import collections
import io
import json
import threading
from typing import Any, BinaryIO, List, Optional, TextIO, Union

__all__ = ["LogSink", "StreamSink", "FileSink", "MemorySink", "Line"]

_MISSING = object()
#: A rendered line: UTF-8 bytes (JSON records) or text (console lines).
Line = Union[str, bytes]


def _as_bytes(line: Line) -> bytes:
    return line if line.__class__ is bytes else line.encode("utf-8", "backslashreplace")  # type: ignore[union-attr]


class LogSink:
    """Receives rendered log lines (:data:`Line`); subclasses decide where they go."""

    def write_line(self, line: Line) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the sink."""

    def reopen(self) -> bool:
        """Reopen a file sink by its path (log rotation); False when there is no file to reopen."""
        return False

    # structlog calls the wrapped logger's method named after the level.
    def msg(self, line: Line) -> None:
        self.write_line(line)

    debug = info = warning = warn = error = critical = exception = msg


class StreamSink(LogSink):
    """Writes lines to a text stream from a background thread through a bounded buffer.

    The event loop only appends to a deque (no lock on the common path); the
    writer thread takes everything queued at once and writes it in one call,
    so a burst of records costs one write and one flush; it writes bytes to
    the stream's binary buffer where it has one. After a wake-up the
    writer lets lines gather for ``BATCH_SECONDS``: a thread woken for every
    record would compete with the event loop for the interpreter lock.
    """

    #: How long the writer lets lines gather before writing them.
    BATCH_SECONDS = 0.02

    def __init__(self, stream: Union[TextIO, BinaryIO], capacity: int = 10000, owns_stream: bool = False) -> None:
        self._stream = stream
        self._owns = owns_stream
        self._capacity = capacity
        self._lines: "collections.deque[Line]" = collections.deque()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._closing = False
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ami-server-log", daemon=True)
        self._thread.start()

    def write_line(self, line: Line) -> None:
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
            self._maintain()
            try:
                if dropped:
                    self._write(b'{"event":"LogLinesDropped","count":%d}\n' % dropped)
                if batch:
                    self._write(b"".join([_as_bytes(line) + b"\n" for line in batch]))
                self._stream.flush()
            except (OSError, ValueError):
                # The stream failed (full disk, closed): count the loss, keep serving.
                with self._lock:
                    self._dropped += len(batch)
            if self._closing and not lines:
                return

    def _write(self, data: bytes) -> None:
        """Write ``data`` (UTF-8): to a text stream's binary buffer, behind the text written before."""
        stream = self._stream
        if not isinstance(stream, io.TextIOBase):
            stream.write(data)  # type: ignore[arg-type]
            return
        buffer = getattr(stream, "buffer", None)
        if buffer is None:  # a text stream of its own (StringIO)
            stream.write(data.decode("utf-8", "replace"))
            return
        stream.flush()
        buffer.write(data)

    def _maintain(self) -> None:
        """Called in the writer thread before each batch (a file sink reopens here)."""

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


class FileSink(StreamSink):
    """Appends to a file by path and can reopen it, so logrotate needs no copytruncate.

    :meth:`reopen` only sets a flag; the writer thread opens the new file
    before its next batch, so a slow filesystem never stalls the event loop.
    If the new file cannot be opened the old one is kept and a
    ``LogReopenFailed`` line says why.
    """

    def __init__(self, path: str, capacity: int = 10000) -> None:
        self.path = path
        self._reopen = False
        super().__init__(open(path, "ab"), capacity, owns_stream=True)

    def reopen(self) -> bool:
        self._reopen = True
        self._wake.set()
        return True

    def _maintain(self) -> None:
        if not self._reopen:
            return
        self._reopen = False
        try:
            stream = open(self.path, "ab")
        except OSError as exc:
            try:
                self._write(json.dumps({"event": "LogReopenFailed", "level": "error", "path": self.path,
                                        "error": exc.strerror or str(exc)}, separators=(",", ":")).encode() + b"\n")
            except (OSError, ValueError):
                pass
            return
        old, self._stream = self._stream, stream
        try:
            old.close()
        except (OSError, ValueError):
            pass


class MemorySink(LogSink):
    """Keeps lines in a list (tests, embedding); thread-safe."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self._lock = threading.Lock()

    def write_line(self, line: Line) -> None:
        if line.__class__ is bytes:
            line = line.decode()  # type: ignore[union-attr]
        with self._lock:
            self.lines.append(line)  # type: ignore[arg-type]

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def records(self, event: Optional[str] = None, **fields: Any) -> List[dict]:
        """The JSON records written so far (lines that are not JSON are skipped), or those named ``event``.

        ``fields`` picks records with those values: ``records(login="LoginFailed")``
        is every failed login's outcome, whatever security event names it.
        """
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (event is None or record.get("event") == event) and all(
                    record.get(name, _MISSING) == value for name, value in fields.items()):
                out.append(record)
        return out
