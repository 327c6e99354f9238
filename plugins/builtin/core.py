"""CoreSettings and CoreStatus (B-5.14, B-5.15), and the ``core show`` CLI commands.

asterisk-java sends CoreSettings and ``Command: core show version`` at every
login to learn the version; both answer as Asterisk 22 does.
"""

from __future__ import annotations

import platform
import socket
import time

from ami_server import Action, CliCommand, Response, hookimpl


def _local(when: float, fmt: str) -> str:
    return time.strftime(fmt, time.localtime(when))


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    parts = []
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count or (unit == "second" and not parts):
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return ", ".join(parts)


@hookimpl
def register_actions(server):
    host = socket.gethostname() or "localhost"
    machine = platform.machine() or "unknown"
    system = platform.system() or "unknown"

    def core_settings(ctx):
        settings = server.settings
        return Response.success(headers=(
            ("AMIversion", settings.ami_version),
            ("AsteriskVersion", settings.asterisk_version),
            ("SystemName", settings.system_name),
            ("CoreMaxCalls", "0"),
            ("CoreMaxLoadAvg", "0.000000"),
            ("CoreRunUser", ""),
            ("CoreRunGroup", ""),
            ("CoreMaxFilehandles", "0"),
            ("CoreRealTimeEnabled", "No"),
            ("CoreCDRenabled", "No"),
            ("CoreHTTPenabled", "No"),
            ("SoundsSearchCustomDir", "No"),
        ))

    def core_status(ctx):
        status = server.status()
        return Response.success(headers=(
            ("CoreStartupDate", _local(status.started_at, "%Y-%m-%d")),
            ("CoreStartupTime", _local(status.started_at, "%H:%M:%S")),
            ("CoreReloadDate", _local(status.reloaded_at, "%Y-%m-%d")),
            ("CoreReloadTime", _local(status.reloaded_at, "%H:%M:%S")),
            ("CoreCurrentCalls", "0"),
            ("CoreProcessedCalls", "0"),
        ))

    def show_version(ctx, args):
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(server.status().started_at))
        return [
            f"Asterisk {server.settings.asterisk_version} built by ami-server @ {host} "
            f"on a {machine} running {system} on {started}"
        ]

    def show_uptime(ctx, args):
        status = server.status()
        now = time.time()
        return [
            f"System uptime: {_uptime(now - status.started_at)}",
            f"Last reload: {_uptime(now - status.reloaded_at)}",
        ]

    return [
        Action("CoreSettings", core_settings, "Show PBX core settings (version etc).", ("system", "reporting"),
               read_only=True),
        Action("CoreStatus", core_status, "Show PBX core status variables.", ("system", "reporting"),
               read_only=True),
        CliCommand("core show version", show_version, "Show the version line asterisk-java parses."),
        CliCommand("core show uptime", show_uptime, "Show how long the server has run."),
    ]
