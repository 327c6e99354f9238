"""Redis I/O, off the event loop: a writer thread and a reader thread, bounded both ways.

The loop never touches a Redis socket. It appends publications to a
bounded deque (:meth:`RedisLink.offer`) and submits commands
(:meth:`RedisLink.submit`); the writer thread sends them. The reader
thread blocks in ``XREAD`` on its own connection and hands each batch to
the loop, holding at most ``inbound_batches`` batches in flight, so a
slow loop slows reading instead of growing memory. Either thread losing
Redis only makes it reconnect with back-off: the loop keeps serving.

Each node writes its own stream (``<prefix>:events:<node>``) and reads the
other nodes' streams with one ``XREAD`` over several keys, so it never
reads (and skips) its own entries: with one shared stream every node paid
for parsing every publication of its own under the GIL beside the loop.
The writer registers its node in ``<prefix>:streams`` (scored by Redis's
clock) before its first entry and every minute; the reader looks the set
up every second to find new nodes.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple
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
#: How often the writer renews its node's registration, and the reader looks for new nodes (s).
REGISTER_SECONDS = 60.0
SCAN_SECONDS = 1.0
#: A node not registered for this long is forgotten by the readers (its stream is left alone).
STREAM_IDLE_SECONDS = 86400
#: Register this node's stream under Redis's clock (a node may publish before its first heartbeat).
_REGISTER = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]), ARGV[1])
return 1
"""
#: The publishing nodes, after forgetting those silent for longer than ARGV[1] seconds.
_SCAN = """
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) - tonumber(ARGV[1]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
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
        register_at = 0.0
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
                register_at = 0.0  # Redis may have lost the registry: register before the next entry
                if not up:
                    up = True
                    self._report("writer", True, "")
            try:
                if time.monotonic() >= register_at:
                    client.eval(_REGISTER, 1, self.config.streams_key, self.node)
                    register_at = time.monotonic() + REGISTER_SECONDS
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
            except (redis.RedisError, OSError) as exc:
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
        control = config.control_stream(self.node)
        cursors: Dict[str, str] = {}
        #: Streams whose cursor is an id Redis gave for them (a lower last id then means Redis lost them).
        confirmed: Set[str] = set()
        #: Redis's time when this reader first connected: where streams of nodes found later are read from.
        start: Optional[str] = None
        others: List[str] = []
        scan_at = 0.0
        delay = 0.05
        reset = False  # until a batch has told the loop
        while not self._stop.is_set():
            try:
                if client is None:
                    client = make_client(config, config.redis_timeout + BLOCK_MS / 1000)
                    if start is None:
                        seconds, micros = client.time()
                        begin = f"{max(0, seconds * 1000 + micros // 1000 - 1)}-0"
                        found = self._scan(client)
                        for stream in found:  # what they published before we came is not ours
                            cursors[stream] = self._last_id(client, stream)
                            confirmed.add(stream)
                        cursors[control] = self._last_id(client, control)
                        confirmed.add(control)
                        others, start = found, begin
                        scan_at = time.monotonic() + SCAN_SECONDS
                    else:
                        reset = self._check_reset(client, cursors, confirmed, control) or reset
                        scan_at = 0.0
                    delay = 0.05
                    self._report("reader", True, "")
                if time.monotonic() >= scan_at:
                    others = self._scan(client)
                    for stream in others:
                        cursors.setdefault(stream, start or "0-0")
                    scan_at = time.monotonic() + SCAN_SECONDS
            except (redis.RedisError, OSError) as exc:
                if client is not None:
                    self._report("reader", False, _describe(exc))
                client = None
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 2.0) * (0.8 + 0.4 * random.random())
                continue
            if not self._slots.acquire(timeout=0.5):
                continue  # the loop has not taken the earlier batches yet
            streams = {control: cursors[control]}
            for stream in others:
                streams[stream] = cursors[stream]
            try:
                reply = client.xread(streams, count=config.read_count, block=BLOCK_MS)
            except (redis.RedisError, OSError) as exc:
                self._slots.release()
                client = None
                self._report("reader", False, _describe(exc))
                continue
            batch = self._decode(reply or (), cursors, control, reset)
            if reply:
                confirmed.update(name.decode() if isinstance(name, bytes) else name for name, _ in reply)
            if batch is None:
                self._slots.release()
                continue
            reset = False
            self._hand_batch(batch)

    def _scan(self, client: "redis.Redis") -> List[str]:
        """The other publishing nodes' event streams, in a stable order."""
        config = self.config
        names = client.eval(_SCAN, 1, config.streams_key, str(STREAM_IDLE_SECONDS))
        nodes = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        return [config.events_stream_of(n) for n in nodes if n != self.node]

    @staticmethod
    def _last_id(client: "redis.Redis", stream: str) -> str:
        try:
            last = client.xinfo_stream(stream)["last-generated-id"]
        except redis.ResponseError:
            return "0-0"  # no such stream yet
        return last.decode() if isinstance(last, bytes) else str(last)

    def _check_reset(self, client: "redis.Redis", cursors: Dict[str, str], confirmed: Set[str], control: str) -> bool:
        """After a reconnect: True if Redis lost an event stream we were reading (restart without data).

        Such a stream's last id is now lower than where we stopped: it is read
        again from its start. Cursors not confirmed by Redis (streams found
        after our start that had nothing new yet) are left: new ids are higher.
        """
        reset = False
        for stream in list(confirmed):
            if stream_id(self._last_id(client, stream)) < stream_id(cursors[stream]):
                cursors[stream] = "0-0"
                reset = reset or stream != control
        return reset

    def _decode(
        self, reply: Any, cursors: Dict[str, str], control_stream: str, reset: bool
    ) -> Optional[Inbound]:
        events: List[Event] = []
        lost: Dict[str, int] = {}
        control: List[Dict[str, Any]] = []
        seen = self._seen
        for name, entries in reply:
            stream = name.decode() if isinstance(name, bytes) else name
            if not entries:
                continue
            last_id = entries[-1][0]
            cursors[stream] = last_id.decode() if isinstance(last_id, bytes) else str(last_id)
            if stream == control_stream:
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
