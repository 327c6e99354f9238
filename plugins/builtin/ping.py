"""Ping: keepalive with the server's wall clock (B-5.5)."""

from ami_server import Action, Response, hookimpl


@hookimpl
def register_actions():
    # Pings that arrived in one read share a timestamp (ActionContext.timestamp),
    # so they share one reply too: a Response is immutable and the server adds
    # each request's ActionID when it writes it. One per server instance.
    last_stamp = None
    last_reply = None

    def ping(ctx):
        nonlocal last_stamp, last_reply
        stamp = ctx.timestamp()
        if stamp is not last_stamp:
            last_reply = Response("Success", None, (("Ping", "Pong"), ("Timestamp", stamp)))
            last_stamp = stamp
        return last_reply

    return [Action("Ping", ping, "Keepalive command.", (), read_only=True)]
