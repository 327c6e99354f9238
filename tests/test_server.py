"""End-to-end behaviour over real sockets against a server thread."""

from __future__ import annotations

import select
import selectors
import socket
import threading
import time

import pytest

from ami_server import Action, ActionError, Event, Response, hookimpl
from ami_server.testing import make_config, running_server

from conftest import USERS, wait_for


def config(**server):
    return make_config({"users": USERS}, **server)


def test_own_userevent_follows_the_response_r_2_10():
    with running_server(config()) as srv, srv.client() as c:
        assert c.login("admin", "adminpass", events="user")["Message"] == "Authentication accepted"
        c.send("UserEvent", [("UserEvent", "Mine"), ("ActionID", "u1")])
        first = c.read_block()
        second = c.read_block()
        assert first["Response"] == "Success" and first["Message"] == "Event Sent"
        assert second["Event"] == "UserEvent" and second["UserEvent"] == "Mine"


def test_events_reach_only_sessions_whose_classes_and_mask_allow_c_4_5():
    with running_server(config()) as srv, srv.client() as admin, srv.client() as limited, srv.client() as masked:
        admin.login("admin", "adminpass", events="off")
        limited.login("limited", "limitedpass")
        masked.login("reader", "readerpass", events="call")
        admin.action("UserEvent", [("UserEvent", "X")])
        # Ping after the event: its response would come after the event if one were sent.
        for client in (limited, masked):
            reply = client.action("Ping")
            assert reply["Ping"] == "Pong"
            assert client.events == []


def test_failed_login_delay_does_not_block_other_sessions_a_3_8():
    with running_server(config(login_failure_delay=1.0)) as srv, srv.client() as bad, srv.client() as good:
        good.login("admin", "adminpass", events="off")
        bad.send("Login", [("Username", "admin"), ("Secret", "wrong"), ("ActionID", "b")])
        bad.send("Login", [("Username", "admin"), ("Secret", "adminpass")])  # pipelined: never processed
        for _ in range(5):
            assert good.action("Ping")["Ping"] == "Pong"
        bad.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            bad.sock.recv(100)  # still inside the delay
        bad.sock.setblocking(True)
        rest = bad.read_until_closed(timeout=5)
        assert rest == b"Response: Error\r\nActionID: b\r\nMessage: Authentication failed\r\n\r\n"


def test_login_in_use_a_3_13():
    with running_server(config(allow_multiple_login=False)) as srv, srv.client() as first, srv.client() as second:
        first.login("admin", "adminpass")
        second.send("Login", [("Username", "ADMIN"), ("Secret", "irrelevant"), ("ActionID", "dup")])
        assert second.read_until_closed() == (
            b"Response: Error\r\nActionID: dup\r\nMessage: Login Already In Use\r\n\r\n"
        )
        event = first.wait_event("SessionLimit")
        assert event["AccountID"] == "ADMIN"
        # Another user is not affected.
        with srv.client() as other:
            assert other.login("reader", "readerpass")["Message"] == "Authentication accepted"


def test_per_user_override_of_multiple_login():
    users = dict(USERS, solo={"secret": "solopass", "read": "all", "write": "all", "allow_multiple_login": False})
    with running_server(make_config({"users": users})) as srv, srv.client() as a, srv.client() as b, srv.client() as c:
        a.login("solo", "solopass")
        b.send("Login", [("Username", "solo"), ("Secret", "solopass")])
        assert b"Login Already In Use" in b.read_until_closed()
        c.login("admin", "adminpass")
        with srv.client() as d:
            assert d.login("admin", "adminpass")["Message"] == "Authentication accepted"


def test_slow_consumer_is_cut_off_and_others_are_served_q_7_6():
    limit = 65536
    with running_server(config(output_queue_limit=limit)) as srv:
        slow = socket.create_connection((srv.host, srv.port), timeout=5)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"Action: Login\r\nUsername: reader\r\nSecret: readerpass\r\nEvents: user\r\n\r\n")
        with srv.client() as publisher, srv.client() as pinger:
            publisher.login("admin", "adminpass", events="off")
            pinger.login("reader", "readerpass", events="off")
            payload = "x" * 900
            closed = False
            for i in range(5000):
                publisher.action("UserEvent", [("UserEvent", "Flood"), ("Data", payload)])
                if i % 50 == 0:
                    assert pinger.action("Ping")["Ping"] == "Pong"
                    if srv.call(lambda: srv.server.stats["slow_consumer_disconnects"]):
                        closed = True
                        break
            assert closed, "the stalled session was never disconnected"
            assert pinger.action("Ping")["Ping"] == "Pong"
        slow.close()
        text = srv.log.text()
        assert '"event": "SlowConsumerDisconnect"' in text
        assert '"reason": "slow consumer"' in text
        # Memory stayed bounded: nothing is buffered beyond the limit for any session.
        assert srv.call(lambda: max((len(s.out) for s in srv.server.sessions.values()), default=0)) <= limit


def test_pipelining_without_reading_is_slowed_not_cut_q_7_7():
    count = 30000
    with running_server(config(output_queue_limit=65536)) as srv, srv.client(timeout=20) as c:
        c.login("admin", "adminpass", events="off")
        data = b"".join(b"Action: Ping\r\nActionID: p%d\r\n\r\n" % i for i in range(count))
        sender = threading.Thread(target=c.sock.sendall, args=(data,), daemon=True)
        c.sock.settimeout(20)
        sender.start()
        time.sleep(0.5)  # let both socket buffers fill while nobody reads
        for i in range(count):
            reply = c.read_block(timeout=20)
            assert reply["ActionID"] == f"p{i}"
        sender.join(5)
        assert not sender.is_alive()


class _HandPlayed:
    """A server in this thread whose loop turns the test plays itself, with raw client sockets."""

    def __init__(self, cfg):
        from ami_server.audit import MemorySink
        from ami_server.server import Server

        self.server = Server(cfg, log_sink=MemorySink(), entry_points=())
        self.host, self.port = self.server.start()
        self.socks = []

    def serve_until(self, done, what):
        wait_for(lambda: self.server.run_once(0.01) or done(), what)

    def logged_in(self, rcvbuf=None):
        """A raw socket logged in as admin with events off, and its server-side session."""
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect((self.host, self.port))
        self.socks.append(sock)
        port = sock.getsockname()[1]
        self.serve_until(lambda: any(s.remote[1] == port for s in self.server.sessions.values()), "the accept")
        session = next(s for s in self.server.sessions.values() if s.remote[1] == port)
        sock.sendall(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        received = bytearray()
        self.serve_until(lambda: self.drain(sock, received) and b"Authentication accepted\r\n\r\n" in received, "the login")
        return sock, session

    @staticmethod
    def drain(sock, into):
        """Append whatever has arrived (loopback: all that the server sent); always true."""
        while select.select([sock], [], [], 0)[0]:
            data = sock.recv(65536)
            if not data:
                break
            into += data
        return True

    def close(self):
        for sock in self.socks:
            sock.close()
        self.server.stop()
        self.server.serve_forever()


def test_one_loop_turn_serves_at_most_messages_per_turn_of_a_session():
    """A client pipelining many requests gets MESSAGES_PER_TURN answers per loop turn; the others'
    requests are served in the same turn, and the rest of its own follow on later turns, in order."""
    from ami_server.server import MESSAGES_PER_TURN

    played = _HandPlayed(config())
    try:
        (greedy, greedy_session), (other, other_session) = played.logged_in(), played.logged_in()
        count = MESSAGES_PER_TURN * 2 + 10
        greedy.sendall(b"".join(b"Action: Ping\r\nActionID: g%d\r\n\r\n" % i for i in range(count)))
        other.sendall(b"Action: Ping\r\nActionID: o\r\n\r\n")
        session_socks = [greedy_session.sock, other_session.sock]
        # What the turn will read has arrived (the greedy client's bytes all: one sendall on loopback).
        wait_for(lambda: len(select.select(session_socks, [], [], 0.01)[0]) == 2, "both requests")
        greedy_session.on_ready(selectors.EVENT_READ)
        other_session.on_ready(selectors.EVENT_READ)
        played.server._flush_dirty()
        first_turn, others = bytearray(), bytearray()
        played.drain(greedy, first_turn)
        played.drain(other, others)
        assert first_turn.count(b"Ping: Pong") == MESSAGES_PER_TURN
        assert b"ActionID: o\r\n" in others
        rest = bytearray(first_turn)
        played.serve_until(lambda: played.drain(greedy, rest) and rest.count(b"Ping: Pong") == count, "the rest")
        ids = [line[len(b"ActionID: "):] for line in bytes(rest).split(b"\r\n") if line.startswith(b"ActionID: ")]
        assert ids == [b"g%d" % i for i in range(count)]
    finally:
        played.close()


def _stamps(data):
    """The Timestamp values in ``data``, in whole microseconds."""
    stamps = []
    for line in bytes(data).split(b"\r\n"):
        if line.startswith(b"Timestamp: "):
            seconds, micro = line[len(b"Timestamp: "):].split(b".")
            stamps.append(int(seconds) * 1_000_000 + int(micro))
    return stamps


def _now():
    """The wall clock in whole microseconds, truncated as Timestamp headers are."""
    return time.time_ns() // 1000


def test_pings_answered_from_one_read_share_a_timestamp_inside_their_round_trip_b_5_5():
    """Pipelined Pings taken from one read carry one clock reading, taken after they arrived and before
    the replies left; a Ping in a later read of its own reads the clock afresh."""
    played = _HandPlayed(config())
    try:
        sock, session = played.logged_in()
        before = _now()
        sock.sendall(b"".join(b"Action: Ping\r\nActionID: p%d\r\n\r\n" % i for i in range(5)))
        wait_for(lambda: select.select([session.sock], [], [], 0.01)[0], "the requests")  # one sendall: one read
        session.on_ready(selectors.EVENT_READ)
        played.server._flush_dirty()
        batch = bytearray()
        played.serve_until(lambda: played.drain(sock, batch) and batch.count(b"Ping: Pong") == 5, "five replies")
        between = _now()
        stamps = _stamps(batch)
        assert len(stamps) == 5 and len(set(stamps)) == 1
        stamp_text = b"%d.%06d" % divmod(stamps[0], 1_000_000)
        assert bytes(batch) == b"".join(
            b"Response: Success\r\nActionID: p%d\r\nPing: Pong\r\nTimestamp: %s\r\n\r\n" % (i, stamp_text) for i in range(5)
        )
        assert before <= stamps[0] <= between
        # The next Ping arrives alone (the read that parses without buffering) and after `between`.
        sock.sendall(b"Action: Ping\r\nActionID: alone\r\n\r\n")
        single = bytearray()
        played.serve_until(lambda: played.drain(sock, single) and b"Ping: Pong" in single, "the lone reply")
        (stamp,) = _stamps(single)
        assert between <= stamp <= _now()
    finally:
        played.close()


def test_a_shared_clock_reading_is_never_kept_by_another_thread():
    """ActionContext.timestamp from a blocking handler's thread reads the clock but never stores it:
    the loop closes the read's scope, and a stored reading would outlive it."""
    from ami_server.server import _SessionBackend

    played = _HandPlayed(config())
    try:
        played.server.run_once(0)  # the loop thread is this one
        backend = _SessionBackend("Ping", "", 0.0, None, False)
        backend.server = played.server
        played.server._read_stamp = ""  # a read's scope is open on the loop
        stamps = []
        worker = threading.Thread(target=lambda: stamps.append(backend.timestamp()))
        worker.start()
        worker.join(5)
        assert len(stamps) == 1 and stamps[0]
        assert played.server._read_stamp == ""
        assert backend.timestamp() == played.server._read_stamp != ""  # the loop's own call keeps it
        played.server._read_stamp = None
        assert backend.timestamp() and played.server._read_stamp is None  # outside a read: nothing kept
    finally:
        played.server._read_stamp = None
        played.close()


def test_output_over_the_limit_pauses_dispatching_q_7_7():
    """A client that sends without reading: the server stops answering once the session's unsent
    output passes output_queue_limit (by at most one reply), and resumes when the client reads."""
    limit = 65536  # the smallest the configuration allows
    played = _HandPlayed(config(output_queue_limit=limit))
    try:
        sock, session = played.logged_in(rcvbuf=4096)
        session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel refuses early
        count = 20000  # 1.5 MB of replies
        sender = threading.Thread(
            target=sock.sendall, args=(b"".join(b"Action: Ping\r\nActionID: %d\r\n\r\n" % i for i in range(count)),),
            daemon=True,
        )
        sender.start()
        played.serve_until(lambda: session.output_paused, "dispatching to pause")
        reply = len(b"Response: Success\r\nActionID: 19999\r\nPing: Pong\r\nTimestamp: 1795000000.000000\r\n\r\n")
        assert limit < len(session.out) <= limit + reply
        for _ in range(20):  # more turns while nobody reads: still bounded
            played.server.run_once(0)
        assert len(session.out) <= limit + reply
        received = bytearray()
        played.serve_until(lambda: played.drain(sock, received) and received.count(b"Ping: Pong") == count, "all replies")
        sender.join(5)
    finally:
        played.close()


def test_output_limit_holds_for_requests_read_one_at_a_time_q_7_7():
    """Each request in a read of its own (the path that parses without buffering) pauses the same way."""
    limit = 65536
    played = _HandPlayed(config(output_queue_limit=limit))
    try:
        sock, session = played.logged_in(rcvbuf=4096)
        session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        reply = len(b"Response: Success\r\nActionID: 9999\r\nPing: Pong\r\nTimestamp: 1795000000.000000\r\n\r\n")
        sent = 0
        while not session.output_paused:
            assert sent < 5000, "dispatching never paused"
            sock.sendall(b"Action: Ping\r\nActionID: %d\r\n\r\n" % sent)
            sent += 1
            played.serve_until(lambda: session.parser.buffered == 0 or session.output_paused, "the request read")
            assert len(session.out) <= limit + reply
        received = bytearray()
        played.serve_until(lambda: played.drain(sock, received) and received.count(b"Ping: Pong") == sent, "all replies")
    finally:
        played.close()


def test_end_of_stream_answers_complete_messages_p_1_17():
    with running_server(config()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        c.send_raw(b"Action: Ping\r\nActionID: 1\r\n\r\nAction: Ping\r\nActionID: 2\r\n\r\nAction: Pi")
        c.sock.shutdown(socket.SHUT_WR)
        data = c.read_until_closed()
        assert data.count(b"Ping: Pong") == 2 and b"ActionID: 2" in data


class Recorder:
    """A plugin that records hook calls and can misbehave on demand."""

    def __init__(self):
        self.opened = []
        self.closed = []
        self.events = []

    @hookimpl
    def on_session_open(self, session):
        self.opened.append(session.session_id)
        raise RuntimeError("open hook failure")

    @hookimpl
    def on_session_close(self, session, reason):
        self.closed.append((session.session_id, reason))
        raise RuntimeError("close hook failure")

    @hookimpl
    def on_event(self, event):
        self.events.append(event.name)
        raise RuntimeError("event hook failure")

    @hookimpl
    def register_actions(self, server):
        self.server = server

        def boom(ctx):
            raise ZeroDivisionError("plugin bug")

        def refuse(ctx):
            raise ActionError("Not today", {"Reason": "testing"})

        def bad_reply(ctx):
            return "not a response"

        def later(ctx):
            deferred = ctx.defer()
            threading.Timer(0.05, deferred.complete, [Response.success("Done later")]).start()
            return deferred

        def never(ctx):
            deferred = ctx.defer()
            self.abandoned = deferred
            return deferred

        return [
            Action("Boom", boom, "Raise.", ()),
            Action("Refuse", refuse, "Refuse.", ()),
            Action("BadReply", bad_reply, "Return junk.", ()),
            Action("Later", later, "Answer from a thread.", ()),
            Action("Never", never, "Never answer.", ()),
        ]


class Second:
    def __init__(self):
        self.events = []
        self.opened = 0

    @hookimpl
    def on_event(self, event):
        self.events.append(event.name)

    @hookimpl
    def on_session_open(self, session):
        self.opened += 1


def test_plugin_failures_are_contained_r_2_12_q_7_5():
    recorder, second = Recorder(), Second()
    cfg = config(action_timeout=0.3)
    with running_server(cfg, extra_plugins=[("recorder", recorder), ("second", second)]) as srv:
        with srv.client() as c:
            c.login("admin", "adminpass", events="user")
            assert c.action("Boom", {"ActionID": "b1"}).lines == [
                ("Response", "Error"), ("ActionID", "b1"), ("Message", "Internal error")
            ]
            reply = c.action("Refuse")
            assert reply["Message"] == "Not today" and reply["Reason"] == "testing"
            assert c.action("BadReply")["Message"] == "Internal error"
            assert c.action("Later")["Message"] == "Done later"
            assert c.action("Never", {"ActionID": "n"})["Message"] == "Action timed out"
            assert recorder.abandoned.complete(Response.success("too late")) is False
            assert c.action("Ping")["Ping"] == "Pong"
            c.action("UserEvent", {"UserEvent": "Seen"})
            c.wait_event("UserEvent")
            session_id = recorder.opened[0]
        deadline = time.monotonic() + 5
        while not recorder.closed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert recorder.closed == [(session_id, "peer closed")]
    assert second.opened == 1
    assert "UserEvent" in second.events and "UserEvent" in recorder.events
    text = srv.log.text()
    assert "ZeroDivisionError" in text and "open hook failure" in text and "event hook failure" in text


def test_publish_from_another_thread_q_7_1():
    recorder = Recorder()
    with running_server(config(), extra_plugins=[("recorder", recorder)]) as srv, srv.client() as c:
        c.login("reader", "readerpass")
        thread = threading.Thread(
            target=recorder.server.publish, args=(Event("Outside", "call", {"Source": "thread"}),)
        )
        thread.start()
        thread.join(5)
        event = c.wait_event("Outside")
        assert event.raw == b"Event: Outside\r\nPrivilege: call,all\r\nSource: thread\r\n\r\n"


def test_event_values_cannot_forge_lines_p_1_20():
    """P-1.20: a CR or LF inside a published value becomes a space; the event keeps its lines."""
    recorder = Recorder()
    with running_server(config(), extra_plugins=[("recorder", recorder)]) as srv, srv.client() as c:
        c.login("admin", "adminpass")
        recorder.server.publish(Event("Forge", "call", [("A", "x\r\nEvent: Fake"), ("B", "y\rz"), ("C", "w\n")]))
        event = c.wait_event("Forge")
        assert event.raw == b"Event: Forge\r\nPrivilege: call,all\r\nA: x  Event: Fake\r\nB: y z\r\nC: w \r\n\r\n"
        # A lone CR typed into a UserEvent header (kept inside the line, P-1.4) is cleaned on the way out.
        c.send_raw(b"Action: UserEvent\r\nUserEvent: Mine\r\nNote: a\rb\r\n\r\n")
        assert c.wait_event("UserEvent")["Note"] == "a b"


class Burst:
    """A plugin action that publishes ``Count`` events in one go, classes alternating user, call, user+call."""

    CLASSES = ("user", "call", ["user", "call"])

    @hookimpl
    def register_actions(self, server):
        def burst(ctx):
            tag = ctx.request.get("Tag") or ""
            for number in range(int(ctx.request.get("Count") or "0")):
                ctx.publish(Event("Seq", self.CLASSES[number % 3], [("Tag", tag), ("N", str(number))]))
            return Response.success("Burst sent")

        return [Action("Burst", burst, "Publish a burst of events.", "user")]


def _blocks_until(client, predicate):
    blocks = []
    while True:
        block = client.read_block()
        blocks.append(block)
        if predicate(block):
            return blocks


def test_bursts_reach_each_session_in_order_by_class_mask_and_filter_q_7_2_to_q_7_4():
    """Q-7.2 to Q-7.4, R-2.10, B-5.6, B-5.13: however events are batched, each session sees exactly
    the events its classes, mask and filters allow, in publication order, own events after its reply."""
    with running_server(config(), extra_plugins=[("burst", Burst())]) as srv, \
            srv.client() as everything, srv.client() as calls_only, srv.client() as filtered, \
            srv.client() as publisher:
        everything.login("admin", "adminpass")
        calls_only.login("limited", "limitedpass")
        filtered.login("admin", "adminpass")
        assert filtered.action("Filter", {"Operation": "Add", "Filter": "!N: [02468]\r"})["Response"] == "Success"
        publisher.login("admin", "adminpass", events="user")
        # Pipelined: a burst, events off, a second burst, events back on, a third.
        publisher.send_raw(
            b"Action: Burst\r\nActionID: b1\r\nTag: one\r\nCount: 7\r\n\r\n"
            b"Action: Events\r\nActionID: e1\r\nEventMask: off\r\n\r\n"
            b"Action: Burst\r\nActionID: b2\r\nTag: two\r\nCount: 5\r\n\r\n"
            b"Action: Events\r\nActionID: e2\r\nEventMask: user\r\n\r\n"
            b"Action: Burst\r\nActionID: b3\r\nTag: three\r\nCount: 4\r\n\r\n"
        )
        published = [(tag, n) for tag, count in (("one", 7), ("two", 5), ("three", 4)) for n in range(count)]
        user = {0}  # n % 3 of the events of class user alone (user+call needs call too)

        def seen(blocks):
            return [(b["Tag"], int(b["N"])) for b in blocks if b.get("Event") == "Seq"]

        last = lambda b: b.get("Tag") == "three" and b.get("N") == "3"  # noqa: E731
        assert seen(_blocks_until(everything, last)) == published
        assert seen(_blocks_until(filtered, last)) == [
            e for e in published if e[1] % 2
        ]
        assert seen(_blocks_until(calls_only, lambda b: b.get("Tag") == "three" and b.get("N") == "1")) == [
            e for e in published if e[1] % 3 == 1
        ]
        stream = _blocks_until(publisher, lambda b: b.get("Tag") == "three" and b.get("N") == "3")
        order = [b.get("ActionID") or (b["Tag"], int(b["N"])) for b in stream]
        assert order == (
            ["b1"] + [("one", n) for n in range(7) if n % 3 in user]
            + ["e1", "b2", "e2", "b3"] + [("three", n) for n in range(4) if n % 3 in user]
        )


def test_events_published_earlier_in_a_loop_turn_come_first_q_7_4():
    """Q-7.4, A-3.7: in one loop turn a burst is published (by a session with events off), then other
    sessions are served. Their answers follow the burst -- an error, a reply -- and a session that
    logs in after it gets none of it."""
    from ami_server.audit import MemorySink
    from ami_server.server import Server
    from ami_server.testing import AMIClient

    srv = Server(config(), log_sink=MemorySink(), entry_points=(), extra_plugins=[("burst", Burst())])
    host, port = srv.start()

    def serve_until(done, what):
        wait_for(lambda: srv.run_once(0.01) or done(), what)

    clients = []
    try:
        for _ in range(4):
            holder = []
            thread = threading.Thread(target=lambda: holder.append(AMIClient(host, port)))
            thread.start()
            serve_until(lambda: holder, "a banner")
            thread.join(5)
            clients.append(holder[0])
        publisher, erring, pinging, late = clients
        publisher.send("Login", [("Username", "admin"), ("Secret", "adminpass"), ("Events", "off")])
        for client in (erring, pinging):
            client.send("Login", [("Username", "admin"), ("Secret", "adminpass")])
        serve_until(lambda: len(srv.authenticated) == 3, "three logins")
        for client in (publisher, erring, pinging):
            client.read_response()
            client.events.clear()
        by_client = {}
        for session in list(srv.sessions.values()):
            for client in clients:
                if session.remote[1] == client.sock.getsockname()[1]:
                    by_client[id(client)] = session

        def one_turn(other, action, headers, action_id):
            """The publisher's burst, then ``other``'s request, served in one loop turn."""
            publisher.send("Burst", [("ActionID", "b"), ("Count", "3"), ("Tag", action_id)])
            other.send(action, [*headers, ("ActionID", action_id)])
            for client in (publisher, other):  # both requests arrived before the turn is played
                wait_for(lambda: select.select([by_client[id(client)].sock], [], [], 0.01)[0], "a request")
            by_client[id(publisher)].on_ready(selectors.EVENT_READ)
            by_client[id(other)].on_ready(selectors.EVENT_READ)
            srv._flush_dirty()
            assert publisher.read_response().get("ActionID") == "b"
            blocks = _blocks_until(other, lambda b: b.get("ActionID") == action_id)
            return [b.get("ActionID") or (b.get("Event"), b.get("N")) for b in blocks
                    if b.get("Event") is None or b.get("Tag") == action_id]  # this turn's burst only

        burst = [("Seq", "0"), ("Seq", "1"), ("Seq", "2")]
        assert one_turn(pinging, "Ping", [], "p") == burst + ["p"]
        assert one_turn(erring, "NoSuchAction", [], "x") == burst + ["x"]
        assert one_turn(late, "Login", [("Username", "admin"), ("Secret", "adminpass")], "l") == ["l"]
        late.send("Ping", [("ActionID", "l2")])

        def reply_arrived():
            if select.select([late.sock], [], [], 0)[0]:
                late.buffer += late.sock.recv(65536)
            return b"ActionID: l2" in late.buffer

        serve_until(reply_arrived, "the ping's reply")
        later = _blocks_until(late, lambda b: b.get("ActionID") == "l2")
        assert not [b for b in later if b.get("Event") == "Seq"]
    finally:
        for client in clients:
            client.close()
        srv.stop()
        srv.serve_forever()


def test_event_headers_timestamp_and_system_name_q_7_2():
    cfg = config(timestamp_events=True, system_name="pbx-1")
    with running_server(cfg) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="user")
        c.action("UserEvent", {"UserEvent": "T"})
        event = c.wait_event("UserEvent")
        names = [n for n, _ in event.lines]
        assert names[:4] == ["Event", "Privilege", "Timestamp", "SystemName"]
        assert event["SystemName"] == "pbx-1"


def test_wall_timestamp_is_truncated_seconds_dot_six_digits_b_5_5(monkeypatch):
    import ami_server.api as api

    for ns, text in [
        (1_795_000_000_123_456_999, "1795000000.123456"),  # truncated, not rounded up
        (1_795_000_000_000_000_000, "1795000000.000000"),
        (1_795_000_000_000_001_000, "1795000000.000001"),
        (1_795_000_000_999_999_999, "1795000000.999999"),
    ]:
        monkeypatch.setattr(api.time, "time_ns", lambda ns=ns: ns)
        assert api.wall_timestamp() == text


def test_ping_and_event_timestamps_read_the_wall_clock_b_5_5_q_7_2():
    cfg = config(timestamp_events=True)
    with running_server(cfg) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="user")
        before = time.time()
        stamp = c.action("Ping")["Timestamp"]
        c.action("UserEvent", {"UserEvent": "T"})
        event_stamp = c.wait_event("UserEvent")["Timestamp"]
        after = time.time()
        for text in (stamp, event_stamp):
            seconds, _, micro = text.partition(".")
            assert seconds.isdigit() and micro.isdigit() and len(micro) == 6
            assert before - 0.001 <= float(text) <= after + 0.001


def test_close_during_waitevent_runs_close_hook_once():
    recorder = Recorder()
    with running_server(config(), extra_plugins=[("recorder", recorder)]) as srv:
        c = srv.client()
        c.login("admin", "adminpass", events="off")
        c.send("WaitEvent", {"Timeout": "30"})
        time.sleep(0.1)
        c.close()
        deadline = time.monotonic() + 5
        while not recorder.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [reason for _, reason in recorder.closed] == ["peer closed"]
        with srv.client() as other:
            assert other.login("admin", "adminpass")["Message"] == "Authentication accepted"


def test_md5_login_and_challenge_reuse_a_3_5_a_3_6():
    import hashlib

    with running_server(config()) as srv, srv.client() as c:
        first = c.action("Challenge", {"AuthType": "md5"})["Challenge"]
        assert first == c.action("Challenge", {"AuthType": "MD5"})["Challenge"]
        assert len(first) == 9 and first[0] != "0"
        key = hashlib.md5((first + "adminpass").encode()).hexdigest()
        reply = c.action("Login", {"AuthType": "MD5", "Username": "admin", "Key": key})
        assert reply["Message"] == "Authentication accepted"
        assert c.action("Challenge", {"AuthType": "MD5"})["Challenge"] == first
        with srv.client() as other:
            # A captured key does not work on another connection (it has no challenge).
            other.send("Login", {"AuthType": "MD5", "Username": "admin", "Key": key})
            assert b"Authentication failed" in other.read_until_closed()


def test_uppercase_md5_key_fails_a_3_5():
    import hashlib

    with running_server(config()) as srv, srv.client() as c:
        challenge = c.action("Challenge", {"AuthType": "MD5"})["Challenge"]
        key = hashlib.md5((challenge + "adminpass").encode()).hexdigest().upper()
        c.send("Login", {"AuthType": "MD5", "Username": "admin", "Key": key})
        assert b"Authentication failed" in c.read_until_closed()


def test_auth_limit_counts_sessions_in_failure_delay_a_3_12():
    with running_server(config(auth_limit=2, login_failure_delay=1.0)) as srv:
        a, b = srv.client(), srv.client()
        a.send("Login", {"Username": "admin", "Secret": "bad"})
        time.sleep(0.1)
        refused = socket.create_connection((srv.host, srv.port), timeout=5)
        assert refused.recv(100) == b""  # closed without a banner
        refused.close()
        b.login("admin", "adminpass")
        with srv.client() as c:
            assert c.banner == b"Asterisk Call Manager/11.0.0"
        a.close(); b.close()
    assert '"event": "AuthLimitReached"' in srv.log.text()


class StaticBackend:
    """An authentication backend that knows one user and answers nothing else."""

    def __init__(self, username, secret):
        self.username, self.secret = username, secret
        self.asked = []

    @hookimpl
    def authenticate(self, request):
        from ami_server import AuthDecision

        self.asked.append(request.username)
        if request.username != self.username:
            return None
        if request.secret == self.secret:
            return AuthDecision.accept(read="user", write="user")
        return AuthDecision.reject("invalid_password")


class BrokenBackend:
    @hookimpl
    def authenticate(self, request):
        raise RuntimeError("directory unreachable")


def test_auth_backends_are_asked_in_configured_order_only():
    static = StaticBackend("ext", "extpass")
    unlisted = StaticBackend("admin", "adminpass")
    cfg = make_config({"users": USERS, "auth": {"backends": ["static", "config"]}})
    with running_server(cfg, extra_plugins=[("static", static), ("unlisted", unlisted)]) as srv:
        with srv.client() as c:
            assert c.login("ext", "extpass")["Message"] == "Authentication accepted"
        with srv.client() as c:
            assert c.login("admin", "adminpass")["Message"] == "Authentication accepted"
    assert static.asked == ["ext", "admin"]
    assert unlisted.asked == []


def test_failing_backend_fails_closed_a_3_15():
    cfg = make_config({"users": USERS, "auth": {"backends": ["broken", "config"]}})
    with running_server(cfg, extra_plugins=[("broken", BrokenBackend())]) as srv, srv.client() as c:
        c.send("Login", {"Username": "admin", "Secret": "adminpass"})
        assert c.read_until_closed() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
    assert '"event": "AuthBackendError"' in srv.log.text()


def test_unknown_auth_backend_stops_start_up():
    from ami_server.audit import MemorySink
    from ami_server.server import Server, ServerError

    cfg = make_config({"users": USERS, "auth": {"backends": ["ldap"]}})
    with pytest.raises(ServerError, match="auth.backends: no loaded plugin named 'ldap'"):
        Server(cfg, log_sink=MemorySink()).load()
