"""Upstream connection lifecycle: loss, restart, backoff, login failures, audit, secrets."""

from __future__ import annotations

import time

import pytest
from asterisk_double import AsteriskDouble, Recording
from gateway_helpers import gateway_config, gateway_of, upstream_table, upstream_up, wait_until, double, gateway  # noqa: F401 - fixtures

from ami_server.testing import running_server


def records(gateway, name):
    return gateway.log.records(name)


def test_upstream_down_answers_at_once_and_local_actions_work() -> None:
    double = AsteriskDouble()
    port = double.port
    double.stop()  # nothing listens there now
    with running_server(gateway_config({"pbx1": upstream_table(port)})) as gateway:
        with gateway.client() as client:
            client.login("admin", "adminpass", events="on")
            wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].stats["Connects"] == 0
                       and gateway_of(gateway).upstreams["pbx1"].reported_down, what="first attempt failed")
            started = time.monotonic()
            reply = client.action("Status", {"ActionID": "s"})
            assert reply.lines == [("Response", "Error"), ("ActionID", "s"), ("Message", "Upstream pbx1 unavailable")]
            assert time.monotonic() - started < 1.0
            assert client.action("Ping")["Ping"] == "Pong"


def test_restart_fails_outstanding_keeps_clients_and_announces_return(gateway, double) -> None:
    shutdown = b"Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\nRestart: True\r\n\r\n"
    assert shutdown in Recording.load("upstream_restart").connections[1][0].reply
    with gateway.client() as client, gateway.client() as waiting:
        client.login("admin", "adminpass", events="on")
        waiting.login("admin", "adminpass", events="off")
        double.delay = 1.0
        waiting.send("Status", {"ActionID": "w"})
        time.sleep(0.2)

        def restart() -> None:
            double.push(shutdown)
            double.close_all()

        restart()
        reply = waiting.read_response()
        assert reply.lines == [("Response", "Error"), ("ActionID", "w"), ("Message", "Upstream pbx1 unavailable")]
        assert client.wait_event("Shutdown").raw == shutdown
        lost = client.wait_event("UpstreamLost")
        assert lost["Reason"] == "Shutdown (Restart: True)" and lost["Failed"] == "1"
        double.delay = 0
        back = client.wait_event("UpstreamConnected")
        assert back["Reconnect"] == "Yes" and back["Uptime"] == "5" and back["Status"] == "Fully Booted"
        # Only the gateway's own FullyBooted of the client's login: the upstream's greeting is not passed on.
        assert [e.get("Event") for e in client.events].count("FullyBooted") == 1
        assert waiting.action("Status", {"ActionID": "st-1"})["EventList"] == "start"


def test_reconnect_uses_backoff_and_login_failure_waits_the_cap(double) -> None:
    table = upstream_table(double.port, backoff_initial=0.1, backoff_cap=0.6, backoff_jitter=0.0)
    with running_server(gateway_config({"pbx1": table})) as gateway:
        wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up")
        with gateway.client() as client:
            client.login("admin", "adminpass", events="on")
            client.action("Status", {"ActionID": "st-1"})  # lends the gateway a logger for its records
            double.accept_login = False
            double.close_all()
            failed = client.wait_event("UpstreamLoginFailed", timeout=5)
            assert failed["Message"] == "Authentication failed" and float(failed["RetryIn"]) >= 0.6
            wait_until(lambda: len([x for x in double.logins if x[1] == "failed"]) >= 3, timeout=5)
            times = [t for t, outcome in double.logins if outcome == "failed"]
            assert all(b - a >= 0.58 for a, b in zip(times, times[1:]))
            double.accept_login = True
            assert client.wait_event("UpstreamConnected", timeout=5)["Reconnect"] == "Yes"
        names = [r["event"] for r in gateway.log.records() if r.get("event", "").startswith("Upstream")]
        assert names[:1] == ["UpstreamConnected"]
        assert {"UpstreamLost", "UpstreamLoginFailed"} <= set(names)
        assert records(gateway, "UpstreamLoginFailed")[0]["upstream"] == "pbx1"


def test_connect_backoff_grows(double) -> None:
    port = double.port
    double.stop()
    table = upstream_table(port, backoff_initial=0.05, backoff_cap=0.4, backoff_jitter=0.0)
    with running_server(gateway_config({"pbx1": table})) as gateway:
        upstream = gateway_of(gateway).upstreams["pbx1"]
        time.sleep(1.0)
        # 0.05 + 0.1 + 0.2 + 0.4 + 0.4 ... : about five attempts in a second, not a busy loop
        assert upstream.backoff._next == pytest.approx(0.4)
        assert upstream.state in ("down", "connecting")


def test_secrets_never_reach_the_log(double, monkeypatch, tmp_path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("gw-secret\n")
    table = upstream_table(double.port)
    del table["secret"]
    table["secret_file"] = str(secret_file)
    with running_server(gateway_config({"pbx1": table})) as gateway:
        wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up")
        with gateway.client() as client:
            client.login("admin", "adminpass", events="off")
            client.action("Status", {"ActionID": "st-1"})
            double.accept_login = False
            double.close_all()
            wait_until(lambda: records(gateway, "UpstreamLoginFailed"), timeout=5)
        text = "\n".join(gateway.log.lines)
    import hashlib
    key = hashlib.md5(b"123456789gw-secret").hexdigest()
    assert "UpstreamConnected" in text
    assert "gw-secret" not in text and key not in text
    from ami_server_gateway.config import parse_gateway_config
    parsed = parse_gateway_config({"upstreams": {"p": table}})
    assert "gw-secret" not in repr(parsed)


@pytest.mark.parametrize("table,message", [
    ({"upstreams": {"p": {"host": "h", "username": "u"}}}, "plugins.gateway.upstreams.p.secret: give exactly one"),
    ({"upstreams": {"p": {"host": "h", "username": "u", "secret": "s", "port": 0}}},
     "plugins.gateway.upstreams.p.port: must be an integer"),
    ({"upstreams": {"p": {"host": "h", "username": "u", "secret_env": "NO_SUCH_VAR_X"}}},
     "plugins.gateway.upstreams.p.secret_env: environment variable"),
    ({"upstreams": {"p": {"host": "h", "username": "u", "secret": "s", "colour": 1}}},
     "plugins.gateway.upstreams.p.colour: unknown key"),
    ({"upstreams": {"p": {"host": "h", "username": "u", "secret": "s"}}, "default_upstream": "q"},
     "plugins.gateway.default_upstream: no upstream called 'q'"),
])
def test_config_errors_name_the_key(table, message) -> None:
    from ami_server_gateway.config import ConfigError, parse_gateway_config
    with pytest.raises(ConfigError) as info:
        parse_gateway_config(table, env={})
    assert str(info.value).startswith(message)


def test_an_endless_upstream_message_ends_the_connection_not_the_memory(monkeypatch, double) -> None:
    """No unbounded buffer: a message over the limit closes the upstream session, which comes back."""
    from ami_server_gateway import amiproto

    monkeypatch.setattr(amiproto, "MAX_MESSAGE_BYTES", 65536)
    with running_server(gateway_config({"pbx1": upstream_table(double.port)})) as gateway, gateway.client() as client:
        wait_until(lambda: upstream_up(gateway), what="upstream up")
        client.login("admin", "adminpass", events="on")
        double.push(b"Event: Endless\r\nData: " + b"x" * 100000)
        lost = client.wait_event("UpstreamLost")
        assert lost["Reason"] == "protocol error: message longer than 65536 bytes"
        assert client.wait_event("UpstreamConnected")["Reconnect"] == "Yes"
        assert client.action("Status", {"ActionID": "st"})["EventList"] == "start"
