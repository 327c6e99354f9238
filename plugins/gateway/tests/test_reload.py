"""A reload reads ``[plugins.gateway]`` again: upstreams added, removed or reconnected, the others kept."""

from __future__ import annotations

import time

from asterisk_double import AsteriskDouble, listcommands_handler
from gateway_helpers import gateway_config, gateway_of, upstream_table, wait_until

from ami_server.testing import running_server


def served_by(name):
    def handler(conn, pairs, action_id):
        return f"Response: Success\r\nActionID: {action_id}\r\nServedBy: {name}\r\n\r\n".encode()
    return handler


def test_reload_adds_removes_and_reconnects_upstreams_and_keeps_the_others() -> None:
    first, second = AsteriskDouble(), AsteriskDouble()
    for name, double in (("pbx1", first), ("pbx2", second)):
        double.handlers["listcommands"] = listcommands_handler
        double.handlers["coresettings"] = served_by(name)
    try:
        with running_server(gateway_config({"pbx1": upstream_table(first.port)})) as gateway:
            plugin = gateway_of(gateway)
            wait_until(lambda: plugin.upstreams["pbx1"].state == "up", what="pbx1 up")
            kept = plugin.upstreams["pbx1"]
            with gateway.client() as admin:
                admin.login("admin", "adminpass", events="on")
                # pbx2 added, pbx1 with a longer action timeout only: its session stays.
                both = gateway_config({"pbx1": upstream_table(first.port, action_timeout=4.0),
                                       "pbx2": upstream_table(second.port)})
                ok, _ = gateway.call(lambda: gateway.server.reload(both))
                assert ok
                assert admin.wait_event("UpstreamConnected")["Upstream"] == "pbx2"
                assert admin.action("CoreSettings", {"Upstream": "pbx2"})["ServedBy"] == "pbx2"
                assert plugin.upstreams["pbx1"] is kept and kept.config.action_timeout == 4.0
                assert len(first.connections) == 1 and kept.stats["Connects"] == 1
                (record,) = gateway.log.records("GatewayReloaded")
                assert (record["added"], record["updated"], record["restart_required"]) == (["pbx2"], ["pbx1"], [])
                # pbx1's secret changes (it reconnects with the new one), pbx2 goes.
                first.secret = "new-secret"
                changed = gateway_config({"pbx1": upstream_table(first.port, secret="new-secret")})
                ok, _ = gateway.call(lambda: gateway.server.reload(changed))
                assert ok
                reasons = {admin.wait_event("UpstreamLost")["Reason"] for _ in range(2)}
                assert reasons == {"settings changed by reload", "removed by reload"}
                assert admin.wait_event("UpstreamConnected")["Upstream"] == "pbx1"
                assert admin.action("CoreSettings")["ServedBy"] == "pbx1"
                assert len(first.connections) == 2 and sorted(gateway_of(gateway).upstreams) == ["pbx1"]
                assert admin.action("CoreSettings", {"Upstream": "pbx2"})["Message"] == "Unknown upstream pbx2"
                # A table that does not parse changes nothing.
                bad = gateway_config({"pbx1": {**upstream_table(first.port), "port": 0}})
                ok, _ = gateway.call(lambda: gateway.server.reload(bad))
                assert ok
                assert "port" in gateway.log.records("GatewayReloadFailed")[-1]["error"]
                assert admin.action("CoreSettings")["ServedBy"] == "pbx1"
                assert len(first.connections) == 2
    finally:
        first.stop()
        second.stop()


def test_a_reload_that_lengthens_timeouts_says_they_need_a_restart() -> None:
    double = AsteriskDouble()
    double.handlers["listcommands"] = listcommands_handler
    try:
        with running_server(gateway_config({"pbx1": upstream_table(double.port)})) as gateway:
            wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up", what="pbx1 up")
            longer = gateway_config({"pbx1": upstream_table(double.port, action_timeout=600.0)})
            ok, _ = gateway.call(lambda: gateway.server.reload(longer))
            assert ok
            assert gateway.log.records("GatewayReloaded")[-1]["restart_required"] == ["timeouts"]
    finally:
        double.stop()


def test_forwarded_read_only_actions_are_audited_as_read_only_and_the_others_always() -> None:
    double = AsteriskDouble()
    double.handlers["listcommands"] = listcommands_handler
    double.handlers["coresettings"] = served_by("pbx1")
    double.handlers["hangup"] = served_by("pbx1")
    try:
        with running_server(gateway_config({"pbx1": upstream_table(double.port)})) as gateway:
            wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up", what="pbx1 up")
            with gateway.client() as admin, gateway.client() as dashboard:
                admin.login("admin", "adminpass", events="off")
                dashboard.login("dashboard", "dashpass", events="off")
                assert admin.action("CoreSettings", {"ActionID": "read"})["ServedBy"] == "pbx1"
                assert admin.action("Hangup", {"ActionID": "write"})["ServedBy"] == "pbx1"
                assert dashboard.action("Hangup", {"ActionID": "denied"})["Message"] == "Permission denied"
            executed = [r["action_id"] for r in gateway.log.records("ActionExecuted")]
            assert "write" in executed and "read" not in executed
            assert [r["action_id"] for r in gateway.log.records("ActionDenied")] == ["denied"]
    finally:
        double.stop()


def test_a_shorter_action_timeout_applies_to_requests_sent_after_the_reload() -> None:
    """A request sent after a reload shortened action_timeout times out then, not behind older ones."""
    double = AsteriskDouble()
    double.handlers["listcommands"] = listcommands_handler
    double.handlers["hold"] = lambda conn, pairs, action_id: None  # never answered
    try:
        with running_server(gateway_config({"pbx1": upstream_table(double.port, action_timeout=20.0)})) as gateway:
            wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up", what="pbx1 up")
            with gateway.client() as first, gateway.client() as second:
                first.login("admin", "adminpass", events="off")
                second.login("admin", "adminpass", events="off")
                first.send("Hold", {"ActionID": "old"})  # due in 20 s
                wait_until(lambda: len(double.received) == 1, what="the first request upstream")
                shorter = gateway_config({"pbx1": upstream_table(double.port, action_timeout=0.5)})
                ok, _ = gateway.call(lambda: gateway.server.reload(shorter))
                assert ok
                started = time.monotonic()
                reply = second.action("Hold", {"ActionID": "new"}, timeout=10)
                assert reply["Message"] == "Upstream pbx1 timed out"
                assert time.monotonic() - started < 5
    finally:
        double.stop()
