"""Event delivery over real sockets: classes, masks, filters, order, rendering (Q-7.1 to Q-7.5)."""

from __future__ import annotations

import threading
import time

from ami_server import Event
from ami_server.testing import make_config, running_server

from helpers import USERS
from sample_plugins import Burst, Recorder


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
    import ami_server.records as api

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
