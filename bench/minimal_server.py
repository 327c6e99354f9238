"""A minimal AMI server for the benchmark: the ceiling of a one-thread selectors design.

It speaks just enough AMI for the benchmark's scenarios -- banner, Login
(plaintext, one user), Logoff, Ping, and UserEvent broadcast to sessions with
events on -- and nothing else: no privileges beyond on/off, no audit, no
plugins, no limits. Run: ``python bench/minimal_server.py PORT``.
"""

from __future__ import annotations

import selectors
import socket
import sys
import time

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
USER, SECRET = b"bench", b"bench-secret"


class Conn:
    __slots__ = ("sock", "inbuf", "out", "authed", "events", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = bytearray(BANNER)
        self.authed = False
        self.events = True
        self.writing = False


class MinimalServer:
    def __init__(self, port: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.conns: dict[int, Conn] = {}
        self.dirty: list[Conn] = []

    def serve(self) -> None:
        while True:
            for key, mask in self.sel.select():
                if key.data is None:
                    self.accept()
                    continue
                conn = key.data
                if mask & selectors.EVENT_READ:
                    self.read(conn)
                if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                    self.flush(conn)
            dirty, self.dirty = self.dirty, []
            for conn in dirty:
                if conn.sock.fileno() >= 0:
                    self.flush(conn)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)
            self.dirty.append(conn)

    def close(self, conn: Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        self.sel.unregister(conn.sock)
        conn.sock.close()

    def read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        buf = conn.inbuf + data
        start = 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                break
            self.handle(conn, buf[start:end])
            start = end + 4
            if conn.sock.fileno() < 0:
                return
        conn.inbuf = buf[start:]

    def handle(self, conn: Conn, message: bytes) -> None:
        headers = {}
        for line in message.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers.setdefault(name.strip().lower(), value.strip())
        action = headers.get(b"action", b"").lower()
        aid = headers.get(b"actionid")
        idline = b"ActionID: " + aid + b"\r\n" if aid is not None else b""
        if action == b"login":
            if headers.get(b"username") == USER and headers.get(b"secret") == SECRET:
                conn.authed = True
                conn.events = headers.get(b"events", b"on").lower() != b"off"
                self.send(conn, b"Response: Success\r\n" + idline + b"Message: Authentication accepted\r\n\r\n")
            else:
                self.send(conn, b"Response: Error\r\n" + idline + b"Message: Authentication failed\r\n\r\n")
        elif action == b"logoff":
            self.send(conn, b"Response: Goodbye\r\n" + idline + b"Message: Thanks for all the fish.\r\n\r\n")
            self.flush(conn)
            self.close(conn)
        elif not conn.authed:
            self.send(conn, b"Response: Error\r\n" + idline + b"Message: Permission denied\r\n\r\n")
        elif action == b"ping":
            self.send(conn, b"Response: Success\r\n" + idline + b"Ping: Pong\r\nTimestamp: %.6f\r\n\r\n" % time.time())
        elif action == b"userevent":
            self.send(conn, b"Response: Success\r\n" + idline + b"Message: Event Sent\r\n\r\n")
            event = (b"Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: "
                     + headers.get(b"userevent", b"") + b"\r\n\r\n")
            for other in self.conns.values():
                if other.authed and other.events:
                    self.send(other, event)
        else:
            self.send(conn, b"Response: Error\r\n" + idline + b"Message: Invalid/unknown command\r\n\r\n")

    def send(self, conn: Conn, data: bytes) -> None:
        if not conn.out:
            self.dirty.append(conn)
        conn.out += data

    def flush(self, conn: Conn) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close(conn)
                return
            del conn.out[:sent]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if (want != selectors.EVENT_READ) != conn.writing:
            conn.writing = not conn.writing
            self.sel.modify(conn.sock, want, conn)


if __name__ == "__main__":
    MinimalServer(int(sys.argv[1])).serve()
