"""The public plugin API in one place: records and the objects plugins act through.

Kept for plugins written against ``ami_server.api``; new code imports from
``ami_server`` itself.
"""

from .context import ActionContext, ServerHandle, SessionControl
from .records import (
    Action,
    ActionError,
    AuthDecision,
    AuthRequest,
    Block,
    CliCommand,
    CommandOutput,
    Deferred,
    Event,
    Response,
    ServerStatus,
    SessionInfo,
    TimerHandle,
    action,
    wall_timestamp,
)

__all__ = [
    "Action", "action", "ActionContext", "ActionError", "AuthDecision", "AuthRequest", "Block", "CliCommand",
    "CommandOutput", "Deferred", "Event", "Response", "ServerHandle", "ServerStatus", "SessionControl",
    "SessionInfo", "TimerHandle", "wall_timestamp",
]
