"""Helpers for testing ami-server and its plugins, over real sockets and in memory.

``running_server`` starts a real :class:`~ami_server.server.Server` on a free
loopback port in a background thread; :class:`AMIClient` is a small blocking
AMI client whose every wait has a timeout, so a bug cannot hang a test run.
:class:`MemoryServer` drives the same server's sessions without sockets and
on a clock the test moves, the way h11 tests a connection pair: bytes in,
bytes out, every step under the test's control. Registered as a pytest
plugin (``ami_server`` and ``ami_client`` fixtures).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .audit import MemorySink
from .config import Config, parse_config
from .loop import Loop
from .server import Server
from .session import Link, Session

__all__ = [
    "AMIClient", "Reply", "ServerThread", "running_server", "make_config", "MemoryServer", "MemoryPeer",
    "parse_blocks",
]


def make_config(data: Optional[Mapping[str, Any]] = None, **server: Any) -> Config:
    """A config for tests: loopback, a free port, no failure delay unless given."""
    data = dict(data or {})
    section = {"host": "127.0.0.1", "port": 0, "login_failure_delay": 0.0}
    section.update(data.pop("server", {}))
    section.update(server)
    data["server"] = section
    return parse_config(data, "<test>")


class ServerThread:
    """A started server whose loop runs in a daemon thread."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        self.log = kwargs.pop("log_sink", None) or MemorySink()
        self.server = Server(config, log_sink=self.log, **kwargs)
        self.address = self.server.start()
        self._thread = threading.Thread(target=self.server.serve_forever, name="ami-server-test", daemon=True)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> "ServerThread":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("server thread did not stop")

    def call(self, fn: Any, timeout: float = 5.0) -> Any:
        """Run ``fn`` on the server's loop thread and return its result."""
        done = threading.Event()
        box: Dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001
                box["error"] = exc
            done.set()

        self.server.loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError("loop did not run the call in time")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def client(self, **kwargs: Any) -> "AMIClient":
        return AMIClient(self.host, self.port, **kwargs)


@contextlib.contextmanager
def running_server(config: Optional[Config] = None, **kwargs: Any) -> Iterator[ServerThread]:
    """Start a server thread for the duration of a ``with`` block."""
    thread = ServerThread(config or make_config(), **kwargs).start()
    try:
        yield thread
    finally:
        thread.stop()


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class _MemoryLink(Link):
    """A session's transport in memory: the bytes stay in ``out`` until the peer reads them."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class MemoryServer:
    """A server whose sessions run in memory, on a manual clock, in the test's thread.

    Plugins, the session core, the dispatcher, the event bus and the audit
    trail are the real ones; only sockets are missing. Each call that feeds
    bytes ends with one loop turn (:meth:`turn`): what is due runs and the
    output is delivered.
    """

    def __init__(self, config: Optional[Config] = None, **kwargs: Any) -> None:
        self.clock = ManualClock()
        self.log = kwargs.pop("log_sink", None) or MemorySink()
        kwargs.setdefault("entry_points", ())
        self.server = Server(config or make_config(), log_sink=self.log, loop=Loop(self.clock), **kwargs)
        self.server.load()
        self.core = self.server.core
        self._ports = iter(range(40000, 65536))

    def connect(self, remote: Optional[Tuple[str, int]] = None, transport: str = "TCP") -> "MemoryPeer":
        """A new connection from ``remote`` (a loopback address by default), banner sent."""
        remote = remote or ("127.0.0.1", next(self._ports))
        local = ("127.0.0.1", 5038)
        link = _MemoryLink()
        session = self.core.accept(
            link, remote, local, f"IPV4/{transport}/{remote[0]}/{remote[1]}", f"IPV4/{transport}/127.0.0.1/5038",
            transport,
        )
        if session is None:
            raise ConnectionRefusedError("auth_limit reached: the connection was closed without a banner")
        self.core.open(session)
        self.run()
        return MemoryPeer(self, session, link)

    def turn(self) -> None:
        """One loop turn: callbacks and due timers run, output is delivered."""
        self.server.run_once(0)

    def run(self, turns: int = 1000) -> None:
        """Loop turns until no callback waits (at most ``turns``; timers wait for :meth:`advance`)."""
        self.turn()
        while self.server.loop.has_callbacks():
            turns -= 1
            if not turns:
                raise RuntimeError("the loop kept scheduling callbacks")
            self.turn()

    def flush(self) -> None:
        """Deliver the output now, as the end of a loop turn does, without running callbacks."""
        self.core.outbox.flush()

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds`` and run what became due (see :meth:`run`)."""
        self.clock.now += seconds
        self.run()

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> "MemoryServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MemoryPeer:
    """The client end of one in-memory session: send bytes, read what the server wrote."""

    def __init__(self, harness: MemoryServer, session: Session, link: _MemoryLink) -> None:
        self.harness = harness
        self.session = session
        self._link = link

    @property
    def closed(self) -> bool:
        """The server closed this session."""
        return self._link.closed

    def feed(self, data: bytes) -> None:
        """Bytes from the client, as one read, inside the current loop turn (no turn follows)."""
        if not self.closed:
            self.harness.core.receive(self.session, data)

    def send(self, data: bytes) -> None:
        """Bytes from the client, as one read; the loop runs until idle (MemoryServer.run)."""
        self.feed(data)
        self.harness.run()

    def send_action(self, action: str, *headers: Tuple[str, str]) -> None:
        lines = [f"Action: {action}"] + [f"{name}: {value}" for name, value in headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def end(self) -> None:
        """The client closes its side (end of stream)."""
        if not self.closed:
            self.harness.core.end_of_input(self.session)
        self.harness.run()

    @property
    def unread(self) -> int:
        """Bytes the server wrote that the client has not read."""
        return len(self.session.out)

    def read(self, limit: Optional[int] = None) -> bytes:
        """Take what the server wrote (at most ``limit`` bytes, as a slow reader would); the loop runs until idle."""
        data = self.take(limit)
        self.harness.run()
        return data

    def take(self, limit: Optional[int] = None) -> bytes:
        """Take what the server wrote, inside the current turn (no loop turn follows)."""
        out = self.session.out
        count = len(out) if limit is None else min(limit, len(out))
        data = bytes(out[:count])
        del out[:count]
        session = self.session
        if not self.closed and (session.close_after_flush or session.output_paused):
            self.harness.core.output_sent(session)
        return data

    def blocks(self) -> List["Reply"]:
        """Read everything and split it into blocks (a leading banner line is dropped)."""
        return parse_blocks(self.read())


def parse_blocks(data: bytes) -> List["Reply"]:
    """``data`` as blocks of ``(name, value)`` lines; a banner line before them is skipped."""
    if data.startswith(b"Asterisk Call Manager/"):
        data = data.split(b"\r\n", 1)[1]
    blocks = []
    for raw in data.split(b"\r\n\r\n"):
        if not raw:
            continue
        lines = []
        for line in raw.decode("utf-8", "surrogateescape").split("\r\n"):
            name, _, value = line.partition(": ")
            lines.append((name, value))
        blocks.append(Reply(lines, raw + b"\r\n\r\n"))
    return blocks


class Reply:
    """One parsed block from the server: ordered ``(name, value)`` pairs."""

    def __init__(self, lines: Sequence[Tuple[str, str]], raw: bytes) -> None:
        self.lines = list(lines)
        self.raw = raw

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        key = name.lower()
        for hname, value in self.lines:
            if hname.lower() == key:
                return value
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    @property
    def is_event(self) -> bool:
        return bool(self.lines) and self.lines[0][0] == "Event"

    def __repr__(self) -> str:
        return f"Reply({self.lines!r})"


class AMIClient:
    """A blocking AMI client for tests; every read has a deadline."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.banner = self._read_line()
        self.events: List[Reply] = []

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "AMIClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, action: str, headers: Sequence[Tuple[str, str]] | Mapping[str, str] = ()) -> None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        lines = [f"Action: {action}"] + [f"{k}: {v}" for k, v in items]
        self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time") from None
        if not data:
            return False
        self.buffer += data
        return True

    def _read_line(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self.buffer:
            if not self._fill(deadline):
                raise ConnectionError("connection closed by the server")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_block(self, timeout: Optional[float] = None) -> Reply:
        """Read one block (up to the blank line)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                raise ConnectionError("connection closed by the server")
        raw, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = []
        for line in raw.decode("utf-8", "surrogateescape").split("\r\n"):
            name, _, value = line.partition(": ")
            lines.append((name, value))
        return Reply(lines, raw + b"\r\n\r\n")

    def read_response(self, timeout: Optional[float] = None) -> Reply:
        """Read blocks until a response; events met on the way go to ``events``."""
        while True:
            block = self.read_block(timeout)
            if block.is_event:
                self.events.append(block)
                continue
            return block

    def action(self, action: str, headers: Sequence[Tuple[str, str]] | Mapping[str, str] = (), timeout: Optional[float] = None) -> Reply:
        self.send(action, headers)
        return self.read_response(timeout)

    def login(self, username: str, secret: str, events: Optional[str] = None) -> Reply:
        headers = [("Username", username), ("Secret", secret)]
        if events is not None:
            headers.append(("Events", events))
        return self.action("Login", headers)

    def wait_event(self, name: str, timeout: Optional[float] = None) -> Reply:
        """Return the first event called ``name`` (already received or arriving in time)."""
        for index, event in enumerate(self.events):
            if event.get("Event") == name:
                return self.events.pop(index)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            block = self.read_block(max(0.0, deadline - time.monotonic()))
            if block.is_event and block.get("Event") == name:
                return block
            self.events.append(block)

    def read_until_closed(self, timeout: Optional[float] = None) -> bytes:
        """Read everything until the server closes; raises TimeoutError if it does not."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._fill(deadline):
            pass
        data, self.buffer = self.buffer, b""
        return data


# -- pytest plugin -----------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - the helpers work without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def ami_server_config() -> Config:
        """Override in your tests to choose users, plugins and settings."""
        return make_config(
            {"users": {"admin": {"secret": "adminpass", "read": "all", "write": "all"}}}
        )

    @pytest.fixture
    def ami_server(ami_server_config: Config) -> Iterator[ServerThread]:
        """A real server on a free loopback port, with the installed plugins."""
        with running_server(ami_server_config) as thread:
            yield thread

    @pytest.fixture
    def ami_client(ami_server: ServerThread) -> Iterator[AMIClient]:
        """A connected client (banner read, not logged in)."""
        with ami_server.client() as client:
            yield client
