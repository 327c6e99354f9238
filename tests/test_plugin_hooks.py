"""Observer hooks and handler failures: contained per plugin, called through pluggy (R-2.12, Q-7.5, Q-7.9)."""

from __future__ import annotations

import threading
import time

from ami_server import Event, Response
from ami_server.testing import make_config, running_server

from helpers import USERS
from sample_plugins import Recorder, Second


def config(**server):
    return make_config({"users": USERS}, **server)

def test_plugin_failures_are_contained_r_2_12_q_7_5():
    recorder, second = Recorder(), Second()
    cfg = config(action_timeout=0.3)
    with running_server(cfg, extra_plugins=[("recorder", recorder), ("second", second)]) as srv:
        with srv.client() as c:
            c.login("admin", "adminpass", events="user")
            assert c.action("Boom", {"ActionID": "b1"}).lines == [
                ("Response", "Error"), ("ActionID", "b1"), ("Message", "Internal error")
            ]
            reply = c.action("Refuse")
            assert reply["Message"] == "Not today" and reply["Reason"] == "testing"
            assert c.action("BadReply")["Message"] == "Internal error"
            assert c.action("Later")["Message"] == "Done later"
            assert c.action("Never", {"ActionID": "n"})["Message"] == "Action timed out"
            assert recorder.abandoned.complete(Response.success("too late")) is False
            assert c.action("Ping")["Ping"] == "Pong"
            c.action("UserEvent", {"UserEvent": "Seen"})
            c.wait_event("UserEvent")
            session_id = recorder.opened[0]
        deadline = time.monotonic() + 5
        while not recorder.closed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert recorder.closed == [(session_id, "peer closed")]
    assert second.opened == 1
    assert "UserEvent" in second.events and "UserEvent" in recorder.events
    text = srv.log.text()
    assert "ZeroDivisionError" in text and "open hook failure" in text and "event hook failure" in text

def test_close_during_waitevent_runs_close_hook_once():
    recorder = Recorder()
    with running_server(config(), extra_plugins=[("recorder", recorder)]) as srv:
        c = srv.client()
        c.login("admin", "adminpass", events="off")
        c.send("WaitEvent", {"Timeout": "30"})
        time.sleep(0.1)
        c.close()
        deadline = time.monotonic() + 5
        while not recorder.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [reason for _, reason in recorder.closed] == ["peer closed"]
        with srv.client() as other:
            assert other.login("admin", "adminpass")["Message"] == "Authentication accepted"
