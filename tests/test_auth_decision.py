"""Every AuthDecision field a third-party backend sets takes effect (A-3.7, A-3.8, A-3.13, A-3.15).

The backend below is an ordinary plugin named in ``[auth] backends``; the
sessions run in memory (ami_server.testing.MemoryServer).
"""

from __future__ import annotations

import pluggy
import pytest

from ami_server import AuthDecision, hookimpl
from ami_server.testing import MemoryServer, make_config, parse_blocks


class Scripted:
    """Answers every Login with the decision the test set; never blocks."""

    ami_server_nonblocking = True

    def __init__(self, decision):
        self.decision = decision

    @hookimpl
    def authenticate(self, request):
        return self.decision


def harness(decision, **server):
    config = make_config({"auth": {"backends": ["scripted"]}}, **server)
    return MemoryServer(config, extra_plugins=[("scripted", Scripted(decision))])


def login(memory, username="ext", remote=None, extra=b""):
    peer = memory.connect(remote=remote)
    peer.read()
    peer.send(b"Action: Login\r\nUsername: %s\r\nSecret: s3cr3t-value\r\n%s\r\n" % (username.encode(), extra))
    return peer, peer.read()


def test_read_and_write_classes_of_the_decision_apply_c_4_3_c_4_5():
    with harness(AuthDecision.accept(read="user", write="user")) as memory:
        peer, reply = login(memory)
        assert b"Authentication accepted" in reply
        assert b"FullyBooted" not in reply  # no system class to read
        peer.send(b"Action: UserEvent\r\nUserEvent: Mine\r\n\r\n")  # write: user
        blocks = parse_blocks(peer.read())
        assert [b.get("Response") or b.get("Event") for b in blocks] == ["Success", "UserEvent"]  # read: user
        peer.send(b"Action: SessionList\r\n\r\n")  # write: system needed
        assert b"Permission denied" in peer.read()


@pytest.mark.parametrize("reason, event", [
    ("unknown_user", "InvalidAccountID"),
    ("acl_denied", "FailedACL"),
    ("invalid_password", "InvalidPassword"),
    ("challenge_failed", "ChallengeResponseFailed"),
    (None, None),
])
def test_the_rejection_reason_selects_the_security_event_and_detail_is_audited_a_3_14(reason, event):
    with harness(AuthDecision.reject(reason, detail="explained")) as memory:
        peer, reply = login(memory)
        memory.advance(0)
        assert reply + peer.read() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
        failed = memory.log.records(login="LoginFailed")
        assert failed[-1]["reason"] == (reason or "rejected") and failed[-1]["detail"] == "explained"
        assert failed[-1]["backend"] == "scripted"
        security = {"InvalidAccountID", "FailedACL", "InvalidPassword", "ChallengeResponseFailed"}
        seen = [r["event"] for r in memory.log.records() if r.get("event") in security]
        assert seen == ([event] if event else [])


@pytest.mark.parametrize("server_default, decided, second_allowed", [
    (True, False, False),   # the backend forbids what the server allows
    (False, True, True),    # the backend allows what the server forbids
    (True, None, True),     # no opinion: the server's setting
    (False, None, False),
])
def test_allow_multiple_login_of_the_decision_overrides_the_server_a_3_13(server_default, decided, second_allowed):
    decision = AuthDecision.accept(read="all", write="all", allow_multiple_login=decided)
    with harness(decision, allow_multiple_login=server_default) as memory:
        _, first = login(memory)
        assert b"Authentication accepted" in first
        second, reply = login(memory)
        memory.advance(0)
        reply += second.read()
        if second_allowed:
            assert b"Authentication accepted" in reply
        else:
            assert reply == b"Response: Error\r\nMessage: Login Already In Use\r\n\r\n"
            assert second.closed
            assert [r["AccountID"] for r in memory.log.records("SessionLimit")] == ["ext"]
        # Another user is never affected by this user's rule.
        _, other = login(memory, username="someone-else")
        assert b"Authentication accepted" in other


@pytest.mark.parametrize("server_default, decided, refused", [
    (False, True, True),
    (True, False, False),
    (True, None, True),
    (False, None, False),
])
def test_require_tls_for_plaintext_of_the_decision_overrides_the_server(server_default, decided, refused):
    decision = AuthDecision.accept(read="all", write="all", require_tls_for_plaintext=decided)
    with harness(decision, require_tls_for_plaintext=server_default) as memory:
        peer, reply = login(memory, remote=("192.0.2.7", 40001))
        memory.advance(0)
        reply += peer.read()
        if refused:
            assert reply == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
            assert memory.log.records(login="LoginFailed")[-1]["reason"] == "plaintext secret refused without TLS"
        else:
            assert b"Authentication accepted" in reply
        # From loopback a plaintext login is always allowed.
        _, local = login(memory, username="local")
        assert b"Authentication accepted" in local


def test_pluggy_monitoring_sees_every_hook_call():
    """Hooks go through the plugin manager, so add_hookcall_monitoring observes each call."""
    from ami_server.plugins import create_plugin_manager

    class Observer:
        @hookimpl
        def on_session_open(self, session):
            pass

        @hookimpl
        def on_session_close(self, session, reason):
            pass

        @hookimpl
        def on_event(self, event):
            pass

    manager = create_plugin_manager()
    calls = []
    manager.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls])), lambda *a: None,
    )
    config = make_config({"auth": {"backends": ["scripted"]}})
    plugins = [("scripted", Scripted(AuthDecision.accept("all", "all"))), ("observer", Observer())]
    with MemoryServer(config, extra_plugins=plugins, plugin_manager=manager) as memory:
        peer, reply = login(memory)
        assert b"Authentication accepted" in reply
        peer.send(b"Action: Logoff\r\n\r\n")
        peer.read()
    names = [name for name, _ in calls]
    assert names.count("register_actions") >= 12  # one per builtin and plugin that implements it
    assert ("authenticate", ["scripted"]) in calls
    assert ("on_session_open", ["observer"]) in calls
    assert ("on_session_close", ["observer"]) in calls
    assert ("on_event", ["observer"]) in calls  # SuccessfulAuth
    assert isinstance(manager, pluggy.PluginManager)
