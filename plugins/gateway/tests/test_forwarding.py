"""Forwarding through a real gateway server to the recorded-Asterisk double, over real sockets."""

from __future__ import annotations

import threading
import time
from typing import List

import pytest
from asterisk_double import AsteriskDouble, Recording
from gateway_helpers import gateway_of, wait_until, double, gateway  # noqa: F401 - fixtures

from ami_server.testing import AMIClient


def read_bytes(client: AMIClient, count: int, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while len(client.buffer) < count:
        if not client._fill(deadline):
            break
    data, client.buffer = client.buffer[:count], client.buffer[count:]
    return data


def admin(gateway, events: str = "off") -> AMIClient:
    client = gateway.client()
    client.login("admin", "adminpass", events=events)
    return client


@pytest.mark.parametrize("name,conn,action_id", [
    ("coreshowchannels", 1, "csc-1"),      # list, ActionID right after Event:
    ("status_action", 1, "st-1"),          # list, ActionID last, "Privilege: Call" in items
    ("status_action", 1, "st-2"),          # Status of one channel, Variable lines
    ("command_outputs", 1, "co-1"),        # Command: Output lines
    ("command_outputs", 1, "co-7"),        # Command error with output
    ("list_actions_misc", 1, "qs-1"),    # QueueStatus: QueueParams/QueueMember/QueueEntry
])
def test_recorded_replies_pass_through_byte_for_byte(gateway, name, conn, action_id) -> None:
    try:
        exchange = Recording.load(name).exchange(conn, action_id)
    except KeyError:
        pytest.skip(f"{action_id} not in {name}")
    with admin(gateway) as client:
        client.send_raw(exchange.request)
        assert read_bytes(client, len(exchange.reply)) == exchange.reply
        assert client.action("Ping")["Response"] == "Success"  # nothing left over


@pytest.mark.parametrize("sent,expected", [(None, None), ("", None), ("x  y ", "x  y "), ("a\rb", "a b")])
def test_action_id_absent_empty_and_odd_values(gateway, sent, expected) -> None:
    exchange = Recording.load("coreshowchannels").exchange(1, "csc-1")
    request = b"Action: CoreShowChannels\r\n" + (f"ActionID: {sent}\r\n".encode() if sent is not None else b"") + b"\r\n"
    want = exchange.reply.replace(b"ActionID: csc-1\r\n", f"ActionID: {expected}\r\n".encode() if expected else b"")
    with admin(gateway) as client:
        client.send_raw(request)
        assert read_bytes(client, len(want)) == want


def test_pipelined_requests_from_many_clients_get_their_own_replies(gateway, double) -> None:
    status = Recording.load("status_action").exchange(1, "st-1")
    command = Recording.load("command_outputs").exchange(1, "co-6")
    channels = Recording.load("coreshowchannels").exchange(1, "csc-1")
    errors: List[str] = []

    def run(index: int) -> None:
        try:
            with admin(gateway) as client:
                plan = []
                data = b""
                for n in range(12):
                    exchange = (status, command, channels)[(n + index) % 3]
                    old = exchange.request.split(b"ActionID: ")[1].split(b"\r\n")[0]
                    new = f"c{index}-{n}".encode()
                    data += exchange.request.replace(b"ActionID: " + old, b"ActionID: " + new)
                    plan.append(exchange.reply.replace(b"ActionID: " + old + b"\r\n", b"ActionID: " + new + b"\r\n"))
                client.send_raw(data)
                for want in plan:
                    got = read_bytes(client, len(want))
                    if got != want:
                        errors.append(f"client {index}: {got[:80]!r} != {want[:80]!r}")
                        return
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"client {index}: {exc!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(double.received) >= 8 * 12


def _slow_list(double: AsteriskDouble, pause: float, close: bool = False) -> None:
    """CoreShowChannels answered in two halves, with broadcast events in between (or EOF)."""

    def handler(conn, pairs, action_id):
        aid = f"ActionID: {action_id}\r\n"
        head = (f"Response: Success\r\n{aid}EventList: start\r\nMessage: Channels will follow\r\n\r\n"
                f"Event: CoreShowChannel\r\n{aid}Channel: A\r\n\r\n"
                "Event: Newchannel\r\nPrivilege: call,all\r\nChannel: B\r\n\r\n").encode()
        tail = (f"Event: CoreShowChannel\r\n{aid}Channel: B\r\n\r\n"
                f"Event: CoreShowChannelsComplete\r\n{aid}EventList: Complete\r\nListItems: 2\r\n\r\n").encode()
        conn.send(head)
        threading.Timer(pause, conn.close if close else (lambda: conn.send(tail))).start()
        return None

    double.handlers["coreshowchannels"] = handler


def test_list_while_events_flow(gateway, double) -> None:
    _slow_list(double, 0.2)
    with admin(gateway, events="on") as client, admin(gateway, events="on") as other:
        client.send("CoreShowChannels", {"ActionID": "L"})
        client.events.clear()
        blocks = [client.read_response()] + [client.read_block() for _ in range(3)]
        assert [b.get("Event") or b.get("Response") for b in blocks] == [
            "Success", "CoreShowChannel", "CoreShowChannel", "CoreShowChannelsComplete"]
        assert all(b["ActionID"] == "L" for b in blocks)
        assert client.wait_event("Newchannel")["Channel"] == "B"  # held until the list was written
        assert other.wait_event("Newchannel")["Privilege"] == "call,all"


def test_client_closing_mid_list_leaves_nothing(gateway, double) -> None:
    _slow_list(double, 0.3)
    client = admin(gateway)
    client.send("CoreShowChannels", {"ActionID": "gone"})
    time.sleep(0.05)
    client.close()
    plugin = gateway_of(gateway)
    upstream = plugin.upstreams["pbx1"]
    # The server ends the session once it sees the close (it may wait for the pending reply
    # first); either way the gateway keeps nothing of it once the upstream answered.
    wait_until(lambda: gateway.log.records("SessionClosed"), what="session closed")
    wait_until(lambda: not upstream.requests and upstream.main.session.pending == 0, what="nothing pending")
    with admin(gateway) as again:
        again.send("CoreShowChannels", {"ActionID": "next"})
        assert again.read_block()["ActionID"] == "next"


def test_upstream_eof_mid_list_answers_an_error(gateway, double) -> None:
    _slow_list(double, 0.1, close=True)
    with admin(gateway) as client:
        reply = client.action("CoreShowChannels", {"ActionID": "eof"})
        assert reply.lines == [("Response", "Error"), ("ActionID", "eof"), ("Message", "Upstream pbx1 unavailable")]
        del double.handlers["coreshowchannels"]
        wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up", what="reconnected")
        assert client.action("CoreShowChannels", {"ActionID": "ok"})["EventList"] == "start"


def test_slow_upstream_times_out_and_the_late_reply_goes_nowhere(gateway, double) -> None:
    double.delay = 3.5  # action_timeout is 3 s in the fixture
    with admin(gateway) as client:
        started = time.monotonic()
        reply = client.action("Status", {"ActionID": "slow"}, timeout=6)
        assert reply["Message"] == "Upstream pbx1 timed out" and reply["ActionID"] == "slow"
        assert 2.9 < time.monotonic() - started < 4.5
        double.delay = 0
        # The late reply arrives meanwhile; the next request still gets its own.
        time.sleep(0.7)
        reply = client.action("Command", {"ActionID": "co-6", "Command": "core show version"})
        assert reply["ActionID"] == "co-6" and reply["Message"] == "Command output follows"
        assert client.buffer == b""


def test_events_off_client_gets_no_upstream_event(gateway, double) -> None:
    with admin(gateway, events="off") as quiet, admin(gateway, events="on") as loud:
        double.push(b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: X\r\n\r\n")
        assert loud.wait_event("Newchannel")["Channel"] == "X"
        quiet.send("Ping", {"ActionID": "p"})
        reply = quiet.read_block()
        assert reply["Response"] == "Success" and not quiet.events


def test_upstream_events_render_as_asterisk_sent_them(gateway, double) -> None:
    raw = (b"Event: Hangup\r\nPrivilege: call,all\r\nChannel: Local/x;1\r\nAccountCode: \r\n"
           b"Cause: 16\r\nCause-txt: Normal Clearing\r\n\r\n")
    with admin(gateway, events="on") as client:
        double.push(raw)
        assert client.wait_event("Hangup").raw == raw


def test_originate_response_carries_the_originator_action_id(gateway, double) -> None:
    def originate(conn, pairs, action_id):
        aid = f"ActionID: {action_id}\r\n"
        conn.send(f"Response: Success\r\n{aid}Message: Originate successfully queued\r\n\r\n".encode())
        conn.send(f"Event: OriginateResponse\r\nPrivilege: call,all\r\n{aid}Response: Success\r\n"
                  "Channel: Local/100@default-00000000;1\r\nReason: 4\r\n\r\n".encode())
        return None

    double.handlers["originate"] = originate
    with admin(gateway, events="on") as originator, admin(gateway, events="on") as watcher:
        reply = originator.action("Originate", {"ActionID": "orig-7", "Async": "true", "Channel": "Local/100@default",
                                                "Context": "default", "Exten": "100", "Priority": "1"})
        assert reply["Message"] == "Originate successfully queued" and reply["ActionID"] == "orig-7"
        mine = originator.wait_event("OriginateResponse")
        theirs = watcher.wait_event("OriginateResponse")
        assert mine.raw == theirs.raw
        assert mine.lines[:3] == [("Event", "OriginateResponse"), ("Privilege", "call,all"), ("ActionID", "orig-7")]
        originator.action("Originate", {"Async": "yes", "Channel": "Local/100@default", "Context": "default",
                                        "Exten": "100", "Priority": "1"})
        assert "ActionID" not in originator.wait_event("OriginateResponse")


def test_odd_reply_forms_pass_through_byte_for_byte(gateway, double) -> None:
    """Any Response token, a header without a space after the colon, ActionID not second."""

    def handler(conn, pairs, action_id):
        return (f"Response: Follows\r\nPrivilege: Command\r\nActionID: {action_id}\r\nOutput:no space\r\n"
                f"Empty:\r\n\r\n").encode()

    double.handlers["oddity"] = handler
    with admin(gateway) as client:
        client.send_raw(b"Action: Oddity\r\nActionID: mine\r\n\r\n")
        want = b"Response: Follows\r\nPrivilege: Command\r\nActionID: mine\r\nOutput:no space\r\nEmpty:\r\n\r\n"
        assert read_bytes(client, len(want)) == want
        client.send_raw(b"Action: Oddity\r\n\r\n")
        want = b"Response: Follows\r\nPrivilege: Command\r\nOutput:no space\r\nEmpty:\r\n\r\n"
        assert read_bytes(client, len(want)) == want
