"""The session core without sockets: sessions driven in memory on a manual clock (ami_server.testing.MemoryServer).

Each test plays the loop turns itself, so orderings that depend on what
arrives within one turn are exact, and timers run when the clock is moved.
"""

from __future__ import annotations

import threading
import time

import pytest

from ami_server import Action, Response, hookimpl
from ami_server.core import MESSAGES_PER_TURN
from ami_server.testing import MemoryServer, make_config, parse_blocks

from helpers import USERS
from sample_plugins import Burst

LOGIN = b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n"


def config(**server):
    return make_config({"users": USERS}, **server)


def logged_in(harness, login=LOGIN):
    peer = harness.connect()
    peer.send(login)
    assert b"Authentication accepted\r\n\r\n" in peer.read()
    return peer


def pings(count, prefix=b"p"):
    return b"".join(b"Action: Ping\r\nActionID: %s%d\r\n\r\n" % (prefix, i) for i in range(count))


def test_login_answers_then_fully_booted_then_the_security_event_a_3_7():
    """A-3.7 in memory: the reply, FullyBooted inside it, then the SuccessfulAuth this login published."""
    with MemoryServer(config()) as harness:
        peer = harness.connect()
        assert peer.read() == b"Asterisk Call Manager/11.0.0\r\n"
        peer.send(b"Action: Login\r\nActionID: L\r\nUsername: admin\r\nSecret: adminpass\r\n\r\n")
        blocks = peer.blocks()
        assert [b.get("Response") or b.get("Event") for b in blocks] == ["Success", "FullyBooted", "SuccessfulAuth"]
        assert blocks[0].lines == [("Response", "Success"), ("ActionID", "L"), ("Message", "Authentication accepted")]
        assert blocks[2]["AccountID"] == "admin"
        assert peer.session.authenticated and not peer.closed


def test_failed_login_answers_after_the_delay_and_closes_a_3_8():
    """A-3.8 on the manual clock: nothing before the delay, the error after it, input in between ignored."""
    with MemoryServer(config(login_failure_delay=1.0)) as harness:
        peer = harness.connect()
        peer.read()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: wrong\r\n\r\n")
        peer.send(b"Action: Ping\r\nActionID: ignored\r\n\r\n")
        harness.advance(0.99)
        assert peer.read() == b"" and not peer.closed
        harness.advance(0.02)
        assert peer.read() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
        assert peer.closed


def test_two_sessions_exchange_a_user_event_c_4_5():
    """One session publishes, another with the class receives it after its own replies; a third
    without the class never sees it."""
    users = {**USERS, "calls": {"secret": "callspass", "read": "call", "write": "call"}}
    with MemoryServer(make_config({"users": users})) as harness:
        sender = logged_in(harness)
        receiver = logged_in(harness, b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: user\r\n\r\n")
        blind = logged_in(harness, b"Action: Login\r\nUsername: calls\r\nSecret: callspass\r\n\r\n")
        sender.send(b"Action: UserEvent\r\nUserEvent: Hello\r\nTo: you\r\n\r\n")
        assert sender.read() == b"Response: Success\r\nMessage: Event Sent\r\n\r\n"
        assert receiver.read() == b"Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: Hello\r\nTo: you\r\n\r\n"
        assert blind.read() == b""


def test_one_loop_turn_serves_at_most_messages_per_turn_of_a_session():
    """A client pipelining many requests gets MESSAGES_PER_TURN answers per loop turn; another
    session's request is served in the same turn, and the rest follow on later turns, in order."""
    with MemoryServer(config()) as harness:
        greedy, other = logged_in(harness), logged_in(harness)
        count = MESSAGES_PER_TURN * 2 + 10
        # Both reads arrive in one turn's readiness phase; its output is delivered before
        # the callbacks of the next turn run.
        greedy.feed(pings(count, b"g"))
        other.feed(b"Action: Ping\r\nActionID: o\r\n\r\n")
        harness.flush()
        first_turn = greedy.read()
        assert first_turn.count(b"Ping: Pong") == MESSAGES_PER_TURN
        assert b"ActionID: o\r\n" in other.read()
        rest = first_turn
        for _ in range(4):
            rest += greedy.read()
        ids = [b.get("ActionID") for b in parse_blocks(rest)]
        assert ids == [f"g{i}" for i in range(count)]


def _stamps(data):
    return [b["Timestamp"] for b in parse_blocks(data) if "Timestamp" in b]


def test_pings_answered_from_one_read_share_a_timestamp_inside_their_round_trip_b_5_5():
    """Pipelined Pings taken from one read carry one clock reading, taken after they arrived and before
    the replies were written; a Ping in a later read of its own reads the clock afresh."""
    with MemoryServer(config()) as harness:
        peer = logged_in(harness)
        before = time.time_ns() // 1000
        peer.send(pings(5))
        batch = peer.read()
        between = time.time_ns() // 1000
        (stamp,) = set(_stamps(batch))
        assert batch == b"".join(
            b"Response: Success\r\nActionID: p%d\r\nPing: Pong\r\nTimestamp: %s\r\n\r\n" % (i, stamp.encode())
            for i in range(5)
        )
        seconds, micro = stamp.split(".")
        assert before <= int(seconds) * 1_000_000 + int(micro) <= between
        peer.send(b"Action: Ping\r\nActionID: alone\r\n\r\n")
        (alone,) = _stamps(peer.read())
        seconds, micro = alone.split(".")
        assert between <= int(seconds) * 1_000_000 + int(micro) <= time.time_ns() // 1000


def test_a_shared_clock_reading_is_never_kept_by_another_thread():
    """ActionContext.timestamp from a blocking handler's thread reads the clock but never stores it:
    the loop closes the read's scope, and a stored reading would outlive it."""
    from ami_server.dispatch import _Run

    with MemoryServer(config()) as harness:
        harness.turn()  # the loop thread is this one
        dispatcher = harness.server.dispatcher
        run = _Run("Ping", "", 0.0, None, False)
        run.dispatcher = dispatcher
        dispatcher.read_stamp = ""  # a read's scope is open on the loop
        stamps = []
        worker = threading.Thread(target=lambda: stamps.append(run.timestamp()))
        worker.start()
        worker.join(5)
        assert len(stamps) == 1 and stamps[0]
        assert dispatcher.read_stamp == ""
        assert run.timestamp() == dispatcher.read_stamp != ""  # the loop's own call keeps it
        dispatcher.read_stamp = None
        assert run.timestamp() and dispatcher.read_stamp is None  # outside a read: nothing kept


REPLY = len(b"Response: Success\r\nActionID: 19999\r\nPing: Pong\r\nTimestamp: 1795000000.000000\r\n\r\n")


def test_output_over_the_limit_pauses_dispatching_q_7_7():
    """A client that sends without reading: answers stop once the unsent output passes
    output_queue_limit (by at most one reply), and resume as the client reads."""
    limit = 65536  # the smallest the configuration allows
    with MemoryServer(config(output_queue_limit=limit)) as harness:
        peer = logged_in(harness)
        count = 20000
        peer.send(pings(count, b""))
        assert peer.session.output_paused
        assert limit < peer.unread <= limit + REPLY
        for _ in range(20):  # more turns while nobody reads: still bounded
            harness.turn()
        assert peer.unread <= limit + REPLY
        received = b""
        for _ in range(200):
            received += peer.read(16384)
            assert peer.unread <= limit + REPLY
            if received.count(b"Ping: Pong") == count:
                break
        assert [b.get("ActionID") for b in parse_blocks(received)] == [f"{i}" for i in range(count)]


def test_output_limit_holds_for_requests_read_one_at_a_time_q_7_7():
    """Each request in a read of its own (the path that parses without buffering) pauses the same way."""
    limit = 65536
    with MemoryServer(config(output_queue_limit=limit)) as harness:
        peer = logged_in(harness)
        sent = 0
        while not peer.session.output_paused:
            assert sent < 5000, "dispatching never paused"
            peer.send(b"Action: Ping\r\nActionID: %d\r\n\r\n" % sent)
            sent += 1
            assert peer.unread <= limit + REPLY
        peer.send(b"Action: Ping\r\nActionID: waiting\r\n\r\n")  # buffered, not answered
        assert peer.session.parser.has_input
        received = b""
        for _ in range(50):
            received += peer.read(8192)
            if b"ActionID: waiting" in received:
                break
        assert received.count(b"Ping: Pong") == sent + 1


def test_events_published_earlier_in_a_loop_turn_come_first_q_7_4():
    """Q-7.4, A-3.7: in one loop turn a burst is published (by a session with events off), then other
    sessions are served. Their answers follow the burst -- an error, a reply -- and a session that
    logs in after it gets none of it."""
    with MemoryServer(config(), extra_plugins=[("burst", Burst())]) as harness:
        publisher = logged_in(harness)
        erring = logged_in(harness, b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\n\r\n")
        pinging = logged_in(harness, b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\n\r\n")
        late = harness.connect()
        for peer in (erring, pinging, late):
            peer.read()

        def one_turn(other, request, action_id):
            publisher.feed(b"Action: Burst\r\nActionID: b\r\nCount: 3\r\nTag: %s\r\n\r\n" % action_id.encode())
            other.feed(request)
            harness.run()
            assert parse_blocks(publisher.read())[0].get("ActionID") == "b"
            return [b.get("ActionID") or (b.get("Event"), b.get("N")) for b in parse_blocks(other.read())
                    if b.get("Event") is None or b.get("Tag") == action_id]

        burst = [("Seq", "0"), ("Seq", "1"), ("Seq", "2")]
        assert one_turn(pinging, b"Action: Ping\r\nActionID: p\r\n\r\n", "p") == burst + ["p"]
        assert one_turn(erring, b"Action: NoSuchAction\r\nActionID: x\r\n\r\n", "x") == burst + ["x"]
        login = b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nActionID: l\r\n\r\n"
        assert one_turn(late, login, "l") == ["l"]


class Later:
    """An action answered on a timer, so that events published meanwhile are held (R-2.10)."""

    @hookimpl
    def register_actions(self, server):
        def later(ctx):
            deferred = ctx.defer()
            ctx.call_later(1.0, lambda: deferred.complete(Response.success("Done")))
            return deferred

        return [Action("Later", later, "Answer in a second.", ())]


def test_events_held_while_an_action_runs_follow_its_reply_r_2_9_r_2_10():
    """Events for a session whose action is still running wait behind its reply; so do its next requests."""
    with MemoryServer(config(), extra_plugins=[("later", Later())]) as harness:
        waiting = logged_in(harness, b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: user\r\n\r\n")
        waiting.read()
        publisher = logged_in(harness)
        waiting.send(b"Action: Later\r\nActionID: w\r\n\r\nAction: Ping\r\nActionID: after\r\n\r\n")
        publisher.send(b"Action: UserEvent\r\nUserEvent: Meanwhile\r\n\r\n")
        assert waiting.read() == b""  # nothing overtakes the reply that is not written yet
        harness.advance(1.0)
        blocks = parse_blocks(waiting.read())
        assert [b.get("ActionID") or b.get("UserEvent") for b in blocks] == ["w", "Meanwhile", "after"]


def test_slow_consumer_is_cut_off_and_others_are_served_q_7_6():
    """A session that never reads is closed once an event would take it past its output limit; the
    publisher and other sessions go on, and nothing is kept for the closed one."""
    limit = 65536
    with MemoryServer(config(output_queue_limit=limit)) as harness:
        stalled = logged_in(harness, b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: user\r\n\r\n")
        publisher, pinger = logged_in(harness), logged_in(harness)
        flood = b"Action: UserEvent\r\nUserEvent: Flood\r\nData: " + b"x" * 900 + b"\r\n\r\n"
        for sent in range(1, 200):
            publisher.send(flood)
            publisher.read()
            assert stalled.unread <= limit
            if stalled.closed:
                break
        assert stalled.closed and sent == limit // 970 + 1
        pinger.send(b"Action: Ping\r\n\r\n")
        assert b"Ping: Pong" in pinger.read()
        records = harness.log.records("SlowConsumerDisconnect")
        assert len(records) == 1 and records[0]["limit"] == limit
        assert harness.server.status().slow_consumer_disconnects == 1
        assert stalled.session.key not in harness.core.sessions


@pytest.mark.parametrize("split", [1, 2, 7, 40])
def test_requests_split_anywhere_are_answered_alike_p_1_5(split):
    """P-1.5 through the session core: however the bytes are cut into reads, the replies are the same."""
    data = LOGIN + pings(3)
    with MemoryServer(config()) as harness:
        peer = harness.connect()
        peer.read()
        for start in range(0, len(data), split):
            peer.send(data[start:start + split])
        blocks = peer.blocks()
    assert [b.get("ActionID") or b.get("Message") for b in blocks] == ["Authentication accepted", "p0", "p1", "p2"]


def test_end_of_input_answers_complete_requests_then_closes_p_1_17():
    with MemoryServer(config()) as harness:
        peer = logged_in(harness)
        peer.send(b"Action: Ping\r\nActionID: 1\r\n\r\nAction: Pi")
        peer.end()
        assert b"ActionID: 1" in peer.read()
        assert peer.closed
        assert harness.log.records("SessionClosed")[-1]["reason"] == "peer closed"


class BigList:
    """An action answering a list of ``Count`` items (a CoreShowChannels on a busy PBX)."""

    @hookimpl
    def register_actions(self, server):
        from ami_server import Block

        def big(ctx):
            count = int(ctx.request.get("Count") or "0")
            items = [Block("Item", (("N", str(n)), ("Pad", "x" * 100))) for n in range(count)]
            return Response.list(items, "BigComplete")

        return [Action("Big", big, "A long list.", ())]


def test_a_long_list_is_sent_a_slice_per_turn_while_others_are_served_r_2_6():
    """Hardening: a 50,000-item list does not hold the loop; another session's Ping is answered
    between slices, the list arrives whole and in order, and events wait behind its completion."""
    from ami_server.dispatch import LIST_SLICE

    count = 50_000
    with MemoryServer(config(), extra_plugins=[("big", BigList())]) as harness:
        lister = logged_in(harness, b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: user\r\n\r\n")
        lister.read()
        other = logged_in(harness)
        lister.feed(b"Action: Big\r\nActionID: big\r\nCount: %d\r\n\r\nAction: Ping\r\nActionID: next\r\n\r\n" % count)
        harness.flush()
        received = lister.take()
        assert received.startswith(b"Response: Success\r\nActionID: big\r\n") and b"Event: Item" not in received
        other.feed(b"Action: UserEvent\r\nUserEvent: During\r\n\r\nAction: Ping\r\nActionID: o\r\n\r\n")
        harness.turn()
        assert b"ActionID: o\r\n" in other.take(), "another session waited for the whole list"
        received += lister.take()
        turns = 1
        while b"ActionID: next" not in received:
            harness.turn()
            slice_ = lister.take()
            assert len(slice_) <= (LIST_SLICE + 1) * 150  # one slice a turn at most (items of 145 to 150 bytes)
            received += slice_
            turns += 1
            assert turns < 1000
        assert turns >= count // LIST_SLICE
        blocks = parse_blocks(received)
        assert blocks[0].lines == [("Response", "Success"), ("ActionID", "big"), ("EventList", "start"),
                                   ("Message", "Results will follow")]
        assert [b["N"] for b in blocks[1:count + 1]] == [str(n) for n in range(count)]
        assert blocks[count + 1].lines == [("Event", "BigComplete"), ("ActionID", "big"), ("EventList", "Complete"),
                                           ("ListItems", str(count))]
        assert blocks[count + 2]["UserEvent"] == "During"  # held while the list ran
        assert blocks[count + 3]["ActionID"] == "next"  # the next request waited


def test_a_long_list_to_a_reader_that_stalls_stays_near_the_output_limit_q_7_7():
    limit = 65536
    with MemoryServer(config(output_queue_limit=limit), extra_plugins=[("big", BigList())]) as harness:
        lister = logged_in(harness)
        lister.send(b"Action: Big\r\nCount: 5000\r\n\r\n")
        for _ in range(50):
            harness.turn()
        assert limit < lister.unread <= limit + 256 * 150
        received = b""
        for _ in range(500):
            received += lister.read(32768)
            if b"BigComplete" in received:
                break
        assert received.count(b"Event: Item\r\n") == 5000


def test_login_deadlines_expire_each_session_at_its_own_timeout_a_3_11():
    """One timer serves every waiting session; a session accepted under another auth_timeout keeps its own."""
    from types import SimpleNamespace

    from ami_server.deadlines import LoginDeadlines
    from ami_server.loop import Loop
    from ami_server.testing import ManualClock

    clock = ManualClock()
    loop = Loop(clock)
    expired = []
    deadlines = LoginDeadlines(loop, expired.append)
    early, late, logged_in = (SimpleNamespace(key=key, login_timeout=None) for key in range(3))
    deadlines.add(early, 30.0)
    deadlines.add(late, 5.0)  # after a reload shortened auth_timeout: due first
    deadlines.add(logged_in, 30.0)
    deadlines.discard(logged_in)
    clock.now += 4.9
    loop.run_once(0)
    assert expired == []
    clock.now += 0.1
    loop.run_once(0)
    assert expired == [late]
    clock.now += 25.0
    loop.run_once(0)
    assert expired == [late, early] and len(deadlines) == 0
    loop.close()


def test_cancelled_timers_are_dropped_in_bulk_and_the_others_still_run():
    """A timer per request, cancelled when its reply comes, must not keep its callback until its deadline."""
    from ami_server.loop import PURGE_MIN_CANCELLED, Loop
    from ami_server.testing import ManualClock

    clock = ManualClock()
    loop = Loop(clock)
    fired = []
    count = PURGE_MIN_CANCELLED * 4
    handles = [loop.call_later(30.0 + index / 1000, lambda index=index: fired.append(index)) for index in range(count)]
    for index, handle in enumerate(handles):
        if index % 10:
            handle.cancel()
            handle.cancel()  # twice: counted once
    loop.run_once(0)
    assert loop.pending_timers() == len(range(0, count, 10))  # only the live ones are left
    handles[0].cancel()  # live: counted, dropped when due or in the next purge
    clock.now += 60.0
    loop.run_once(0)
    assert fired == list(range(10, count, 10)) and loop.pending_timers() == 0
    handles[10].cancel()  # already ran: nothing is counted
    assert loop._cancelled == 0
    loop.close()
