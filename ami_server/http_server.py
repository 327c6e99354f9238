"""A tiny HTTP/1.1 server on the server's own selectors loop, for ``/metrics`` and ``/healthz``.

Deliberately minimal: ``GET``/``HEAD`` only, one request per connection
(``Connection: close``), no request bodies. Everything is bounded so that
an HTTP client can never cost the AMI sessions more than a few
microseconds per readiness event: the request head (``max_request_bytes``),
the time a client may take for the whole exchange (``timeout``, a loop
timer), and the number of simultaneous connections (``max_connections``;
more are closed on accept). Sockets are non-blocking, TLS handshakes run
on the loop like the AMI listener's.
"""

from __future__ import annotations

import base64
import errno
import hmac
import selectors
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Set, Tuple

from .ops_config import HTTPSettings

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Loop
    from .records import TimerHandle

__all__ = ["HTTPRequest", "HTTPReply", "HTTPListener", "check_credentials"]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
#: Connections accepted per readiness event, so a connect flood cannot monopolise a turn.
_ACCEPTS_PER_TURN = 16
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class HTTPRequest:
    """A parsed request head: method, path (without the query) and lower-cased headers."""

    method: str
    path: str
    headers: Tuple[Tuple[str, str], ...]

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return ""


@dataclass(frozen=True)
class HTTPReply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Tuple[Tuple[str, str], ...] = ()

    def render(self, head_only: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
                 f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                 "Connection: close", "Cache-Control: no-store"]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def parse_head(data: bytes) -> Optional[HTTPRequest]:
    """The request line and headers; ``None`` if malformed."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target = parts[0], parts[1]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers.append((name.lower(), value.strip()))
    path = target.split("?", 1)[0]
    return HTTPRequest(method, path, tuple(headers))


def check_credentials(settings: HTTPSettings, request: HTTPRequest) -> bool:
    """Basic or bearer credentials, compared in constant time; True when no auth is configured."""
    if settings.auth == "none":
        return True
    given = request.header("authorization")
    scheme, _, value = given.partition(" ")
    value = value.strip()
    if settings.auth == "bearer":
        return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), settings.token.encode())
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        return False
    expected = f"{settings.username}:{settings.password}".encode()
    return hmac.compare_digest(decoded, expected)


Handler = Callable[[HTTPRequest], HTTPReply]


class HTTPListener:
    """Accepts HTTP connections on the loop and answers each with ``handler``."""

    def __init__(self, sock: socket.socket, loop: "Loop", settings: HTTPSettings, handler: Handler,
                 tls: Optional[ssl.SSLContext], log: Any) -> None:
        self.sock = sock
        self.address: Tuple[str, int] = sock.getsockname()[:2]
        self.loop = loop
        self.settings = settings
        self.handler = handler
        self.tls = tls
        self.log = log
        self.connections: Set["_HTTPConnection"] = set()
        self.refused = 0
        self.closed = False
        loop.register(sock, _READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, _addr = self.sock.accept()
            except _AGAIN:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # the AMI listener has the back-off; here a scrape just fails
                return
            if len(self.connections) >= self.settings.max_connections:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            self.connections.add(_HTTPConnection(self, sock))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.unregister(self.sock)
        self.sock.close()
        for connection in list(self.connections):
            connection.close()


class _HTTPConnection:
    """One client: (TLS handshake) -> read the head -> write the reply -> close; all within ``timeout``."""

    __slots__ = ("listener", "sock", "buffer", "out", "timer", "handshaking", "interest", "closed", "head_only")

    def __init__(self, listener: HTTPListener, sock: socket.socket) -> None:
        self.listener = listener
        self.buffer = bytearray()
        self.out = b""
        self.closed = False
        self.head_only = False
        self.handshaking = listener.tls is not None
        if listener.tls is not None:
            sock = listener.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.sock = sock
        self.interest = _READ
        listener.loop.register(sock, _READ, self._on_ready)
        self.timer: "TimerHandle" = listener.loop.call_later(listener.settings.timeout, self._timed_out)

    def _set_interest(self, events: int) -> None:
        if events != self.interest and not self.closed:
            self.interest = events
            self.listener.loop.modify(self.sock, events, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        if self.closed:
            return
        try:
            if self.handshaking:
                self._handshake()
            elif self.out:
                self._write()
            else:
                self._read()
        except (OSError, ssl.SSLError):
            self.close()

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._set_interest(_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_interest(_WRITE)
            return
        self.handshaking = False
        self._set_interest(_READ)
        self._read()

    def _read(self) -> None:
        limit = self.listener.settings.max_request_bytes
        while True:
            try:
                data = self.sock.recv(4096)
            except _AGAIN:
                return
            if not data:
                self.close()
                return
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if 0 <= end <= limit:
                self._answer(bytes(self.buffer[:end]))
                return
            if len(self.buffer) > limit:
                self._reply(HTTPReply(431, b"request head too large\n"))
                return

    def _answer(self, head: bytes) -> None:
        request = parse_head(head)
        if request is None:
            self._reply(HTTPReply(400, b"bad request\n"))
            return
        self.head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            self._reply(HTTPReply(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),)))
            return
        try:
            reply = self.listener.handler(request)
        except Exception as exc:  # noqa: BLE001 - a failing endpoint answers 500, the loop goes on
            self.listener.log.error("HTTPHandlerFailed", path=request.path, error=repr(exc), exc_info=exc)
            reply = HTTPReply(500, b"internal error\n")
        self._reply(reply)

    def _reply(self, reply: HTTPReply) -> None:
        self.out = reply.render(self.head_only)
        self._write()

    def _write(self) -> None:
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except _AGAIN:
                self._set_interest(_WRITE)
                return
            self.out = self.out[sent:]
        self.close()

    def _timed_out(self) -> None:
        if not self.closed:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.cancel()
        self.listener.connections.discard(self)
        self.listener.loop.unregister(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass


def reply_json(status: int, body: Dict[str, Any]) -> HTTPReply:
    import json

    return HTTPReply(status, (json.dumps(body, sort_keys=True) + "\n").encode(), "application/json")
