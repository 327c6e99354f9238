"""The sans-IO upstream client: framing, login, ActionID mapping and list routing, without sockets."""

from __future__ import annotations

import hashlib

import pytest

from ami_server_gateway.amiproto import (
    Broadcast, LoggedIn, LoginFailed, RawReply, Reply, ShutdownSeen, StreamParser, UpstreamProtocolError, UpstreamSession, build_request,
    parse_listcommands, parse_message,
)
from ami_server_gateway.policy import RateLimiter, compile_policy

BANNER = b"Asterisk Call Manager/11.0.0\r\n"


def logged_in(events: bool = True) -> UpstreamSession:
    session = UpstreamSession("gw", lambda: "s3cret", prefix="gwX-1-", events=events)
    session.start()
    assert b"Action: Challenge\r\nAuthType: MD5\r\nActionID: gwX-1-1\r\n\r\n" == bytes(session.outgoing)
    session.outgoing.clear()
    assert session.receive(BANNER + b"Response: Success\r\nActionID: gwX-1-1\r\nChallenge: 42\r\n\r\n") == []
    key = hashlib.md5(b"42s3cret").hexdigest()
    assert bytes(session.outgoing) == (
        f"Action: Login\r\nUsername: gw\r\nAuthType: MD5\r\nKey: {key}\r\nEvents: {'on' if events else 'off'}\r\n"
        "ActionID: gwX-1-2\r\n\r\n"
    ).encode()
    session.outgoing.clear()
    effects = session.receive(
        b"Response: Success\r\nActionID: gwX-1-2\r\nMessage: Authentication accepted\r\n\r\n"
        b"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 7\r\nLastReload: 7\r\nStatus: Fully Booted\r\n\r\n"
    )
    assert effects == []
    assert b"Action: ListCommands\r\nActionID: gwX-1-3\r\n\r\n" == bytes(session.outgoing)
    session.outgoing.clear()
    (done,) = session.receive(
        b"Response: Success\r\nActionID: gwX-1-3\r\nPing: Keepalive command.  (Priv: <none>)\r\n"
        b"Originate: Originate a call.  (Priv: originate,all)\r\n\r\n"
    )
    assert isinstance(done, LoggedIn) and done.booted is not None and done.booted.get("Uptime") == "7"
    assert done.commands == (("Ping", "Keepalive command.", "<none>"), ("Originate", "Originate a call.", "originate,all"))
    assert session.state == "up"
    return session


def test_md5_login_and_listcommands() -> None:
    logged_in()


def test_login_failure_is_reported() -> None:
    session = UpstreamSession("gw", lambda: "pw", prefix="p-", auth="plain")
    session.start()
    assert bytes(session.outgoing) == b"Action: Login\r\nUsername: gw\r\nSecret: pw\r\nEvents: on\r\nActionID: p-1\r\n\r\n"
    (failed,) = session.receive(BANNER + b"Response: Error\r\nActionID: p-1\r\nMessage: Authentication failed\r\n\r\n")
    assert failed == LoginFailed("Authentication failed")


@pytest.mark.parametrize("step", [1, 2, 3, 7, 50])
def test_parser_any_split(step: int) -> None:
    data = BANNER + b"Response: Success\r\nActionID: a\r\nPing: Pong\r\n\r\nEvent: X\r\nPrivilege: user,all\r\nA:b\r\nC:  d\r\nE: \r\n\r\n"
    parser = StreamParser()
    messages = []
    for index in range(0, len(data), step):
        messages += parser.feed(data[index:index + step])
    assert parser.banner == "Asterisk Call Manager/11.0.0"
    assert [m.pairs for m in messages] == [
        (("Response", "Success"), ("ActionID", "a"), ("Ping", "Pong")),
        (("Event", "X"), ("Privilege", "user,all"), ("A", "b"), ("C", " d"), ("E", "")),
    ]


def test_parser_finds_a_blank_line_split_across_reads() -> None:
    parser = StreamParser()
    assert parser.feed_raw(BANNER + b"Event: A\r\nX: 1\r\n\r") == []
    assert parser.feed_raw(b"\nEvent: B") == [b"Event: A\r\nX: 1"]
    assert parser.feed_raw(b"\r\n") == []
    assert parser.feed_raw(b"\r\nEvent: C\r\n\r\n") == [b"Event: B", b"Event: C"]
    assert parser.buffered == 0


def test_parser_refuses_a_message_over_its_limit() -> None:
    parser = StreamParser(limit=1000)
    parser.feed_raw(BANNER)
    assert parser.feed_raw(b"Event: Big\r\nData: " + b"x" * 900) == []
    with pytest.raises(UpstreamProtocolError, match="message longer than 1000 bytes"):
        parser.feed_raw(b"x" * 200)
    whole = StreamParser(limit=1000)
    with pytest.raises(UpstreamProtocolError):  # in one read too, after the complete messages
        whole.feed_raw(BANNER + b"Event: A\r\n\r\n" + b"y" * 1001)
    with pytest.raises(UpstreamProtocolError, match="banner"):
        StreamParser().feed_raw(b"z" * 2000)


def test_request_keeps_client_lines_and_swaps_action_id() -> None:
    lines = ["Action: UserEvent", "UserEvent: x", "Header2:value2", "ActionID: mine", "ActionID: second",
             "Upstream: pbx2"]
    assert build_request(lines, "gw-9", ("upstream",)) == (
        b"Action: UserEvent\r\nUserEvent: x\r\nHeader2:value2\r\nActionID: gw-9\r\nActionID: second\r\n\r\n"
    )
    assert build_request(["Action: Ping"], "gw-1") == b"Action: Ping\r\nActionID: gw-1\r\n\r\n"


def test_replies_go_to_their_own_requests_in_any_order() -> None:
    session = logged_in()
    first = session.submit(["Action: Status"], "c1", "tok1")
    second = session.submit(["Action: Ping"], "", "tok2")
    effects = session.receive(
        f"Response: Success\r\nActionID: {second}\r\nPing: Pong\r\n\r\n".encode()
        + f"Response: Success\r\nActionID: {first}\r\nEventList: start\r\nMessage: Channel status will follow\r\n\r\n".encode()
        + b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: A\r\n\r\n"
        + f"Event: Status\r\nPrivilege: Call\r\nChannel: A\r\nActionID: {first}\r\n\r\n".encode()
        + f"Event: StatusComplete\r\nActionID: {first}\r\nEventList: Complete\r\nListItems: 1\r\nItems: 1\r\n\r\n".encode()
    )
    assert [type(e).__name__ for e in effects] == ["RawReply", "Broadcast", "Reply"]
    ping, event, status = effects
    # A plain reply is passed on as received, its blank line included.
    assert ping == RawReply("tok2", f"Response: Success\r\nActionID: {second}\r\nPing: Pong\r\n\r\n".encode())
    assert event.message.get("Event") == "Newchannel" and event.action_id is None
    assert status.token == "tok1" and [i.get("Channel") for i in status.items] == ["A"]
    assert status.completion.get("Items") == "1"
    assert session.pending == 0


def test_broadcast_quoting_a_forwarded_request_restores_the_client_id() -> None:
    session = logged_in()
    gw_id = session.submit(["Action: Originate", "Async: true"], "orig-1", "tok")
    no_id = session.submit(["Action: Originate", "Async: true"], "", "tok2")
    effects = session.receive(
        f"Response: Success\r\nActionID: {gw_id}\r\nMessage: Originate successfully queued\r\n\r\n".encode()
        + f"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {gw_id}\r\nResponse: Success\r\n\r\n".encode()
        + f"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {no_id}\r\nResponse: Failure\r\n\r\n".encode()
    )
    assert isinstance(effects[0], RawReply) and effects[0].token == "tok"
    assert effects[1] == Broadcast(effects[1].message, "orig-1")
    assert effects[2].action_id == ""


def test_stale_replies_and_items_are_dropped() -> None:
    session = logged_in()
    gw_id = session.submit(["Action: CoreShowChannels"], "x", "tok")
    session.abandon(gw_id)
    effects = session.receive(
        f"Response: Success\r\nActionID: {gw_id}\r\nEventList: start\r\n\r\n".encode()
        + f"Event: CoreShowChannel\r\nActionID: {gw_id}\r\nChannel: A\r\n\r\n".encode()
        + f"Event: Status\r\nPrivilege: Call\r\nActionID: {gw_id}\r\n\r\n".encode()
        + f"Event: CoreShowChannelsComplete\r\nActionID: {gw_id}\r\nEventList: Complete\r\n\r\n".encode()
    )
    assert effects == []


def test_fail_all_returns_every_outstanding_token() -> None:
    session = logged_in()
    session.submit(["Action: A"], "", "t1")
    gw_id = session.submit(["Action: B"], "", "t2")
    session.receive(f"Response: Success\r\nActionID: {gw_id}\r\nEventList: start\r\n\r\n".encode())
    assert sorted(session.fail_all()) == ["t1", "t2"]
    assert session.pending == 0


def test_shutdown_is_broadcast_then_reported() -> None:
    session = logged_in()
    effects = session.receive(b"Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\nRestart: True\r\n\r\n")
    assert isinstance(effects[0], Broadcast) and isinstance(effects[1], ShutdownSeen)


def test_listcommands_parsing() -> None:
    session = logged_in()
    gw_id = session.submit(["Action: ListCommands"], "", "t")
    (reply,) = session.receive(
        f"Response: Success\r\nActionID: {gw_id}\r\nWaitEvent: Wait for an event to occur.  (Priv: <none>)\r\n\r\n".encode()
    )
    assert parse_listcommands(parse_message(reply.data[:-4])) == [("WaitEvent", "Wait for an event to occur.", "<none>")]


def test_policy_rules() -> None:
    policy = compile_policy({
        "actions": ["Originate", "Core*", "Ping"], "deny_actions": ["CoreSettings"],
        "constraints": {"Originate": {"Context": ["default", "sales-*"]}},
        "events": ["Newchannel", "Dial*"], "deny_events": ["DialState"],
    })
    assert policy.check_name("coreshowchannels") is None
    assert policy.check_name("CoreSettings") == "deny_actions"
    assert policy.check_name("Redirect") == "actions"
    headers = {"context": "sales-east"}
    assert policy.check_headers("Originate", lambda h: headers.get(h.lower())) is None
    headers = {"context": "internal"}
    assert policy.check_headers("originate", lambda h: headers.get(h.lower())) == "constraints.originate.Context"
    assert policy.check_headers("Originate", lambda h: None) == "constraints.Originate.Context"
    accepts = policy.event_predicate()
    assert accepts("Newchannel") and accepts("DialBegin") and not accepts("DialState") and not accepts("VarSet")
    broken = compile_policy({"actoins": ["Ping"]})
    assert broken.invalid and broken.check_name("Ping") == "invalid_policy"


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(lambda: now[0])
    assert [limiter.take("u", 2.0, 3.0) for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert limiter.take("u", 2.0, 3.0) and not limiter.take("u", 2.0, 3.0)
    assert limiter.take("other", 2.0, 3.0)


def test_reply_for_a_client_that_left_is_dropped_not_delivered() -> None:
    """Upstream bookkeeping without sockets: a departed client's reply completes nothing."""
    from ami_server import Deferred, Response
    from ami_server_gateway.config import parse_gateway_config
    from ami_server_gateway.upstream import Request, Upstream

    class Timer:
        def cancel(self) -> None:
            pass

    class Server:
        def call_later(self, delay, callback):
            return Timer()

    class FakeGateway:
        instance = "t"
        server = Server()

        def answered(self, request):
            pass

    config = parse_gateway_config({"upstreams": {"p": {"host": "h", "username": "u", "secret": "s"}}})
    upstream = Upstream(config.upstreams["p"], FakeGateway())
    kept, left = Deferred(), Deferred()
    mine = Request(kept, "a", "session-1", ["Action: Status"], False)
    theirs = Request(left, "b", "session-2", ["Action: Status"], False)
    for request in (mine, theirs):
        upstream._track(request, 10)
    upstream.client_closed("session-2")
    upstream.answer(theirs, Response.success("late"))
    upstream.answer(mine, Response.success("ok"))
    assert kept.done and not left.done
    assert upstream.stats["Discarded"] == 1 and not upstream.requests
