"""Blocking handlers run in the worker pool; the loop keeps serving everyone else."""

from __future__ import annotations

import select
import threading
import time

from ami_server import Action, ActionError, Event, Response, hookimpl
from ami_server.testing import make_config, running_server

from helpers import USERS, wait_for


class SlowPlugin:
    """Blocking actions whose progress the test can observe and release."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.threads: list[str] = []

    def sleep2(self, ctx):
        self.threads.append(threading.current_thread().name)
        self.started.set()
        time.sleep(2.0)  # a worker thread, not the loop
        self.finished.set()
        ctx.publish(Event("SleptWell", "user", {"Seconds": "2"}))
        return Response.success("Slept 2 s")

    def wait_release(self, ctx):
        self.started.set()
        released = self.release.wait(5.0)
        self.finished.set()
        return Response.success("Released" if released else "Not released")

    def fail(self, ctx):
        raise RuntimeError("database went away")

    def refuse(self, ctx):
        raise ActionError("No such row", {"Table": "users"})

    def later(self, ctx):
        deferred = ctx.defer()
        ctx.call_later(0.05, lambda: deferred.complete(Response.success("Deferred from a worker")))
        return deferred

    def misuse(self, ctx):
        return Response.success(ctx.control.challenge())

    @hookimpl
    def register_actions(self):
        return [
            Action("Sleep2", self.sleep2, "Sleep two seconds.", "user", blocking=True),
            Action("WaitRelease", self.wait_release, "Wait for the test.", "user", blocking=True),
            Action("FailBlocking", self.fail, "Raise.", "user", blocking=True),
            Action("RefuseBlocking", self.refuse, "ActionError.", "user", blocking=True),
            Action("LaterBlocking", self.later, "Defer from a worker.", "user", blocking=True),
            Action("MisuseBlocking", self.misuse, "Session method off the loop.", "user", blocking=True,
                   control=True),
        ]


def start(plugin, **server):
    config = make_config({"users": USERS}, **server)
    return running_server(config, extra_plugins=[("slow", plugin)], entry_points=())


def test_a_2_second_blocking_action_does_not_delay_other_sessions_pings():
    plugin = SlowPlugin()
    with start(plugin) as srv, srv.client() as sleeper, srv.client() as other:
        sleeper.login("admin", "adminpass")
        other.login("admin", "adminpass", events="off")
        sleeper.send("Sleep2", {"ActionID": "s"})
        assert plugin.started.wait(5.0)
        for n in range(5):
            pong = other.action("Ping", {"ActionID": f"p{n}"}, timeout=1.5)
            assert pong["Ping"] == "Pong" and pong["ActionID"] == f"p{n}"
        # Every Pong arrived while the handler was still asleep in its worker.
        assert not plugin.finished.is_set()
        reply = sleeper.read_response(timeout=5.0)
        assert reply.lines == [("Response", "Success"), ("ActionID", "s"), ("Message", "Slept 2 s")]
        # the event the handler published follows its own response.
        assert sleeper.read_block(timeout=2.0)["Event"] == "SleptWell"
        assert plugin.threads[0].startswith("ami-worker")


def test_the_session_itself_waits_for_its_blocking_reply_r_2_9():
    plugin = SlowPlugin()
    with start(plugin) as srv, srv.client() as client:
        client.login("admin", "adminpass", events="off")
        client.send("WaitRelease", {"ActionID": "w"})
        client.send("Ping", {"ActionID": "p"})
        assert plugin.started.wait(5.0)
        assert not select.select([client.sock], [], [], 0.3)[0], "the Ping was answered while an action ran"
        plugin.release.set()
        assert client.read_response()["ActionID"] == "w"
        assert client.read_response()["ActionID"] == "p"


def test_a_request_arriving_while_an_action_runs_waits_r_2_9():
    """The second request comes in a read of its own, after the first action started: still queued."""
    plugin = SlowPlugin()
    with start(plugin) as srv, srv.client() as client:
        client.login("admin", "adminpass", events="off")
        client.send("WaitRelease", {"ActionID": "w"})
        assert plugin.started.wait(5.0)
        client.send("Ping", {"ActionID": "p"})
        assert not select.select([client.sock], [], [], 0.3)[0], "answered while an action ran"
        plugin.release.set()
        assert client.read_response()["ActionID"] == "w"
        assert client.read_response()["ActionID"] == "p"


def test_blocking_failures_answer_like_loop_handlers_r_2_12():
    plugin = SlowPlugin()
    with start(plugin) as srv, srv.client() as client:
        client.login("admin", "adminpass", events="off")
        failed = client.action("FailBlocking", {"ActionID": "f"})
        assert failed.lines == [("Response", "Error"), ("ActionID", "f"), ("Message", "Internal error")]
        refused = client.action("RefuseBlocking")
        assert refused.lines == [("Response", "Error"), ("Message", "No such row"), ("Table", "users")]
        misuse = client.action("MisuseBlocking")
        assert misuse["Message"] == "Internal error"
        later = client.action("LaterBlocking")
        assert later["Message"] == "Deferred from a worker"
        assert client.action("Ping")["Ping"] == "Pong"
    failures = srv.log.records("ActionFailed")
    assert any("database went away" in r["error"] for r in failures)
    assert any("only be called on the event loop" in r["error"] for r in failures)


def test_action_timeout_answers_and_discards_the_late_result():
    plugin = SlowPlugin()
    with start(plugin, action_timeout=0.3) as srv, srv.client() as client:
        client.login("admin", "adminpass", events="off")
        reply = client.action("WaitRelease", {"ActionID": "t"}, timeout=5.0)
        assert reply.lines == [("Response", "Error"), ("ActionID", "t"), ("Message", "Action timed out")]
        plugin.release.set()
        assert plugin.finished.wait(5.0)
        pong = client.action("Ping", {"ActionID": "after"})
        assert pong["ActionID"] == "after"
        assert client.buffer == b""  # the late "Released" reply was dropped
        wait_for(lambda: srv.log.records("LateReplyDiscarded"), "the late reply to be reported")


def test_a_full_worker_queue_refuses_instead_of_growing():
    plugin = SlowPlugin()
    with start(plugin, worker_threads=1, worker_queue_limit=1) as srv:
        clients = [srv.client() for _ in range(3)]
        try:
            for client in clients:
                client.login("admin", "adminpass", events="off")
            clients[0].send("WaitRelease", {"ActionID": "busy"})
            assert plugin.started.wait(5.0)
            clients[1].send("WaitRelease", {"ActionID": "queued"})
            # The queued job is counted before the third request is dispatched.
            wait_for(lambda: srv.server.workers.stats["submitted"] >= 2, "the second job to be queued")
            refused = clients[2].action("WaitRelease", {"ActionID": "third"})
            assert refused.lines == [
                ("Response", "Error"), ("ActionID", "third"), ("Message", "Server busy, try again later"),
            ]
            plugin.release.set()
            assert clients[0].read_response()["Message"] == "Released"
            assert clients[1].read_response()["Message"] == "Released"
            assert srv.server.workers.threads == 1
        finally:
            for client in clients:
                client.close()
