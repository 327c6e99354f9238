"""Per-user policy through a real gateway: allow/deny, constraints, rate limit, events, ListCommands."""

from __future__ import annotations

import time

from gateway_helpers import wait_until, double, gateway  # noqa: F401 - fixtures


def sent_actions(double):
    return [r.split(b"\r\n")[0] for r in double.received]


def test_denied_action_never_reaches_asterisk(gateway, double) -> None:
    with gateway.client() as ops:
        ops.login("ops", "opspass", events="off")
        reply = ops.action("Redirect", {"ActionID": "r", "Channel": "x", "Exten": "1"})
        assert reply.lines == [("Response", "Error"), ("ActionID", "r"), ("Message", "Permission denied")]
        assert b"Action: Redirect" not in sent_actions(double)
    denied = wait_until(lambda: gateway.log.records("ActionDenied"))
    assert denied[-1]["rule"] == "deny_actions" and denied[-1]["action"] == "Redirect"


def test_header_constraints(gateway, double) -> None:
    with gateway.client() as ops:
        ops.login("ops", "opspass", events="off")
        bad = ops.action("Originate", {"Channel": "Local/1@internal", "Context": "internal", "Exten": "1",
                                       "Priority": "1", "Async": "true"})
        assert bad["Message"] == "Permission denied"
        missing = ops.action("Originate", {"Channel": "Local/1@default", "Application": "Wait", "Async": "true"})
        assert missing["Message"] == "Permission denied"
        assert ops.action("Command", {"Command": "module unload chan_pjsip.so"})["Message"] == "Permission denied"
        reply = ops.action("Command", {"ActionID": "co-6", "Command": "core show version"})
        assert reply["Message"] == "Command output follows"
    rules = [r["rule"] for r in gateway.log.records("ActionDenied")]
    assert rules == ["constraints.Originate.Context", "constraints.Originate.Context", "constraints.Command.Command"]
    assert all(b"Context: internal" not in r for r in double.received)


def test_allow_list_and_upstream_classes(gateway, double) -> None:
    with gateway.client() as dash, gateway.client() as reader:
        dash.login("dashboard", "dashpass", events="off")
        reader.login("reader", "readerpass", events="off")
        assert dash.action("Command", {"Command": "core show version"})["Message"] == "Permission denied"
        assert dash.action("Status", {"ActionID": "st-1"})["EventList"] == "start"
        # reader has no write classes: Asterisk's own rule (Status needs system/call/reporting) is kept
        assert reader.action("Status")["Message"] == "Permission denied"
    rules = [r["rule"] for r in gateway.log.records("ActionDenied")]
    assert rules == ["actions", "classes"]


def test_rate_limit_is_a_clear_audited_error(gateway, double) -> None:
    with gateway.client() as client:
        client.login("limited", "limitedpass", events="off")
        replies = [client.action("Ping", {"ActionID": str(n)}) for n in range(5)]
        messages = [r.get("Message") or r.get("Ping") for r in replies]
        assert messages[:3] == ["Pong", "Pong", "Pong"]
        assert "Rate limit exceeded: 2 actions per second" in messages[3:]
        time.sleep(0.6)
        assert client.action("Ping")["Ping"] == "Pong"
        assert client.action("Logoff")["Response"] == "Goodbye"  # never limited
    denied = gateway.log.records("ActionDenied")
    assert denied and denied[0]["rule"] == "Rate limit exceeded: 2 actions per second"


def test_event_allow_and_deny_lists(gateway, double) -> None:
    with gateway.client() as dash, gateway.client() as ops:
        dash.login("dashboard", "dashpass")
        ops.login("ops", "opspass")
        for name in ("VarSet", "Newchannel", "UserEvent", "DialBegin"):
            double.push(f"Event: {name}\r\nPrivilege: call,all\r\nChannel: X\r\n\r\n".encode())
        double.push(b"Event: Done\r\nPrivilege: call,all\r\n\r\n")
        ops.wait_event("Done")
        assert [e["Event"] for e in ops.events if e["Event"] in ("VarSet", "Newchannel", "UserEvent", "DialBegin")] \
            == ["Newchannel", "UserEvent", "DialBegin"]
        dash.wait_event("DialBegin")
        seen = [e["Event"] for e in dash.events]
        assert "Newchannel" in seen and "VarSet" not in seen and "UserEvent" not in seen
        assert "FullyBooted" not in seen  # dashboard reads call events only


def test_listcommands_shows_what_the_user_may_run(gateway) -> None:
    with gateway.client() as admin, gateway.client() as dash, gateway.client() as ops:
        admin.login("admin", "adminpass", events="off")
        dash.login("dashboard", "dashpass", events="off")
        ops.login("ops", "opspass", events="off")
        everything = admin.action("ListCommands")
        assert everything["Originate"] == "Originate a call.  (Priv: originate,all)"
        assert everything["Ping"] == "Keepalive command.  (Priv: <none>)"
        assert everything["GatewayStatus"].startswith("Show the gateway")
        names = [name for name, _ in dash.action("ListCommands").lines[1:]]
        assert set(names) == {"Ping", "Status", "CoreShowChannels", "ListCommands", "Login", "Logoff", "Challenge"}
        ops_names = [name for name, _ in ops.action("ListCommands").lines[1:]]
        assert "Originate" in ops_names and "Redirect" not in ops_names
