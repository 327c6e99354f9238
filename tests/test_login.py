"""Logins over real sockets: delays, single-login rules, MD5, limits, the backend chain (spec §3)."""

from __future__ import annotations

import socket
import time

import pytest

from ami_server.testing import make_config, running_server

from helpers import USERS
from sample_plugins import BrokenBackend, StaticBackend


def config(**server):
    return make_config({"users": USERS}, **server)

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
    assert '"event":"AuthLimitReached"' in srv.log.text()

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
    assert '"event":"AuthBackendError"' in srv.log.text()

def test_unknown_auth_backend_stops_start_up():
    from ami_server.audit import MemorySink
    from ami_server.server import Server, ServerError

    cfg = make_config({"users": USERS, "auth": {"backends": ["ldap"]}})
    with pytest.raises(ServerError, match="auth.backends: no loaded plugin named 'ldap'"):
        Server(cfg, log_sink=MemorySink()).load()


def audit_records_once_closed(srv):
    """The audit records, once the server wrote its SessionClosed (within 5 s)."""
    deadline = time.monotonic() + 5
    while not srv.log.records("SessionClosed") and time.monotonic() < deadline:
        time.sleep(0.01)
    return [record for record in srv.log.records() if record.get("audit")]


def test_a_login_cycle_leaves_three_audit_records_a_3_16():
    """A-3.16: connect, Login, Logoff, close over a socket: opening, one login outcome, the close."""
    with running_server(config()) as srv:
        with srv.client() as client:
            client.login("admin", "adminpass", events="off")
            client.send("Logoff", [("ActionID", "bye")])
            assert client.read_until_closed(timeout=5)
        records = audit_records_once_closed(srv)
    assert [r["event"] for r in records] == ["SessionOpened", "SuccessfulAuth", "SessionClosed"]
    opened, outcome, closed = records
    assert opened["session"] == outcome["session"] == closed["session"] == outcome["SessionID"]
    # The security event's headers and the login's fields, in one record.
    assert (outcome["login"], outcome["auth_type"], outcome["backend"]) == ("LoginSucceeded", "plain", "config")
    assert (outcome["AccountID"], outcome["Severity"], outcome["UsingPassword"]) == ("admin", "Informational", "0")
    assert outcome["username"] == "admin" and outcome["remote_ip"] == "127.0.0.1"
    assert closed["reason"] == "logoff"


def test_a_failed_login_leaves_one_outcome_record_a_3_16():
    """A-3.16: a wrong secret is one record, InvalidPassword with the failed login's fields; then the close."""
    with running_server(config()) as srv:
        with srv.client() as client:
            client.send("Login", [("Username", "admin"), ("Secret", "wrong")])
            assert client.read_until_closed(timeout=5)
        records = audit_records_once_closed(srv)
    assert [r["event"] for r in records] == ["SessionOpened", "InvalidPassword", "SessionClosed"]
    outcome = records[1]
    assert (outcome["login"], outcome["reason"], outcome["AccountID"]) == ("LoginFailed", "invalid_password", "admin")
    assert records[2]["reason"] == "login failed"
    assert "wrong" not in str(records)
