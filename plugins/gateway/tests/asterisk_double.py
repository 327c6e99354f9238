"""An upstream double that speaks AMI with the recorded bytes of real Asterisk 22.10.1.

``Recording`` reads a transcript of ``tests/data`` (copied from the
reference set): per connection, what the client sent and what Asterisk
answered until the client's next request. ``AsteriskDouble`` is a threaded
TCP server: it sends the banner, checks a Challenge/Login (MD5 or plain),
and answers every other request with the recorded reply of the same request
(matched without its ActionID), the recorded ActionID replaced by the one
received. Tests can also push raw bytes (events, a Shutdown), delay or drop
replies, refuse logins and close every connection.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

DATA = Path(__file__).resolve().parent / "data"
BANNER = b"Asterisk Call Manager/11.0.0\r\n"
_STEP = re.compile(r"^\[\+\s*([0-9.]+)\] (?:C([0-9]+) (<<|>>|--) ?(.*)|NOTE: (.*))$")


def _unescape(text: str) -> bytes:
    return text.replace("\\r", "\r").replace("\\n", "\n").encode("utf-8", "surrogateescape")


@dataclass
class Exchange:
    request: bytes
    reply: bytes = b""


@dataclass
class Recording:
    """The exchanges of one transcript, per connection number."""

    name: str
    connections: Dict[int, List[Exchange]] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str) -> "Recording":
        recording = cls(name)
        current: Optional[Tuple[int, str]] = None
        buf: List[str] = []

        def flush() -> None:
            if current is None:
                return
            conn, direction = current
            data = _unescape("".join(buf))
            exchanges = recording.connections.setdefault(conn, [])
            if direction == ">>":
                exchanges.append(Exchange(data))
            elif exchanges:
                exchanges[-1].reply += data

        for line in (DATA / f"{name}.txt").read_text(encoding="utf-8").splitlines():
            match = _STEP.match(line)
            if match:
                flush()
                buf = []
                current = (int(match.group(2)), match.group(3)) if match.group(3) in ("<<", ">>") else None
                continue
            if line.startswith("#") or current is None:
                continue
            buf.append(line)
        flush()
        return recording

    def exchange(self, conn: int, action_id: str) -> Exchange:
        for item in self.connections[conn]:
            if f"ActionID: {action_id}\r\n".encode() in item.request:
                return item
        raise KeyError(action_id)


def strip_action_id(request: bytes) -> Tuple[bytes, Optional[str]]:
    """The request without its first ActionID line, and that ActionID."""
    lines = request.split(b"\r\n")
    for index, line in enumerate(lines):
        if line.lower().startswith(b"actionid:"):
            return b"\r\n".join(lines[:index] + lines[index + 1:]), line[9:].strip().decode()
    return request, None


def headers_of(request: bytes) -> List[Tuple[str, str]]:
    out = []
    for line in request.decode("utf-8", "surrogateescape").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out.append((name.strip(), value.strip()))
    return out


class AsteriskDouble:
    """A scripted AMI server on a free loopback port (threads; every wait bounded)."""

    def __init__(self, recordings: Tuple[Recording, ...] = (), username: str = "gateway",
                 secret: str = "gw-secret") -> None:
        self.username = username
        self.secret = secret
        self.accept_login = True
        self.replies: Dict[bytes, Tuple[bytes, str]] = {}
        for recording in recordings:
            for exchanges in recording.connections.values():
                for item in exchanges:
                    key, action_id = strip_action_id(item.request)
                    if action_id and key not in self.replies:
                        self.replies[key] = (item.reply, action_id)
        self.handlers: Dict[str, Callable[["DoubleConnection", List[Tuple[str, str]], str], Optional[bytes]]] = {}
        self.delay = 0.0
        self.received: List[bytes] = []
        self.logins: List[Tuple[float, str]] = []
        self.connections: List["DoubleConnection"] = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn = DoubleConnection(self, sock)
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=conn.run, daemon=True).start()

    def logged_in(self) -> List["DoubleConnection"]:
        with self.lock:
            return [c for c in self.connections if c.authenticated and not c.closed and c.events]

    def push(self, data: bytes) -> None:
        """Send ``data`` to every logged-in session with events on (a broadcast event)."""
        for conn in self.logged_in():
            conn.send(data)

    def close_all(self) -> None:
        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            conn.close()

    def stop(self) -> None:
        self.running = False
        self.listener.close()
        self.close_all()
        self.thread.join(2)

    def wait_logins(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len([c for c in self.logged_in()]) >= count:
                return
            time.sleep(0.01)
        raise TimeoutError(f"{count} upstream logins did not happen")


class DoubleConnection:
    def __init__(self, double: AsteriskDouble, sock: socket.socket) -> None:
        self.double = double
        self.sock = sock
        self.sock.settimeout(0.2)
        self.challenge = "123456789"
        self.authenticated = False
        self.events = True
        self.closed = False
        self.send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def run(self) -> None:
        self.send(BANNER)
        buf = b""
        while not self.closed and self.double.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            buf += data
            while b"\r\n\r\n" in buf:
                request, buf = buf.split(b"\r\n\r\n", 1)
                self.handle(request + b"\r\n\r\n")
        self.closed = True

    def handle(self, request: bytes) -> None:
        double = self.double
        pairs = headers_of(request)
        get = {k.lower(): v for k, v in reversed(pairs)}
        action = get.get("action", "").lower()
        action_id = get.get("actionid", "")
        aid = f"ActionID: {action_id}\r\n" if action_id else ""
        if action == "challenge":
            self.send(f"Response: Success\r\n{aid}Challenge: {self.challenge}\r\n\r\n".encode())
            return
        if action == "login":
            ok = get.get("username") == double.username and double.accept_login
            if get.get("authtype", "").lower() == "md5":
                expected = hashlib.md5((self.challenge + double.secret).encode()).hexdigest()
                ok = ok and get.get("key") == expected
            else:
                ok = ok and get.get("secret") == double.secret
            double.logins.append((time.monotonic(), "ok" if ok else "failed"))
            if not ok:
                self.send(f"Response: Error\r\n{aid}Message: Authentication failed\r\n\r\n".encode())
                self.close()
                return
            self.authenticated = True
            self.events = get.get("events", "on").lower() != "off"
            reply = f"Response: Success\r\n{aid}Message: Authentication accepted\r\n\r\n"
            if self.events:
                reply += ("Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 5\r\nLastReload: 5\r\n"
                          "Status: Fully Booted\r\n\r\n")
            self.send(reply.encode())
            return
        double.received.append(request)
        if not self.authenticated:
            self.send(f"Response: Error\r\n{aid}Message: Permission denied\r\n\r\n".encode())
            return
        handler = double.handlers.get(action)
        if handler is not None:
            data = handler(self, pairs, action_id)
            if data:
                self._later(data)
            return
        key, _ = strip_action_id(request)
        recorded = double.replies.get(key)
        if recorded is not None:
            reply, old = recorded
            self._later(reply.replace(f"ActionID: {old}\r\n".encode(), aid.encode()))
            return
        name = get.get("action", "")
        self._later(f"Response: Error\r\n{aid}Message: Invalid/unknown command: {name}. Use Action: "
                    "ListCommands to show available commands.\r\n\r\n".encode())

    def _later(self, data: bytes) -> None:
        delay = self.double.delay
        if delay:
            threading.Timer(delay, lambda: self.send(data)).start()
        else:
            self.send(data)


def listcommands_handler(conn: DoubleConnection, pairs: List[Tuple[str, str]], action_id: str) -> bytes:
    """A short ListCommands reply, in Asterisk's format."""
    lines = [
        ("Command", "Execute Asterisk CLI Command.  (Priv: command,all)"),
        ("CoreShowChannels", "List currently active channels.  (Priv: system,reporting,all)"),
        ("Originate", "Originate a call.  (Priv: originate,all)"),
        ("Status", "List channel status.  (Priv: system,call,reporting,all)"),
        ("Hangup", "Hangup channel.  (Priv: system,call,all)"),
        ("UserEvent", "Send an arbitrary event.  (Priv: user,all)"),
        ("Ping", "Keepalive command.  (Priv: <none>)"),
    ]
    body = "".join(f"{name}: {text}\r\n" for name, text in lines)
    return f"Response: Success\r\nActionID: {action_id}\r\n{body}\r\n".encode()
