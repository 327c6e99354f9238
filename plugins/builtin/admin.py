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


def _entry(info, node=None):
    node_header = () if node is None else (("Node", node),)
    return Block("SessionEntry", (
        ("SessionID", info.session_id),
        *node_header,
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


def session_list(ctx):
    directory = ctx.control.directory
    if directory is not None:
        # Every server's sessions, each entry with a Node header (a cluster).
        deferred = ctx.defer()

        def done(entries):
            items = [_entry(info, node) for node, info in sorted(entries, key=lambda e: (e[1].opened_at, e[0]))]
            deferred.complete(Response.list(items, "SessionListComplete", message="Sessions will follow"))

        directory.list(ctx.control.sessions(), done)
        return deferred
    items = [
        _entry(info)
        for info in sorted(ctx.control.sessions(), key=lambda i: i.opened_at)
    ]
    return Response.list(items, "SessionListComplete", message="Sessions will follow")


def session_kick(ctx):
    target = ctx.request.get("SessionID")
    if not target:
        return Response.error("Missing SessionID")
    if target == ctx.session.session_id:
        return Response.error("Use Logoff to end your own session")
    reason = f"kicked by {ctx.session.username}"
    if ctx.control.kick(target, reason):
        return Response.success("Session kicked")
    directory = ctx.control.directory
    if directory is None:
        return Response.error("No such session")
    # Perhaps a session of another server (a cluster).
    deferred = ctx.defer()
    directory.kick(target, reason, lambda ok: deferred.complete(
        Response.success("Session kicked") if ok else Response.error("No such session")))
    return deferred


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
