"""Concurrent actions: several deferred replies outstanding per session, written in request order.

Sans-IO on MemoryServer's manual clock, plus one test over a real socket.
The ``Later`` plugin's ``Later`` action is concurrent: its handler keeps the
Deferred under the request's ActionID for the test to complete in any order.
"""

from __future__ import annotations

import socket
import time

import pytest

from ami_server import Action, Event, Response, hookimpl
from ami_server.testing import MemoryServer, make_config, parse_blocks, running_server

from helpers import USERS

LOGIN = b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n"
LOGIN_USER_EVENTS = b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: user\r\n\r\n"


class Later:
    """``Later`` (concurrent, deferred unless ``Now: yes``), ``Serial`` (deferred, not concurrent)."""

    def __init__(self, timeout=None, complete_after=None):
        self.deferreds = {}
        self.calls = []
        self.server = None
        self.timeout = timeout
        self.complete_after = complete_after

    @hookimpl
    def register_actions(self, server):
        self.server = server

        def later(ctx):
            action_id = ctx.request.action_id
            self.calls.append(action_id)
            if ctx.request.get("Now"):
                return Response.success("now", {"Id": action_id})
            if ctx.request.get("Fail"):
                raise RuntimeError("boom")
            deferred = ctx.defer()
            self.deferreds[action_id] = deferred
            delay = ctx.request.get("Delay")
            if delay is not None:  # over a real socket: completed by a timer on the loop
                ctx.call_later(float(delay), lambda: deferred.complete(Response.success("late", {"Id": action_id})))
            return deferred

        def serial(ctx):
            deferred = ctx.defer()
            self.deferreds[ctx.request.action_id] = deferred
            return deferred

        return [
            Action("Later", later, "A concurrent deferred action.", (), concurrent=True, timeout=self.timeout),
            Action("Serial", serial, "A deferred action that is not concurrent.", ()),
        ]

    def finish(self, action_id, message="done"):
        return self.deferreds.pop(action_id).complete(Response.success(message, {"Id": action_id}))


def harness(plugin, **server):
    return MemoryServer(make_config({"users": USERS}, **server), extra_plugins=[("later", plugin)])


def logged_in(memory, login=LOGIN):
    peer = memory.connect()
    peer.send(login)
    assert b"Authentication accepted\r\n\r\n" in peer.read()
    return peer


def request(action, action_id, *headers):
    lines = [f"Action: {action}", f"ActionID: {action_id}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def summary(data):
    """Each block as 'ActionID:Message' for replies and 'Event:Name' for events."""
    out = []
    for block in parse_blocks(data):
        if block.is_event:
            out.append(f"Event:{block['Event']}")
        else:
            out.append(f"{block.get('ActionID')}:{block.get('Message')}")
    return out


def test_later_replies_that_complete_first_wait_for_the_earlier_ones():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(b"".join(request("Later", f"a{i}") for i in range(1, 4)))
        assert plugin.calls == ["a1", "a2", "a3"]  # all three run while none is answered
        plugin.finish("a3")
        plugin.finish("a2")
        memory.run()
        assert peer.read() == b""
        plugin.finish("a1")
        memory.run()
        assert summary(peer.read()) == ["a1:done", "a2:done", "a3:done"]
        assert peer.session.current is None
        peer.send(request("Ping", "p"))
        assert summary(peer.read()) == ["p:None"]


def test_a_reply_completed_in_order_is_written_at_once():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "a1") + request("Later", "a2"))
        plugin.finish("a1")
        assert summary(peer.take()) == ["a1:done"]  # written inside complete(), no loop turn needed
        plugin.finish("a2")
        assert summary(peer.take()) == ["a2:done"]


def test_synchronous_replies_and_errors_keep_their_place_in_line():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(
            request("Later", "a1") + request("Later", "n1", ("Now", "yes")) + request("NoSuchAction", "u1")
            + request("Later", "f1", ("Fail", "yes")) + b"ActionID: m1\r\nFoo: bar\r\n\r\n" + request("Later", "a2")
        )
        assert plugin.calls == ["a1", "n1", "f1", "a2"]
        assert peer.read() == b""
        plugin.finish("a2")
        plugin.finish("a1")
        memory.run()
        assert summary(peer.read()) == [
            "a1:done", "n1:now",
            "u1:Invalid/unknown command: NoSuchAction. Use Action: ListCommands to show available commands.",
            "f1:Internal error", "m1:Missing action in request", "a2:done",
        ]


def test_a_request_that_is_not_concurrent_waits_for_every_earlier_reply():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "a1") + request("Ping", "p1") + request("Later", "a2") + request("Serial", "s1")
                  + request("Later", "a3"))
        assert plugin.calls == ["a1"]  # Ping is parked, and everything behind it waits
        plugin.finish("a1")
        memory.run()
        assert summary(peer.read()) == ["a1:done", "p1:None"]
        assert plugin.calls == ["a1", "a2"]  # a2 runs; Serial waits for it
        plugin.finish("a2")
        memory.run()
        assert summary(peer.read()) == ["a2:done"]
        assert "s1" in plugin.deferreds and plugin.calls == ["a1", "a2"]  # a3 waits behind Serial
        plugin.finish("s1")
        memory.run()
        assert summary(peer.read()) == ["s1:done"]
        assert plugin.calls == ["a1", "a2", "a3"]
        plugin.finish("a3")
        memory.run()
        assert summary(peer.read()) == ["a3:done"]


def test_a_later_read_does_not_overtake_a_parked_request():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "a1") + request("Ping", "p1"))
        plugin.finish("a1")  # the pipeline drains; Ping waits for the next loop turn
        peer.feed(request("Ping", "p2"))  # a read in the same turn: one whole request
        memory.run()
        assert summary(peer.read()) == ["a1:done", "p1:None", "p2:None"]


def test_events_are_held_and_follow_the_head_of_line_reply_r_2_10():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory, LOGIN_USER_EVENTS)
        peer.read()
        peer.send(request("Later", "a1") + request("Later", "a2") + request("Later", "a3"))
        plugin.server.publish(Event("First", "user"))
        memory.run()
        assert peer.read() == b""  # held while replies are outstanding
        plugin.finish("a2")
        plugin.server.publish(Event("Second", "user"))
        memory.run()
        assert peer.read() == b""
        plugin.finish("a1")  # a1 and a2 go out; the events held so far right after a1
        plugin.server.publish(Event("Third", "user"))
        memory.run()
        assert summary(peer.read()) == ["a1:done", "Event:First", "Event:Second", "a2:done"]
        plugin.finish("a3")
        memory.run()
        assert summary(peer.read()) == ["a3:done", "Event:Third"]
        plugin.server.publish(Event("Idle", "user"))
        memory.run()
        assert summary(peer.read()) == ["Event:Idle"]  # nothing outstanding: written at once


def test_an_event_published_between_two_completions_follows_the_later_reply():
    """Reply a1, an event, reply a2 in one turn (as an upstream may send them): a2 is outstanding
    when the event comes, so the event is held and follows a2."""
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory, LOGIN_USER_EVENTS)
        peer.read()
        peer.send(request("Later", "a1") + request("Later", "a2"))
        plugin.finish("a1")
        plugin.server.publish(Event("Between", "user"))
        plugin.finish("a2")
        memory.run()
        assert summary(peer.read()) == ["a1:done", "a2:done", "Event:Between"]


def test_each_run_times_out_on_its_own_clock():
    plugin = Later(timeout=5.0)
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "a1"))
        memory.advance(3.0)
        peer.send(request("Later", "a2") + request("Later", "a3"))
        plugin.finish("a3")
        memory.advance(2.5)  # a1 is 5.5 s old: timed out; a2 (2.5 s) still waits
        assert summary(peer.read()) == ["a1:Action timed out"]
        assert plugin.finish("a1") is False  # the late reply is dropped
        memory.advance(2.6)
        assert summary(peer.read()) == ["a2:Action timed out", "a3:done"]
        assert peer.session.current is None
        assert [r["action"] for r in memory.log.records("ActionTimedOut")] == ["Later", "Later"]


def test_end_of_input_waits_for_the_outstanding_replies_p_1_17():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "a1") + request("Later", "a2"))
        peer.end()
        assert not peer.closed
        plugin.finish("a2")
        plugin.finish("a1")
        memory.run()
        assert summary(peer.read()) == ["a1:done", "a2:done"]
        assert peer.closed


def test_a_session_closed_mid_pipeline_drops_every_outstanding_reply():
    plugin = Later()
    closed = []

    class Watch:
        @hookimpl
        def on_session_close(self, session, reason):
            closed.append(reason)

    config = make_config({"users": USERS})
    with MemoryServer(config, extra_plugins=[("later", plugin), ("watch", Watch())]) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "a1") + request("Later", "a2"))
        plugin.finish("a2")
        memory.core.close(peer.session, "revoked")
        assert peer.closed and closed == ["revoked"]
        assert plugin.finish("a1") is False  # cancelled: the late reply goes nowhere
        memory.run()
        assert peer.session.current is None
        memory.advance(30.0)  # no timeout fires for a closed session
        assert closed == ["revoked"]


def test_logoff_behind_concurrent_replies_says_goodbye_after_them():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "a1") + request("Later", "a2") + request("Logoff", "bye")
                  + request("Later", "never"))
        plugin.finish("a2")
        plugin.finish("a1")
        memory.run()
        assert summary(peer.read()) == ["a1:done", "a2:done", "bye:Thanks for all the fish."]
        assert peer.closed and plugin.calls == ["a1", "a2"]


def test_a_concurrent_action_answered_at_once_behaves_as_any_other():
    plugin = Later()
    with harness(plugin) as memory:
        peer = logged_in(memory)
        peer.send(request("Later", "n1", ("Now", "yes")) + request("Ping", "p1"))
        assert summary(peer.read()) == ["n1:now", "p1:None"]
        assert peer.session.current is None


def test_denials_behind_outstanding_replies_keep_their_place():
    plugin = Later()
    users = {**USERS, "nowrite": {"secret": "nowritepass", "read": "all", "write": []}}
    config = make_config({"users": users})
    with MemoryServer(config, extra_plugins=[("later", plugin)]) as memory:
        peer = memory.connect()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        peer.read()
        plugin.server.add_action_guard(lambda info, name, req: "nope" if req and req.get("Deny") else None)
        peer.send(request("Later", "a1") + request("Later", "d1", ("Deny", "1")) + request("Later", "a2"))
        plugin.finish("a2")
        plugin.finish("a1")
        memory.run()
        assert summary(peer.read()) == ["a1:done", "d1:Permission denied", "a2:done"]


def test_concurrent_cannot_be_blocking_or_control():
    with pytest.raises(ValueError, match="concurrent"):
        Action("X", lambda ctx: None, "x", (), blocking=True, concurrent=True)
    with pytest.raises(ValueError, match="concurrent"):
        Action("X", lambda ctx: None, "x", (), control=True, concurrent=True)


def test_pipelined_replies_over_a_socket_overlap_and_arrive_in_order():
    """Five requests in one write, completed by timers in reverse order: in order, in about the longest delay."""
    plugin = Later()
    config = make_config({"users": USERS})
    with running_server(config, extra_plugins=[("later", plugin)]) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.settimeout(5)
            sock.sendall(LOGIN)
            data = b""
            while b"Authentication accepted\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, "closed"
                data += chunk
            delays = [0.5, 0.4, 0.3, 0.2, 0.1]
            started = time.monotonic()
            sock.sendall(b"".join(request("Later", f"r{i}", ("Delay", d)) for i, d in enumerate(delays)))
            data = b""
            deadline = time.monotonic() + 5
            while data.count(b"\r\n\r\n") < len(delays):
                assert time.monotonic() < deadline, "replies did not arrive in time"
                chunk = sock.recv(65536)
                assert chunk, "closed"
                data += chunk
            elapsed = time.monotonic() - started
    assert summary(data) == [f"r{i}:late" for i in range(len(delays))]
    assert elapsed < sum(delays) - 0.3, f"the replies did not overlap ({elapsed:.2f} s)"
