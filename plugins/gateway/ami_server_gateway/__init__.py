"""ami-server gateway: an AMI front door for one or more Asterisk servers.

The entry point names :class:`GatewayPlugin`; ami-server makes one instance
per server, so every server (and every test) has its own upstream sessions.
Without ``[plugins.gateway.upstreams.<name>]`` tables the plugin adds nothing.
"""

from __future__ import annotations

from typing import Any, List, Optional

from ami_server import Action, SessionInfo, hookimpl

from .config import ConfigError, parse_gateway_config
from .gateway import Gateway

__all__ = ["ConfigError", "Gateway", "GatewayPlugin"]


class GatewayPlugin:
    """The plugin object: builds the gateway from ``[plugins.gateway]`` at start-up."""

    def __init__(self) -> None:
        self.gateway: Optional[Gateway] = None

    @hookimpl
    def register_actions(self, server: Any) -> List[Action]:
        config = parse_gateway_config(server.plugin_config)
        if config is None:
            return []
        self.gateway = Gateway(server, config)
        return self.gateway.register()

    @hookimpl
    def on_session_close(self, session: SessionInfo, reason: str) -> None:
        if self.gateway is not None:
            self.gateway.session_closed(session.session_id)
