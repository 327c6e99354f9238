"""Ping: keepalive with the server's wall clock (B-5.5)."""

from ami_server import Action, Response, hookimpl, wall_timestamp


def ping(ctx):
    return Response("Success", None, (("Ping", "Pong"), ("Timestamp", wall_timestamp())))


@hookimpl
def register_actions():
    return [Action("Ping", ping, "Keepalive command.", (), read_only=True)]
