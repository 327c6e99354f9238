"""ami-server: an Asterisk Manager Interface server extensible with plugins.

This package exports the public plugin API only; everything else is internal.
"""

from ._version import __version__
from .acl import AddressACL
from .api import (
    Action,
    ActionContext,
    ActionError,
    AuthDecision,
    AuthRequest,
    Block,
    CliCommand,
    CommandOutput,
    Deferred,
    Event,
    Response,
    ServerHandle,
    ServerStatus,
    SessionInfo,
    TimerHandle,
    action,
    wall_timestamp,
)
from .filters import compile_filter
from .hookspecs import hookimpl
from .passwords import hash_secret, verify_secret

__all__ = [
    "__version__",
    "AddressACL",
    "Action",
    "ActionContext",
    "ActionError",
    "AuthDecision",
    "AuthRequest",
    "Block",
    "CliCommand",
    "CommandOutput",
    "Deferred",
    "Event",
    "Response",
    "ServerHandle",
    "ServerStatus",
    "SessionInfo",
    "TimerHandle",
    "action",
    "compile_filter",
    "hash_secret",
    "hookimpl",
    "verify_secret",
    "wall_timestamp",
]
