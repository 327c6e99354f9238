"""The only code that touches sockets: listeners, accepted connections, outbound connections.

Every socket is non-blocking and owned by the loop; bytes are written only
when the socket takes them, and every wait (connect, TLS handshake, a
backoff) is a loop timer. Accepted connections feed the session core;
outbound ones feed a plugin's :class:`StreamProtocol`.
"""

from __future__ import annotations

import errno
import random
import selectors
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from .records import TimerHandle
from .security import format_address, host_port
from .session import Link, Session

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .core import SessionCore
    from .loop import Loop

__all__ = [
    "Backoff", "Connection", "Listener", "ListenError", "Outbound", "StreamProtocol", "INPUT_LIMIT", "listen",
]

#: Stop reading a session's socket while this much input waits unprocessed (P-1.18).
INPUT_LIMIT = 256 * 1024
_RECV_SIZE = 65536
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
#: accept() failures that mean "out of a resource": stop watching the listener and retry later.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: The first and longest pause between accept() retries while out of descriptors.
ACCEPT_RETRY_FIRST = 0.1
ACCEPT_RETRY_MAX = 1.0


def _watch(loop: "Loop", sock: Any, current: int, events: int, callback: Callable[[int], None]) -> int:
    """Register, modify or unregister ``sock`` so the selector waits for ``events``; the new interest."""
    if events != current:
        if not events:
            loop.unregister(sock)
        elif current:
            loop.modify(sock, events, callback)
        else:
            loop.register(sock, events, callback)
    return events


def _handshake_step(sock: Any) -> int:
    """Advance a non-blocking TLS handshake: 0 when done, else the readiness it waits for.

    A failure raises (``OSError`` or ``ValueError``).
    """
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return _READ
    except ssl.SSLWantWriteError:
        return _WRITE
    return 0


class ListenError(Exception):
    """A listener could not be opened; the message names the address and the config key."""


def listen(host: str, port: int, key: str, source: str, reuse_port: bool = False) -> socket.socket:
    """A bound, listening, non-blocking socket; ``source`` and ``key`` name the config file and key in errors.

    ``reuse_port`` sets ``SO_REUSEPORT`` so that several worker processes can
    listen on one port; the kernel then spreads new connections over them.
    """
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ListenError(f"{source}: server.reuse_port: SO_REUSEPORT is not available on this platform")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"{source}: {key}.host: cannot resolve {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host_port(host, port)} ({key}): {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def server_tls_context(config: "Config") -> ssl.SSLContext:
    """The TLS listener's context from ``[server.tls]``; a missing, unreadable or mismatched file is a ListenError."""
    tls = config.server.tls
    assert tls is not None
    source = config.source
    for key, path in (("certificate", tls.certificate), ("key", tls.key)):
        try:
            with open(path, "rb") as stream:
                stream.read(1)
        except OSError as exc:
            raise ListenError(f"{source}: server.tls.{key}: cannot read {path!r}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except ssl.SSLError as exc:
        raise ListenError(
            f"{source}: server.tls: cannot use certificate {tls.certificate!r} with key {tls.key!r}: "
            f"{exc.reason or exc}"
        ) from None
    return context


class Listener:
    """One listening socket: accepts connections and hands them to the session core.

    When ``accept`` fails for want of a resource (descriptors, buffers,
    memory) the listener stops being watched -- the loop would otherwise
    spin on it -- and is retried on a timer, 100 ms doubling to 1 s, with
    one audit record per episode (``AcceptPaused``/``AcceptResumed``).
    """

    def __init__(self, sock: socket.socket, transport: str, core: "SessionCore", loop: "Loop",
                 tls: Callable[[], Optional[ssl.SSLContext]], log: Any) -> None:
        self.sock = sock
        self.transport = transport
        self.address: Tuple[str, int] = sock.getsockname()[:2]
        self._core = core
        self._loop = loop
        self._tls = tls
        self._log = log
        self._retry: Optional[TimerHandle] = None
        self._delay = ACCEPT_RETRY_FIRST
        self._failures = 0
        self._error = ""
        loop.register(sock, _READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        for _ in range(64):
            try:
                sock, remote = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._pause(exc)
                else:
                    self._log.warning("AcceptFailed", error=exc.strerror or str(exc))
                return
            Connection.accepted(sock, remote, self.transport, self._core, self._loop, self._tls())
        if self._failures:
            self._log.warning("AcceptResumed", listener=self.transport, failed_attempts=self._failures,
                              error=self._error)
            self._failures = 0
            self._delay = ACCEPT_RETRY_FIRST

    def _pause(self, exc: OSError) -> None:
        if not self._failures:
            self._error = exc.strerror or str(exc)
            self._log.warning("AcceptPaused", listener=self.transport, error=self._error,
                              retry_seconds=self._delay)
        self._failures += 1
        self._loop.unregister(self.sock)
        self._retry = self._loop.call_later(self._delay, self._resume)
        self._delay = min(self._delay * 2, ACCEPT_RETRY_MAX)

    def _resume(self) -> None:
        self._retry = None
        self._loop.register(self.sock, _READ, self._on_ready)
        self._on_ready(_READ)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        self._loop.unregister(self.sock)
        self.sock.close()


class Connection(Link):
    """An accepted socket carrying one session: TLS handshake, reads, writes, interest."""

    __slots__ = ("sock", "session", "core", "loop", "events", "blocked", "handshaking", "_tls")

    def __init__(self, sock: socket.socket, core: "SessionCore", loop: "Loop", tls: bool) -> None:
        self.sock = sock
        self.core = core
        self.loop = loop
        self.session: Session
        #: The readiness events the selector watches for (0: not registered).
        self.events = 0
        #: The last send left bytes behind: wait for the socket to be writable.
        self.blocked = False
        #: A TLS connection before its handshake completed: no banner yet.
        self.handshaking = tls
        self._tls = tls

    @classmethod
    def accepted(cls, sock: socket.socket, remote: Any, transport: str, core: "SessionCore", loop: "Loop",
                 tls: Optional[ssl.SSLContext]) -> None:
        local = sock.getsockname()
        remote_address = format_address(remote, transport)
        local_address = format_address(local, transport)
        connection = cls(sock, core, loop, transport == "TLS")
        session = core.accept(connection, remote, local, remote_address, local_address, transport)
        if session is None:
            sock.close()
            return
        connection.session = session
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not every socket family has TCP_NODELAY; it only affects latency
        if transport == "TLS":
            assert tls is not None
            try:
                connection.sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                core.audit.record("TLSHandshakeFailed", core.audit.who(session), error=str(exc))
                core.close(session, "TLS handshake failed")
                return
        connection._interest(_READ)
        if connection.handshaking:
            connection._handshake()
        else:
            core.open(session)

    def _handshake(self) -> None:
        """Advance a non-blocking TLS handshake; never waits on the loop."""
        try:
            waiting = _handshake_step(self.sock)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            core = self.core
            core.audit.record("TLSHandshakeFailed", core.audit.who(self.session), error=str(reason))
            core.close(self.session, "TLS handshake failed")
            return
        if waiting:
            self._interest(waiting)
            return
        self.handshaking = False
        self._interest(_READ)
        self.core.open(self.session)

    def _interest(self, events: int) -> None:
        """Tell the selector which readiness events this connection waits for (0: none)."""
        self.events = _watch(self.loop, self.sock, self.events, events, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        session = self.session
        if session.closed:
            return
        if self.handshaking:
            self._handshake()
            return
        if mask & _WRITE:
            self.send()
            if session.closed:
                return
        if mask & _READ:
            self._receive()

    def _receive(self) -> None:
        sock = self.sock
        try:
            data = sock.recv(_RECV_SIZE)
            if data and self._tls:
                # Decrypted bytes already inside the TLS object never wake the selector.
                while sock.pending():  # type: ignore[attr-defined]
                    data += sock.recv(sock.pending())  # type: ignore[attr-defined]
        except _AGAIN:
            return
        except ssl.SSLZeroReturnError:
            data = b""  # the peer's TLS close_notify: end of stream
        except OSError:
            self.core.close(self.session, "I/O error")
            return
        if data:
            self.core.receive(self.session, data)
        else:
            self.core.end_of_input(self.session)

    # -- Link -------------------------------------------------------------
    def update(self) -> None:
        session = self.session
        if session.closed:
            return
        events = _READ if not session.eof and session.parser.buffered < INPUT_LIMIT else 0
        if self.blocked and session.out:
            # Only a socket that refused bytes is watched for writability; other
            # output is sent at the end of this loop turn (Outbox.flush).
            events |= _WRITE
        if events != self.events:
            self._interest(events)

    def send(self) -> None:
        session = self.session
        out = session.out
        if out:
            try:
                sent = self.sock.send(out)
            except _AGAIN:
                sent = 0
            except OSError:
                self.core.close(session, "I/O error")
                return
            if sent:
                del out[:sent]
            self.blocked = bool(out)
        if self.blocked or self.events & _WRITE:
            # A send changes only the write interest (read depends on input).
            self.update()
        if session.close_after_flush or session.output_paused:
            self.core.output_sent(session)

    def close(self) -> None:
        if self.events:
            self.loop.unregister(self.sock)
            self.events = 0
        try:
            self.sock.close()
        except OSError:
            pass


class StreamProtocol:
    """What a plugin implements to own an outbound connection (``ServerHandle.connect``).

    Every method is called on the event loop and must not block.
    """

    def connection_made(self, connection: "Outbound") -> None:
        """Connected (and, with TLS, the handshake done): ``connection.write`` may be used."""

    def data_received(self, data: bytes) -> None:
        """Bytes from the peer, as they arrived (any split)."""

    def connection_lost(self, error: Optional[str]) -> None:
        """The connection ended: ``None`` for a clean end of stream, else what went wrong.

        Also called when the connect or the handshake failed or timed out;
        called exactly once per :meth:`ServerHandle.connect`.
        """


class Outbound:
    """A client connection owned by the loop: connect, TLS, buffered writes, close.

    ``write`` never blocks: bytes wait in the output buffer until the socket
    takes them; ``buffered`` says how many wait (a plugin bounds it).
    """

    def __init__(self, loop: "Loop", host: str, port: int, protocol: StreamProtocol, *,
                 tls: Optional[ssl.SSLContext] = None, server_hostname: Optional[str] = None,
                 timeout: float = 10.0) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.protocol = protocol
        self.connected = False
        self.closed = False
        self._out = bytearray()
        self._events = 0
        self._handshaking = False
        self._sock: Optional[socket.socket] = None
        self._timer: Optional[TimerHandle] = loop.call_later(timeout, lambda: self._fail("connect timed out"))
        self._tls = tls
        self._server_hostname = server_hostname or host
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            # A name: resolving may block, so it runs in a thread and the connect follows on the loop.
            threading.Thread(target=self._resolve, name="ami-resolve", daemon=True).start()
            return
        self._connect(infos[0][0], infos[0][4])

    def _resolve(self) -> None:
        try:
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        except (socket.gaierror, UnicodeError) as exc:
            error = f"cannot resolve {self.host!r}: {exc}"
            then: Callable[[], None] = lambda: self._fail(error)  # noqa: E731
        else:
            then = lambda: self._connect(info[0], info[4])  # noqa: E731
        try:
            self.loop.call_soon_threadsafe(then)
        except OSError:
            pass  # the loop closed meanwhile: nobody waits for this connection

    def _connect(self, family: int, sockaddr: Any) -> None:
        if self.closed:
            return
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        self._sock = sock
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.loop.call_soon(lambda: self._fail(f"connect: {errno.errorcode.get(err, err)}"))
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._interest(_WRITE)

    @property
    def buffered(self) -> int:
        """Bytes written and not yet taken by the socket."""
        return len(self._out)

    def write(self, data: bytes) -> None:
        """Queue ``data``; it is sent as soon as the socket takes it."""
        if self.closed:
            return
        self._out += data
        if self.connected and not self._events & _WRITE:
            self._flush()

    def close(self) -> None:
        """Close now; ``connection_lost(None)`` follows on this call."""
        self._finish(None)

    # -- internals --------------------------------------------------------
    def _interest(self, events: int) -> None:
        if self._sock is not None:
            self._events = _watch(self.loop, self._sock, self._events, events, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        if self.closed:
            return
        if not self.connected and not self._handshaking:
            assert self._sock is not None
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(f"connect: {errno.errorcode.get(err, err)}")
                return
            if self._tls is not None:
                self._sock = self._tls.wrap_socket(
                    self._sock, server_side=False, do_handshake_on_connect=False,
                    server_hostname=self._server_hostname,
                )
                self._handshaking = True
            else:
                self._connected()
                return
        if self._handshaking:
            self._handshake()
            return
        if mask & _WRITE:
            self._flush()
        if mask & _READ and not self.closed:
            self._read()

    def _handshake(self) -> None:
        assert self._sock is not None
        try:
            waiting = _handshake_step(self._sock)
        except (OSError, ValueError) as exc:
            self._fail(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
            return
        if waiting:
            self._interest(waiting)
            return
        self._handshaking = False
        self._connected()

    def _connected(self) -> None:
        self.connected = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._interest(_READ | _WRITE if self._out else _READ)
        self.protocol.connection_made(self)
        if self._out and not self.closed:
            self._flush()

    def _read(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(_RECV_SIZE)
            if data and self._tls is not None:
                while self._sock.pending():  # type: ignore[attr-defined]
                    data += self._sock.recv(self._sock.pending())  # type: ignore[attr-defined]
        except _AGAIN:
            return
        except ssl.SSLZeroReturnError:
            data = b""
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        if not data:
            self._finish(None)
            return
        self.protocol.data_received(data)

    def _flush(self) -> None:
        assert self._sock is not None
        if self._out:
            try:
                sent = self._sock.send(self._out)
            except _AGAIN:
                sent = 0
            except OSError as exc:
                self._fail(exc.strerror or str(exc))
                return
            del self._out[:sent]
        self._interest(_READ | _WRITE if self._out else _READ)

    def _fail(self, error: str) -> None:
        self._finish(error)

    def _finish(self, error: Optional[str]) -> None:
        if self.closed:
            return
        self.closed = True
        self.connected = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            if self._events:
                self.loop.unregister(self._sock)
                self._events = 0
            try:
                self._sock.close()
            except OSError:
                pass
        self.protocol.connection_lost(error)


class Backoff:
    """Capped exponential backoff with jitter, for reconnecting on loop timers.

    ``next()`` gives the delay before the next attempt: ``initial`` doubling
    up to ``cap``, each scaled by a random factor in [1 - jitter, 1];
    ``reset()`` after a success.
    """

    def __init__(self, initial: float = 0.5, cap: float = 30.0, jitter: float = 0.2,
                 rng: Optional[random.Random] = None) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        if not 0 <= jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self._next = self.initial
