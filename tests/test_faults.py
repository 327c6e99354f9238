"""Faults and attacks over real sockets.

Every test keeps a well-behaved client logged in and asserts, in its own
body, that it is still served afterwards and that ``on_session_close`` ran
exactly once for every session ``on_session_open`` saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from typing import Tuple

from ami_server import Action, Block, Response, hookimpl
from ami_server.testing import make_config, running_server

from helpers import USERS


class Ledger:
    """Counts hook calls per session; optionally raises in every hook it implements."""

    def __init__(self, misbehave=False):
        self.misbehave = misbehave
        self.lock = threading.Lock()
        self.opened = Counter()
        self.closed = Counter()

    def _maybe_raise(self, where):
        if self.misbehave:
            raise RuntimeError(f"{where} failed on purpose")

    @hookimpl
    def on_session_open(self, session):
        with self.lock:
            self.opened[session.session_id] += 1
        self._maybe_raise("on_session_open")

    @hookimpl
    def on_session_close(self, session, reason):
        with self.lock:
            self.closed[session.session_id] += 1
        self._maybe_raise("on_session_close")

    @hookimpl
    def on_event(self, event):
        self._maybe_raise("on_event")

    @hookimpl
    def authenticate(self, request):
        self._maybe_raise("authenticate")
        return None

    @hookimpl
    def register_actions(self):
        def big_list(ctx):
            return Response.list([Block("Item", {"N": n, "Pad": "x" * 200}) for n in range(5000)], "ItemsComplete")

        def crash(ctx):
            self._maybe_raise("handler")
            return Response.success("no crash")

        return [
            Action("BigList", big_list, "A large list response.", ()),
            Action("Crash", crash, "Raise when misbehaving.", ()),
        ]

    def settled(self, timeout: float = 10.0) -> Tuple[Counter, Counter]:
        """Wait (at most ``timeout`` seconds) until every opened session was closed; the counts per session.

        Returns ``(opened, closed)``; on time-out, what was seen so far.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                opened, closed = Counter(self.opened), Counter(self.closed)
            if set(closed) == set(opened) or time.monotonic() >= deadline:
                return opened, closed
            time.sleep(0.02)


def closed_once_each(ledger: Ledger) -> bool:
    """Whether every session the ledger saw open was closed, and each hook ran exactly once per session."""
    opened, closed = ledger.settled()
    return opened == closed and set(opened.values()) <= {1}


@contextlib.contextmanager
def served(ledger=None, backends=("config",), **server):
    """A server with ``ledger`` as a plugin and a logged-in client; checks nothing itself."""
    ledger = ledger or Ledger()
    cfg = make_config({"users": USERS, "auth": {"backends": list(backends)}}, **server)
    with running_server(cfg, extra_plugins=[("ledger", ledger)], entry_points=()) as srv:
        with srv.client() as good:
            good.login("admin", "adminpass", events="off")
            yield srv, good, ledger


def still_served(good) -> bool:
    """Whether the well-behaved client's Ping is still answered, with its own ActionID."""
    return good.action("Ping", {"ActionID": "still-here"})["ActionID"] == "still-here"


def raw(srv):
    return socket.create_connection((srv.host, srv.port), timeout=5)


def reset(sock):
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def drain_until_closed(sock, timeout=5.0):
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def client_hello() -> bytes:
    """The first bytes a real TLS client sends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_garbage_on_the_plain_port():
    rng = random.Random(7)
    payloads = [
        bytes(rng.randrange(256) for _ in range(4096)),
        b"\x00" * 2000 + b"\r\n\r\n",
        b"Action: Ping\r\nActionID: \xff\xfe\xc3\x28\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8\r\n\r\n",
        client_hello(),
        b"\r\n" * 5000,
        b":" * 3000 + b"\r\n\r\n",
    ]
    with served() as (srv, good, ledger):
        for payload in payloads:
            sock = raw(srv)
            try:
                assert sock.recv(100) == b"Asterisk Call Manager/11.0.0\r\n"
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                reply = drain_until_closed(sock)
            finally:
                sock.close()
            # Whatever came back is whole AMI error blocks, never a crash or a success.
            blocks = reply.split(b"\r\n\r\n")
            assert blocks[-1] == b""
            assert all(block.startswith(b"Response: Error\r\n") for block in blocks[:-1]), blocks[:3]
            assert b"Traceback" not in reply
            assert good.action("Ping")["Ping"] == "Pong"
        invalid = raw(srv)
        invalid.recv(100)
        invalid.sendall(b"Action: Ping\r\nActionID: \xff\xfe\xc3\x28\r\n\r\n")
        reply = invalid.recv(200)
        # Invalid UTF-8 round-trips byte for byte in the ActionID (P-1.4).
        assert reply == b"Response: Error\r\nActionID: \xff\xfe\xc3\x28\r\nMessage: Permission denied\r\n\r\n"
        invalid.close()
        assert still_served(good)
    # One session per payload, the invalid one and the good one, each closed exactly once.
    opened, closed = ledger.settled()
    assert len(opened) == len(payloads) + 2
    assert closed == opened and set(opened.values()) == {1}
    # Nothing went wrong inside the server: no warning or error record.
    assert [r for r in srv.log.records() if r["level"] not in ("info", "debug")] == []


def test_resets_mid_message_and_mid_reply():
    with served() as (srv, good, ledger):
        for _ in range(20):
            sock = raw(srv)
            sock.recv(100)
            sock.sendall(b"Action: Login\r\nUsername: admin\r\nSecr")
            reset(sock)
        for _ in range(5):
            sock = raw(srv)
            sock.recv(100)
            sock.sendall(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n"
                         b"Action: BigList\r\n\r\n")
            sock.recv(10)  # the reply has started
            reset(sock)
        assert good.action("BigList", {"ActionID": "mine"})["EventList"] == "start"
        blocks = [good.read_block() for _ in range(5001)]
        assert blocks[-1]["Event"] == "ItemsComplete" and blocks[-1]["ListItems"] == "5000"
        assert still_served(good)
    assert closed_once_each(ledger)
    assert len(ledger.opened) == 26  # 20 cut mid-message, 5 mid-reply, the good one


def test_close_during_a_list_reply_and_during_waitevent():
    with served() as (srv, good, ledger):
        for _ in range(5):
            with srv.client() as c:
                c.login("admin", "adminpass", events="off")
                c.send("BigList")
        for _ in range(5):
            c = srv.client()
            c.login("admin", "adminpass", events="off")
            c.send("WaitEvent", {"Timeout": "30"})
            good.action("Ping")  # the wait is in place
            c.close()
        # An event after the waiters left is delivered to no closed session, and breaks nothing.
        assert good.action("UserEvent", {"UserEvent": "after"})["Message"] == "Event Sent"
        assert still_served(good)
    assert closed_once_each(ledger)
    assert len(ledger.opened) == 11
    # Each close is seen as the client going away (while reading, or while writing the list to it).
    reasons = Counter(r["reason"] for r in srv.log.records("SessionClosed"))
    assert sum(reasons.values()) == 11 and set(reasons) <= {"peer closed", "I/O error"}, reasons


def test_slowloris_is_cut_off_by_auth_timeout_while_others_are_served():
    with served(auth_timeout=1.0) as (srv, good, ledger):
        sock = raw(srv)
        sock.recv(100)
        line = b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\n"
        started = time.monotonic()
        closed = False
        for byte in line * 10:
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = True
                break
            assert good.action("Ping", timeout=2)["Ping"] == "Pong"
            if time.monotonic() - started > 5:
                break
            sock.settimeout(0.05)
            try:
                if sock.recv(100) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
        sock.close()
        assert closed, "the slow sender was never disconnected"
        assert still_served(good)
    assert closed_once_each(ledger)
    assert any(r["event"] == "AuthTimeout" for r in srv.log.records())


def test_two_thousand_connections_opened_and_dropped():
    with served(auth_limit=5000) as (srv, good, ledger):
        batch = []
        for n in range(2000):
            sock = raw(srv)
            batch.append(sock)
            if len(batch) == 200:
                for s in batch:
                    if n % 400 < 200:
                        s.close()
                    else:
                        reset(s)
                batch = []
                assert good.action("Ping", timeout=5)["Ping"] == "Pong"
        for s in batch:
            s.close()
        assert still_served(good)
    assert closed_once_each(ledger)
    assert len(ledger.opened) >= 1000  # most connections became sessions before they were dropped


def test_auth_limit_flood():
    with served(auth_limit=20) as (srv, good, ledger):
        socks = [raw(srv) for _ in range(200)]
        try:
            banners = 0
            for s in socks:
                s.settimeout(2)
                try:
                    if s.recv(100).startswith(b"Asterisk Call Manager"):
                        banners += 1
                except (socket.timeout, ConnectionResetError):
                    pass
            assert banners == 20
            assert good.action("Ping")["Ping"] == "Pong"
        finally:
            for s in socks:
                s.close()
        assert still_served(good)
    assert closed_once_each(ledger)
    limited = srv.log.records("AuthLimitReached")
    assert len(limited) == 180


def test_brute_force_logins_are_delayed_one_by_one_without_stalling_anyone():
    delay = 0.3
    with served(login_failure_delay=delay) as (srv, good, ledger):
        clients = [srv.client() for _ in range(30)]
        try:
            started = time.monotonic()
            for n, c in enumerate(clients):
                c.send("Login", {"Username": "admin", "Secret": f"guess-{n}"})
            # While thirty failures wait out their delay, the good client is answered.
            assert good.action("Ping", timeout=1)["Ping"] == "Pong"
            answered = []
            for c in clients:
                assert c.read_until_closed() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
                answered.append(time.monotonic() - started)
        finally:
            for c in clients:
                c.close()
        # Each failure waited out its own delay; the delays ran side by side, not in a queue (30 x 0.3 s).
        assert min(answered) >= delay
        assert max(answered) < 30 * delay / 2
        assert still_served(good)
    assert closed_once_each(ledger)
    failed = srv.log.records(login="LoginFailed")
    assert len(failed) == 30 and all(r["reason"] == "invalid_password" for r in failed)


def test_a_challenge_answer_cannot_be_replayed_on_another_connection_a_3_6():
    with served() as (srv, good, ledger):
        with srv.client() as first:
            challenge = first.action("Challenge", {"AuthType": "MD5"})["Challenge"]
            key = hashlib.md5((challenge + "adminpass").encode()).hexdigest()
            assert first.action("Login", {"AuthType": "MD5", "Username": "admin", "Key": key})["Response"] == "Success"
        for ask_challenge in (False, True):
            with srv.client() as second:
                if ask_challenge:
                    assert second.action("Challenge", {"AuthType": "MD5"})["Challenge"] != challenge
                second.send("Login", {"AuthType": "MD5", "Username": "admin", "Key": key})
                assert second.read_until_closed() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
        assert still_served(good)
    assert closed_once_each(ledger)


def test_cr_lf_injection_through_actionid_and_userevent_headers_p_1_20():
    with served() as (srv, good, ledger):
        with srv.client() as c:
            c.login("admin", "adminpass", events="user")
            c.send_raw(b"Action: Ping\r\nActionID: a\rEvent: Forged\r\n\r\n")
            reply = c.read_block()
            assert reply.raw.startswith(b"Response: Success\r\nActionID: a Event: Forged\r\n")
            c.send_raw(b"Action: UserEvent\r\nUserEvent: x\rEvent: Forged\r\nData: 1\n\nEvent: Forged2\r\n\r\n")
            blocks = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and len(blocks) < 3:
                blocks.append(c.read_block(timeout=3))
            names = [b.lines[0] for b in blocks]
            assert ("Event", "Forged") not in names and ("Event", "Forged2") not in names
            event = next(b for b in blocks if b.get("Event") == "UserEvent")
            assert event["UserEvent"] == "x Event: Forged"
            # "Event: Forged2" after the bare blank line is a new request, answered as one.
            assert any(b.get("Message") == "Missing action in request" for b in blocks)
        assert still_served(good)
    assert closed_once_each(ledger)


def test_two_sessions_using_the_same_actionid():
    with served() as (srv, good, ledger):
        with srv.client() as a, srv.client() as b:
            a.login("admin", "adminpass", events="off")
            b.login("reader", "readerpass", events="off")
            for _ in range(50):
                a.send("Ping", {"ActionID": "same"})
                b.send("ListCommands", {"ActionID": "same"})
            for _ in range(50):
                assert a.read_response()["Ping"] == "Pong"
                assert "Ping" in b.read_response() and b.buffer.count(b"Pong") == 0
        assert still_served(good)
    assert closed_once_each(ledger)


def test_a_plugin_raising_in_every_hook():
    ledger = Ledger(misbehave=True)
    with served(ledger, backends=("config", "ledger")) as (srv, good, _):
        with srv.client() as c:
            c.send("Login", {"Username": "stranger", "Secret": "x"})  # config passes it to the raising backend
            assert c.read_until_closed() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
        assert good.action("Crash")["Message"] == "Internal error"
        with srv.client() as listener:
            listener.login("admin", "adminpass", events="user")
            assert good.action("UserEvent", {"UserEvent": "still-delivered"})["Message"] == "Event Sent"
            assert listener.wait_event("UserEvent")["UserEvent"] == "still-delivered"  # on_event raised
        with srv.client() as watcher:
            pass
        assert watcher.banner == b"Asterisk Call Manager/11.0.0"
        assert still_served(good)
    assert closed_once_each(ledger)
    text = srv.log.text()
    for hook in ("on_session_open", "on_session_close", "on_event", "authenticate", "handler"):
        assert f"{hook} failed on purpose" in text, hook
