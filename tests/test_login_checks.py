"""ServerHandle.add_login_check and set_session_directory: the seams a cluster plugin uses, over real sockets."""

from __future__ import annotations

import threading

from ami_server import LoginCheck, SessionInfo, hookimpl
from ami_server.testing import make_config, running_server

from helpers import USERS


class Checks:
    """A login check answering from another thread, as a Redis-backed one does."""

    def __init__(self, verdict=None, answer=True, raise_=False):
        self.verdict = verdict
        self.answer = answer
        self.raise_ = raise_
        self.seen = []

    @hookimpl
    def register_actions(self, server):
        def check(login: LoginCheck, answer):
            self.seen.append(login)
            if self.raise_:
                raise RuntimeError("check failed on purpose")
            if self.answer:
                threading.Timer(0.05, answer, args=(self.verdict,)).start()

        server.add_login_check(check)
        return []


def _server(plugin, **server):
    cfg = make_config({"users": USERS, "auth": {"timeout": 1}}, **server)
    return running_server(cfg, extra_plugins=[("checks", plugin)], entry_points=())


def test_an_allowing_check_sees_the_login_and_lets_it_proceed():
    plugin = Checks()
    with _server(plugin) as srv, srv.client() as client:
        assert client.login("admin", "adminpass")["Message"] == "Authentication accepted"
        (login,) = plugin.seen
        assert login.username == "admin" and login.single_login is False and login.backend == "config"
        assert isinstance(login.session, SessionInfo) and not login.session.authenticated


def test_single_login_flag_follows_the_rule():
    plugin = Checks()
    with _server(plugin, allow_multiple_login=False) as srv, srv.client() as client:
        client.login("admin", "adminpass")
        assert plugin.seen[0].single_login is True


def test_in_use_refuses_like_a_local_second_login():
    plugin = Checks("in_use")
    with _server(plugin) as srv, srv.client() as client:
        assert client.login("admin", "adminpass")["Message"] == "Login Already In Use"
        client.read_until_closed(timeout=5)
        assert srv.log.records("SessionLimit")


def test_other_refusals_no_answer_and_exceptions_fail_closed():
    for plugin, reason in ((Checks("over quota"), "over quota"), (Checks(answer=False), "no answer"),
                           (Checks(raise_=True), "check failed on purpose")):
        with _server(plugin) as srv, srv.client() as client:
            assert client.login("admin", "adminpass")["Message"] == "Authentication failed"
            (record,) = srv.log.records(login="LoginFailed")
            assert reason in record["reason"]


class Directory:
    """A session directory with one session on another node."""

    def __init__(self):
        self.kicked = []

    @hookimpl
    def register_actions(self, server):
        server.set_session_directory(self)
        return []

    def list(self, local, done):
        other = SessionInfo("0xremote", "IPV4/TCP/192.0.2.9/40000", "IPV4/TCP/192.0.2.1/5038", "TCP", True,
                            "far", 1, 1, 1, state="authenticated", opened_at=1.0, login_time=2.0)
        threading.Thread(target=done, args=([("here", i) for i in local] + [("there", other)],)).start()

    def kick(self, session_id, reason, done):
        self.kicked.append((session_id, reason))
        done(session_id == "0xremote")


def test_session_directory_adds_node_headers_and_remote_kicks():
    plugin = Directory()
    with _server(plugin) as srv, srv.client() as client:
        client.login("admin", "adminpass", events="off")
        client.send("SessionList")
        assert client.read_response()["EventList"] == "start"
        first, second, done = client.read_block(), client.read_block(), client.read_block()
        assert [first["Node"], second["Node"]] == ["there", "here"]
        assert [n for n, _ in second.lines[:3]] == ["Event", "SessionID", "Node"]
        assert done["Event"] == "SessionListComplete" and done["ListItems"] == "2"
        assert client.action("SessionKick", {"SessionID": "0xremote"})["Message"] == "Session kicked"
        assert client.action("SessionKick", {"SessionID": "0xnone"})["Message"] == "No such session"
        assert plugin.kicked == [("0xremote", "kicked by admin"), ("0xnone", "kicked by admin")]
