"""Ping: keepalive with the server's wall clock (B-5.5)."""

import time

from ami_server import Action, Response, hookimpl


def ping(ctx):
    return Response("Success", None, (("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}")))


@hookimpl
def register_actions():
    return [Action("Ping", ping, "Keepalive command.", (), read_only=True)]
