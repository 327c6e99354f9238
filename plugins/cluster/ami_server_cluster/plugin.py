"""The ``cluster`` plugin: wires a :class:`~.node.ClusterNode` into one server through public seams.

Inert unless ``[plugins.cluster] enabled = true``. Then it subscribes to
the event bus, adds a login check (cluster-wide single login), installs
the session directory (SessionList / SessionKick on every node) and adds
the ``ClusterStatus`` action.
"""

from __future__ import annotations

import atexit
from typing import Any, List, Optional

from ami_server import Action, Response, ServerHandle, SessionInfo, hookimpl

from .config import parse_config
from .node import ClusterNode

__all__ = ["ClusterPlugin"]


class ClusterPlugin:
    """Instantiated once per server (the entry point names the class): its node is per server."""

    def __init__(self) -> None:
        self.node: Optional[ClusterNode] = None

    @hookimpl
    def register_actions(self, server: ServerHandle) -> List[Any]:
        config = parse_config(server.plugin_config, worker=server.worker)
        if not config.enabled:
            return []
        node = self.node = ClusterNode(server, config)
        server.bus.subscribe(node.on_event)
        server.add_login_check(node.sessions.check_login)
        node.sessions.control = server.set_session_directory(node.sessions)
        atexit.register(node.link.stop, 1.0)
        server.call_soon_threadsafe(node.start)

        def cluster_status(ctx: Any) -> Response:
            return Response.success(headers=tuple(node.stats().items()))

        return [Action("ClusterStatus", cluster_status, "Show this cluster node's counters.", "system",
                       read_only=True)]

    @hookimpl
    def on_session_close(self, session: SessionInfo, reason: str) -> None:
        if self.node is not None:
            self.node.sessions.session_closed(session.session_id)
