"""A minimal AMI server for the benchmark: the ceiling of a one-thread selectors design.

It speaks just enough AMI for the benchmark's scenarios -- banner, Login
(plaintext, one user), Logoff, Ping, Hello (the example plugin's action:
``Message: Hello, <Name>!`` and a ``Hello`` event), and UserEvent broadcast to
sessions with events on -- and nothing else: no privileges beyond on/off, no
audit, no plugins, no limits. Run: ``python bench/minimal_server.py PORT``.

It is built to be as fast as one Python thread on ``selectors`` can be, so
that a ratio against it is a real ceiling: every message of a read is parsed
in one pass, the replies to one read leave in one ``send`` straight from the
read handler, other sessions' output (events) is flushed once per loop turn,
and the clock is read once per read.
"""

from __future__ import annotations

import selectors
import socket
import sys
import time

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
USER, SECRET = b"bench", b"bench-secret"
EVENT_READ, EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
READ_WRITE = EVENT_READ | EVENT_WRITE


class Conn:
    __slots__ = ("sock", "inbuf", "out", "authed", "events", "writing", "name")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = bytearray()
        self.authed = False
        self.events = True
        self.writing = False
        self.name = b""


def parse(message: bytes) -> tuple:
    """(action, ActionID line, other headers) of one message: first value of each name wins."""
    action = aid = None
    others = {}
    for line in message.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"action":
            if action is None:
                action = value.strip().lower()
        elif name == b"actionid":
            if aid is None:
                aid = b"ActionID: " + value.strip() + b"\r\n"
        elif name not in others:
            others[name] = value.strip()
    return action or b"", aid or b"", others


class MinimalServer:
    def __init__(self, port: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.sel.register(self.listener, EVENT_READ, None)
        self.conns: dict = {}
        self.dirty: list = []

    def serve(self) -> None:
        select, read, flush = self.sel.select, self.read, self.flush
        while True:
            for key, mask in select():
                conn = key.data
                if conn is None:
                    self.accept()
                    continue
                if mask & EVENT_READ:
                    read(conn)
                if mask & EVENT_WRITE and conn.sock.fileno() >= 0:
                    flush(conn)
            if self.dirty:
                dirty, self.dirty = self.dirty, []
                for conn in dirty:
                    if conn.out and conn.sock.fileno() >= 0:
                        flush(conn)

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
            self.sel.register(sock, EVENT_READ, conn)
            self.write(conn, BANNER)

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
        if conn.inbuf:
            data = conn.inbuf + data
        messages = data.split(b"\r\n\r\n")
        conn.inbuf = messages.pop()
        replies = []
        now = None
        for message in messages:
            action, aid, headers = parse(message)
            if action == b"ping" and conn.authed:
                if now is None:
                    now = b"Ping: Pong\r\nTimestamp: %.6f\r\n\r\n" % time.time()
                replies.append(b"Response: Success\r\n" + aid + now)
            elif action == b"hello" and conn.authed:
                name = headers.get(b"name") or b"World"
                replies.append(b"Response: Success\r\n" + aid + b"Message: Hello, " + name + b"!\r\n\r\n")
                self.broadcast(b"Event: Hello\r\nPrivilege: user,all\r\nName: " + name
                               + b"\r\nFrom: " + conn.name + b"\r\n\r\n")
            elif action == b"userevent" and conn.authed:
                replies.append(b"Response: Success\r\n" + aid + b"Message: Event Sent\r\n\r\n")
                self.broadcast(b"Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: "
                               + headers.get(b"userevent", b"") + b"\r\n\r\n")
            elif action == b"login":
                if headers.get(b"username") == USER and headers.get(b"secret") == SECRET:
                    conn.authed, conn.name = True, USER
                    conn.events = headers.get(b"events", b"on").lower() != b"off"
                    replies.append(b"Response: Success\r\n" + aid + b"Message: Authentication accepted\r\n\r\n")
                else:
                    replies.append(b"Response: Error\r\n" + aid + b"Message: Authentication failed\r\n\r\n")
            elif action == b"logoff":
                replies.append(b"Response: Goodbye\r\n" + aid + b"Message: Thanks for all the fish.\r\n\r\n")
                self.write(conn, b"".join(replies))
                self.flush(conn)
                self.close(conn)
                return
            elif not conn.authed:
                replies.append(b"Response: Error\r\n" + aid + b"Message: Permission denied\r\n\r\n")
            else:
                replies.append(b"Response: Error\r\n" + aid + b"Message: Invalid/unknown command\r\n\r\n")
        if replies:
            if conn.out:
                conn.out += b"".join(replies)
                return
            reply = b"".join(replies)
            try:
                sent = conn.sock.send(reply)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close(conn)
                return
            if sent < len(reply):
                conn.out += reply[sent:]
                self.want_write(conn, True)

    def broadcast(self, event: bytes) -> None:
        for other in self.conns.values():
            if other.authed and other.events:
                self.write(other, event)

    def write(self, conn: Conn, data: bytes) -> None:
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
        self.want_write(conn, bool(conn.out))

    def want_write(self, conn: Conn, wanted: bool) -> None:
        if wanted != conn.writing:
            conn.writing = wanted
            self.sel.modify(conn.sock, READ_WRITE if wanted else EVENT_READ, conn)


if __name__ == "__main__":
    MinimalServer(int(sys.argv[1])).serve()
