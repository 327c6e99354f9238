"""Blocking actions on the pool, and several upstreams behind one gateway."""

from __future__ import annotations

import threading
import time

import pytest
from asterisk_double import AsteriskDouble, listcommands_handler
from gateway_helpers import gateway_config, gateway_of, upstream_table, wait_until, double, gateway  # noqa: F401 - fixtures

from ami_server.testing import running_server

ORIGINATE = {"Channel": "Local/noanswer@default", "Context": "default", "Exten": "100", "Priority": "1"}


def slow_sync_originate(double: AsteriskDouble, seconds: float) -> None:
    """Synchronous Originate answered after ``seconds`` (as Asterisk does once the call is up)."""

    def handler(conn, pairs, action_id):
        reply = (f"Response: Success\r\nActionID: {action_id}\r\nMessage: Originate successfully queued\r\n\r\n"
                 .encode())
        threading.Timer(seconds, lambda: conn.send(reply)).start()
        return None

    double.handlers["originate"] = handler


@pytest.fixture
def pooled(double):
    slow_sync_originate(double, 0.8)
    table = upstream_table(double.port, pool_size=1, blocking_timeout=5.0)
    with running_server(gateway_config({"pbx1": table})) as gateway:
        wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up")
        yield gateway


def test_sync_originate_runs_on_the_pool_without_stalling_others(pooled, double) -> None:
    with pooled.client() as caller, pooled.client() as other, pooled.client() as third:
        for client in (caller, other, third):
            client.login("admin", "adminpass", events="off")
        caller.send("Originate", {"ActionID": "sync", **ORIGINATE})
        time.sleep(0.2)
        started = time.monotonic()
        assert other.action("Status", {"ActionID": "st-1"})["EventList"] == "start"
        assert time.monotonic() - started < 0.5  # not behind the Originate
        busy = third.action("Originate", {"ActionID": "b", **ORIGINATE})
        assert busy.lines == [("Response", "Error"), ("ActionID", "b"), (
            "Message", "Upstream pbx1 busy: all 1 sessions for blocking actions are in use")]
        reply = caller.read_response(timeout=5)
        assert reply.lines == [("Response", "Success"), ("ActionID", "sync"),
                               ("Message", "Originate successfully queued")]
        # The pool session is free again and reused (no second login).
        logins = len(double.logins)
        assert caller.action("Originate", {"ActionID": "again", **ORIGINATE}, timeout=5)["ActionID"] == "again"
        assert len(double.logins) == logins
    pool_logins = [c for c in double.connections if c.authenticated and not c.events]
    assert len(pool_logins) == 1


def test_async_originate_stays_on_the_main_session(pooled, double) -> None:
    with pooled.client() as caller:
        caller.login("admin", "adminpass", events="off")
        caller.action("Originate", {"ActionID": "a", "Async": "true", **ORIGINATE}, timeout=5)
        assert not gateway_of(pooled).upstreams["pbx1"].pool


#: ``east`` may use pbx2 only.
TWO_USERS = {"admin": {"secret": "adminpass", "read": "all", "write": "all"},
             "east": {"secret": "eastpass", "read": "all", "write": "all",
                      "attributes": {"gateway": {"upstream": "pbx2", "upstreams": ["pbx2"]}}}}


@pytest.fixture
def two():
    first, second = AsteriskDouble(), AsteriskDouble()
    for double in (first, second):
        double.handlers["listcommands"] = listcommands_handler
    double_names = {"pbx1": first, "pbx2": second}

    def ping_from(name):
        def handler(conn, pairs, action_id):
            return f"Response: Success\r\nActionID: {action_id}\r\nServedBy: {name}\r\n\r\n".encode()
        return handler

    for name, double in double_names.items():
        double.handlers["coresettings"] = ping_from(name)
    config = gateway_config(
        {"pbx1": upstream_table(first.port), "pbx2": upstream_table(second.port)},
        users=TWO_USERS, event_header="Upstream",
    )
    try:
        with running_server(config) as gateway:
            wait_until(lambda: all(u.state == "up" for u in gateway_of(gateway).upstreams.values()))
            yield gateway, first, second
    finally:
        first.stop()
        second.stop()


def test_upstream_chosen_by_header_or_user_and_header_stripped(two) -> None:
    gateway, first, second = two
    with gateway.client() as admin, gateway.client() as east:
        admin.login("admin", "adminpass", events="off")
        east.login("east", "eastpass", events="off")
        assert admin.action("CoreSettings")["ServedBy"] == "pbx1"
        assert admin.action("CoreSettings", {"Upstream": "pbx2"})["ServedBy"] == "pbx2"
        assert all(b"Upstream:" not in r for r in second.received)
        assert east.action("CoreSettings")["ServedBy"] == "pbx2"
        assert east.action("CoreSettings", {"Upstream": "pbx1"})["Message"] == "Permission denied"
        assert admin.action("CoreSettings", {"Upstream": "nope"})["Message"] == "Unknown upstream nope"


def test_events_name_their_upstream_and_one_down_leaves_the_other_working(two) -> None:
    gateway, first, second = two
    with gateway.client() as admin:
        admin.login("admin", "adminpass", events="on")
        second.push(b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: A\r\n\r\n")
        event = admin.wait_event("Newchannel")
        assert event.lines[-1] == ("Upstream", "pbx2")
        second.stop()
        lost = admin.wait_event("UpstreamLost")
        assert lost["Upstream"] == "pbx2"
        assert admin.action("CoreSettings", {"Upstream": "pbx2"})["Message"] == "Upstream pbx2 unavailable"
        assert admin.action("CoreSettings")["ServedBy"] == "pbx1"
        assert admin.action("Ping")["Ping"] == "Pong"


def test_a_user_limited_to_some_upstreams_gets_no_events_of_the_others(two) -> None:
    gateway, first, second = two
    with gateway.client() as admin, gateway.client() as east:
        admin.login("admin", "adminpass", events="on")
        east.login("east", "eastpass", events="on")
        first.push(b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: FromOne\r\n\r\n")
        assert admin.wait_event("Newchannel")["Channel"] == "FromOne"  # published before the next one
        second.push(b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: FromTwo\r\n\r\n")
        assert admin.wait_event("Newchannel")["Channel"] == "FromTwo"
        event = east.wait_event("Newchannel")
        assert (event["Channel"], event.lines[-1]) == ("FromTwo", ("Upstream", "pbx2"))
        first.stop()  # the gateway's own events about pbx1 are not for east either
        assert admin.wait_event("UpstreamLost")["Upstream"] == "pbx1"
        second.push(b"Event: Hangup\r\nPrivilege: call,all\r\nChannel: FromTwo\r\n\r\n")
        assert east.wait_event("Hangup")["Channel"] == "FromTwo"
        assert east.action("Ping")["Response"] == "Success"
        assert [e for e in east.events if e.get("Channel") == "FromOne" or e.get("Upstream") == "pbx1"] == []


def test_a_limited_user_gets_no_event_of_an_upstream_a_reload_removed(two) -> None:
    gateway, first, second = two
    with gateway.client() as admin, gateway.client() as east:
        admin.login("admin", "adminpass", events="on")
        east.login("east", "eastpass", events="on")
        only_pbx2 = gateway_config({"pbx2": upstream_table(second.port)}, users=TWO_USERS, event_header="Upstream")
        ok, _ = gateway.call(lambda: gateway.server.reload(only_pbx2))
        assert ok
        lost = admin.wait_event("UpstreamLost")
        assert (lost["Upstream"], lost["Reason"]) == ("pbx1", "removed by reload")
        second.push(b"Event: Hangup\r\nPrivilege: call,all\r\nChannel: FromTwo\r\n\r\n")
        assert admin.wait_event("Hangup")["Channel"] == "FromTwo"
        assert east.wait_event("Hangup")["Channel"] == "FromTwo"
        assert [e for e in east.events if e.get("Upstream") == "pbx1"] == []
