"""Administration actions (class ``system``): status, sessions, kick, reload."""

from __future__ import annotations

import time

from ami_server import Action, Block, Response, format_privilege, format_tv, hookimpl


def server_status(ctx):
    status = ctx.server_status()
    now = time.time()
    return Response.success(headers=(
        ("Sessions", status.sessions),
        ("Authenticated", status.authenticated),
        ("Unauthenticated", status.unauthenticated),
        ("SessionsAccepted", status.sessions_accepted),
        ("EventsPublished", status.events_published),
        ("EventsDropped", status.events_dropped),
        ("SlowConsumerDisconnects", status.slow_consumer_disconnects),
        ("Uptime", int(now - status.started_at)),
        ("LastReload", int(now - status.reloaded_at)),
        ("ShuttingDown", status.shutting_down),
        ("Plugins", ",".join(status.plugins)),
    ))


def session_list(ctx):
    items = [
        Block("SessionEntry", (
            ("SessionID", info.session_id),
            ("Username", info.username),
            ("State", info.state),
            ("Transport", info.transport),
            ("RemoteAddress", info.remote_address),
            ("LocalAddress", info.local_address),
            ("OpenedTV", format_tv(info.opened_at)),
            ("SessionTV", format_tv(info.login_time)),
            ("ReadClasses", format_privilege(info.read_classes)),
            ("WriteClasses", format_privilege(info.write_classes)),
            ("EventMask", format_privilege(info.event_mask)),
        ))
        for info in sorted(ctx.control.sessions(), key=lambda i: i.opened_at)
    ]
    return Response.list(items, "SessionListComplete", message="Sessions will follow")


def session_kick(ctx):
    target = ctx.request.get("SessionID")
    if not target:
        return Response.error("Missing SessionID")
    if target == ctx.session.session_id:
        return Response.error("Use Logoff to end your own session")
    if not ctx.control.kick(target, f"kicked by {ctx.session.username}"):
        return Response.error("No such session")
    return Response.success("Session kicked")


def server_reload(ctx):
    ok, message = ctx.control.reload()
    return Response.success(message) if ok else Response.error(message)


@hookimpl
def register_actions():
    return [
        Action("ServerStatus", server_status, "Show ami-server counters.", "system", read_only=True),
        Action("SessionList", session_list, "List the sessions connected to ami-server.", "system", read_only=True,
               control=True),
        Action("SessionKick", session_kick, "Close another session.", "system", control=True),
        Action("ServerReload", server_reload, "Reload the ami-server configuration.", "system", control=True),
    ]
