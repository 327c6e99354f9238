"""Plugins the tests register in-process: they record hook calls, misbehave or publish on demand."""

from __future__ import annotations

import threading

from ami_server import Action, ActionError, AuthDecision, Event, Response, hookimpl


class Recorder:
    """A plugin that records hook calls and can misbehave on demand."""

    def __init__(self):
        self.opened = []
        self.closed = []
        self.events = []

    @hookimpl
    def on_session_open(self, session):
        self.opened.append(session.session_id)
        raise RuntimeError("open hook failure")

    @hookimpl
    def on_session_close(self, session, reason):
        self.closed.append((session.session_id, reason))
        raise RuntimeError("close hook failure")

    @hookimpl
    def on_event(self, event):
        self.events.append(event.name)
        raise RuntimeError("event hook failure")

    @hookimpl
    def register_actions(self, server):
        self.server = server

        def boom(ctx):
            raise ZeroDivisionError("plugin bug")

        def refuse(ctx):
            raise ActionError("Not today", {"Reason": "testing"})

        def bad_reply(ctx):
            return "not a response"

        def later(ctx):
            deferred = ctx.defer()
            threading.Timer(0.05, deferred.complete, [Response.success("Done later")]).start()
            return deferred

        def never(ctx):
            deferred = ctx.defer()
            self.abandoned = deferred
            return deferred

        return [
            Action("Boom", boom, "Raise.", ()),
            Action("Refuse", refuse, "Refuse.", ()),
            Action("BadReply", bad_reply, "Return junk.", ()),
            Action("Later", later, "Answer from a thread.", ()),
            Action("Never", never, "Never answer.", ()),
        ]

class Second:
    def __init__(self):
        self.events = []
        self.opened = 0

    @hookimpl
    def on_event(self, event):
        self.events.append(event.name)

    @hookimpl
    def on_session_open(self, session):
        self.opened += 1

class Burst:
    """A plugin action that publishes ``Count`` events in one go, classes alternating user, call, user+call."""

    CLASSES = ("user", "call", ["user", "call"])

    @hookimpl
    def register_actions(self, server):
        def burst(ctx):
            tag = ctx.request.get("Tag") or ""
            for number in range(int(ctx.request.get("Count") or "0")):
                ctx.publish(Event("Seq", self.CLASSES[number % 3], [("Tag", tag), ("N", str(number))]))
            return Response.success("Burst sent")

        return [Action("Burst", burst, "Publish a burst of events.", "user")]

class StaticBackend:
    """An authentication backend that knows one user and answers nothing else."""

    def __init__(self, username, secret):
        self.username, self.secret = username, secret
        self.asked = []

    @hookimpl
    def authenticate(self, request):
        self.asked.append(request.username)
        if request.username != self.username:
            return None
        if request.secret == self.secret:
            return AuthDecision.accept(read="user", write="user")
        return AuthDecision.reject("invalid_password")

class BrokenBackend:
    @hookimpl
    def authenticate(self, request):
        raise RuntimeError("directory unreachable")
