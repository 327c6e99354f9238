"""ami-server: an Asterisk Manager Interface server extensible with plugins.

This package exports the public plugin API only; everything else is internal.
"""

from ._version import __version__
from .api import (
    Action,
    ActionContext,
    ActionError,
    AuthDecision,
    AuthRequest,
    Block,
    Deferred,
    Event,
    Response,
    ServerHandle,
    SessionInfo,
    TimerHandle,
    action,
)
from .hookspecs import hookimpl

__all__ = [
    "__version__",
    "Action",
    "ActionContext",
    "ActionError",
    "AuthDecision",
    "AuthRequest",
    "Block",
    "Deferred",
    "Event",
    "Response",
    "ServerHandle",
    "SessionInfo",
    "TimerHandle",
    "action",
    "hookimpl",
]
