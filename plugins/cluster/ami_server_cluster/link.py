"""Redis I/O, off the event loop: a writer thread and a reader thread, bounded both ways.

The loop never touches a Redis socket. It appends publications to a
bounded deque (:meth:`RedisLink.offer`) and submits commands
(:meth:`RedisLink.submit`); the writer thread sends them. The reader
thread blocks in ``XREAD`` on its own connection and hands each batch to
the loop, holding at most ``inbound_batches`` batches in flight, so a
slow loop slows reading instead of growing memory. Either thread losing
Redis only makes it reconnect with back-off: the loop keeps serving.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ami_server import Event

from .config import ClusterConfig

__all__ = ["RedisLink", "Inbound", "make_client", "stream_id"]

#: How long one XREAD waits for news (ms); also how soon the reader notices a stop.
BLOCK_MS = 500
#: Most publications in one stream entry (one XADD, one JSON document).
WRITE_BATCH = 256
#: Control messages kept per node's control stream.
CONTROL_MAXLEN = 1000
_FAILURES = (redis.ConnectionError, redis.TimeoutError, OSError)


@dataclass(frozen=True)
class Inbound:
    """One batch from the reader: events in stream order, gaps per publisher, control messages."""

    events: Tuple[Event, ...]
    lost: Tuple[Tuple[str, int], ...]
    control: Tuple[Dict[str, Any], ...]
    reset: bool = False


def make_client(config: ClusterConfig, read_timeout: float) -> "redis.Redis":
    """A client for one thread: no retries of its own (the threads decide), timeouts bounded."""
    parts = urlsplit(config.redis_url)
    tls = parts.scheme == "rediss"
    options: Dict[str, Any] = {}
    if tls:
        options.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True)
        if config.tls_ca_file:
            options["ssl_ca_certs"] = config.tls_ca_file
    return redis.Redis(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(parts.path[1:] or 0) if parts.path not in ("", "/") else 0,
        username=config.username,
        password=config.password,
        socket_timeout=read_timeout,
        socket_connect_timeout=config.redis_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        client_name=f"ami-server:{config.node}",
        **options,
    )


def stream_id(value: Any) -> Tuple[int, int]:
    """``b"1700000000000-3"`` as ``(1700000000000, 3)`` for comparisons."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisLink:
    """The two Redis threads of one node and the queues between them and the loop."""

    def __init__(
        self,
        config: ClusterConfig,
        to_loop: Callable[[Callable[[], None]], None],
        deliver: Callable[[Inbound], None],
        state: Callable[[str, bool, str], None],
    ) -> None:
        self.config = config
        self.node = config.node
        #: Distinguishes this run of the node from an earlier one with the same name.
        self.incarnation = uuid.uuid4().hex[:12]
        self._to_loop = to_loop
        self._deliver = deliver
        self._state = state
        self.outgoing: Deque[Event] = deque()
        self._commands: Deque[Tuple[Callable[["redis.Redis"], Any], Callable[[Any, Optional[BaseException]], None]]]
        self._commands = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(config.inbound_batches)
        self._seq = 0
        self.sent = 0
        self._threads: List[threading.Thread] = []
        #: Last sequence number seen per (node, incarnation): drops repeats, counts gaps.
        self._seen: Dict[Tuple[str, str], int] = {}

    # -- loop side ----------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("writer", self._write_loop), ("reader", self._read_loop)):
            thread = threading.Thread(target=target, name=f"ami-cluster-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def offer(self, event: Event) -> bool:
        """Queue a publication for the other nodes; False if the bound is reached (the caller counts it)."""
        outgoing = self.outgoing
        if len(outgoing) >= self.config.publish_queue_limit:
            return False
        outgoing.append(event)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def submit(self, command: Callable[["redis.Redis"], Any], done: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Run ``command(client)`` on the writer thread; ``done(result, error)`` runs on the loop."""
        self._commands.append((command, done))
        self._wake.set()

    def stop_later(self, delay: float) -> None:
        """Stop both threads ``delay`` seconds from now (the server is stopping)."""
        timer = threading.Timer(delay, self.stop, kwargs={"timeout": 0.0})
        timer.daemon = True
        timer.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Give the writer ``timeout`` seconds to send what is queued, then stop both threads."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    # -- writer thread --------------------------------------------------------------
    def _write_loop(self) -> None:
        client: Optional[redis.Redis] = None
        #: The entry being sent: its first sequence number and its events (sent again after a failure).
        pending: Optional[Tuple[int, List[Event]]] = None
        delay = 0.05
        up = False
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(1.0)
                self._wake.clear()
            if client is None:
                try:
                    client = make_client(self.config, self.config.redis_timeout)
                    client.ping()
                except (redis.RedisError, OSError) as exc:
                    client = None
                    self._fail_commands(exc)
                    if up:
                        up = False
                        self._report("writer", False, _describe(exc))
                    if stopping or self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 2.0) * (0.8 + 0.4 * random.random())
                    self._wake.set()
                    continue
                delay = 0.05
                if not up:
                    up = True
                    self._report("writer", True, "")
            try:
                self._run_commands(client)
                while pending is not None or self.outgoing:
                    if pending is None:
                        outgoing = self.outgoing
                        events = [outgoing.popleft() for _ in range(min(WRITE_BATCH, len(outgoing)))]
                        pending = (self._seq + 1, events)
                        self._seq += len(events)
                    self._send(client, *pending)
                    self.sent += len(pending[1])
                    pending = None
                    if self._commands:
                        self._run_commands(client)
            except _FAILURES as exc:
                # Not known whether the entry arrived: it is sent again, receivers drop repeats.
                client = None
                up = False
                self._report("writer", False, _describe(exc))
                self._wake.set()
                if self._stop.wait(delay):
                    return
                continue
            if stopping:
                return

    def _send(self, client: "redis.Redis", first: int, events: List[Event]) -> None:
        """One stream entry for up to WRITE_BATCH events: one command, one JSON document."""
        config = self.config
        body = json.dumps([(e.name, e.classes, e.headers) for e in events], separators=(",", ":"))
        client.xadd(config.events_stream, {
            "n": self.node, "i": self.incarnation, "s": first, "k": len(events), "b": body,
        }, maxlen=config.stream_maxlen, approximate=True)

    def _run_commands(self, client: "redis.Redis") -> None:
        commands = self._commands
        while commands:
            command, done = commands.popleft()
            try:
                result = command(client)
            except _FAILURES as exc:
                self._hand(done, None, exc)
                raise
            except Exception as exc:  # noqa: BLE001 - a command's own failure goes to its caller
                self._hand(done, None, exc)
            else:
                self._hand(done, result, None)

    def _fail_commands(self, exc: BaseException) -> None:
        commands = self._commands
        while commands:
            _, done = commands.popleft()
            self._hand(done, None, exc)

    def _hand(self, done: Callable[[Any, Optional[BaseException]], None], result: Any, exc: Optional[BaseException]) -> None:
        try:
            self._to_loop(lambda: done(result, exc))
        except OSError:
            pass  # the loop is closed: the server is stopping

    def _report(self, which: str, up: bool, detail: str) -> None:
        try:
            self._to_loop(lambda: self._state(which, up, detail))
        except OSError:
            pass

    # -- reader thread ----------------------------------------------------------------
    def _read_loop(self) -> None:
        config = self.config
        client: Optional[redis.Redis] = None
        cursors: Dict[str, str] = {}
        streams = (config.events_stream, config.control_stream(self.node))
        delay = 0.05
        while not self._stop.is_set():
            reset = False
            if client is None:
                try:
                    client = make_client(config, config.redis_timeout + BLOCK_MS / 1000)
                    reset = self._position(client, streams, cursors)
                except (redis.RedisError, OSError) as exc:
                    client = None
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 2.0) * (0.8 + 0.4 * random.random())
                    continue
                delay = 0.05
                self._report("reader", True, "")
            if not self._slots.acquire(timeout=0.5):
                continue  # the loop has not taken the earlier batches yet
            try:
                reply = client.xread({s: cursors[s] for s in streams}, count=config.read_count, block=BLOCK_MS)
            except (redis.RedisError, OSError) as exc:
                self._slots.release()
                client = None
                self._report("reader", False, _describe(exc))
                continue
            batch = self._decode(reply or (), cursors, streams[0], reset)
            if batch is None:
                self._slots.release()
                continue
            self._hand_batch(batch)

    def _position(self, client: "redis.Redis", streams: Tuple[str, ...], cursors: Dict[str, str]) -> bool:
        """Where to read from after a (re)connect; True if Redis lost the stream we were reading.

        At the first connect: the streams' current ends (earlier events are not
        ours). After a reconnect: where we stopped, unless the stream's last id is
        now lower (Redis restarted without its data): then from its start.
        """
        reset = False
        for stream in streams:
            try:
                last = client.xinfo_stream(stream)["last-generated-id"]
            except redis.ResponseError:
                last = b"0-0"  # no such stream yet
            if stream not in cursors:
                cursors[stream] = last.decode() if isinstance(last, bytes) else str(last)
            elif stream_id(last) < stream_id(cursors[stream]):
                cursors[stream] = "0-0"
                reset = reset or stream == streams[0]
        return reset

    def _decode(
        self, reply: Any, cursors: Dict[str, str], events_stream: str, reset: bool
    ) -> Optional[Inbound]:
        events: List[Event] = []
        lost: Dict[str, int] = {}
        control: List[Dict[str, Any]] = []
        seen = self._seen
        me = (self.node, self.incarnation)
        for name, entries in reply:
            stream = name.decode() if isinstance(name, bytes) else name
            if not entries:
                continue
            last_id = entries[-1][0]
            cursors[stream] = last_id.decode() if isinstance(last_id, bytes) else str(last_id)
            if stream != events_stream:
                for _, fields in entries:
                    try:
                        control.append({k.decode(): v.decode() for k, v in fields.items()})
                    except (AttributeError, UnicodeDecodeError):
                        continue
                continue
            for _, fields in entries:
                try:
                    publisher = (fields[b"n"].decode(), fields[b"i"].decode())
                    first = int(fields[b"s"])
                    count = int(fields[b"k"])
                except (KeyError, ValueError, UnicodeDecodeError):
                    continue
                if publisher == me:
                    continue  # delivered here when it was published
                last = first + count - 1
                previous = seen.get(publisher)
                skip = 0
                if previous is not None:
                    if last <= previous:
                        continue  # a repeat (sent again after a lost reply)
                    if first > previous + 1:
                        lost[publisher[0]] = lost.get(publisher[0], 0) + first - previous - 1
                    skip = max(0, previous + 1 - first)
                seen[publisher] = last
                try:
                    for name, classes, headers in json.loads(fields[b"b"])[skip:]:
                        events.append(Event(name, classes, tuple((str(k), str(v)) for k, v in headers)))
                except (KeyError, ValueError, TypeError):
                    lost[publisher[0]] = lost.get(publisher[0], 0) + count - skip
        if not events and not lost and not control and not reset:
            return None
        return Inbound(tuple(events), tuple(sorted(lost.items())), tuple(control), reset)

    def _hand_batch(self, batch: Inbound) -> None:
        def on_loop() -> None:
            try:
                self._deliver(batch)
            finally:
                self._slots.release()

        try:
            self._to_loop(on_loop)
        except OSError:
            self._slots.release()


def _describe(exc: BaseException) -> str:
    """An error as it may be logged: its type and message (redis-py never puts the password there)."""
    return f"{type(exc).__name__}: {exc}"[:200]
