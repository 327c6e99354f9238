"""ami-server: an Asterisk Manager Interface server extensible with plugins.

This package exports the public plugin API only; everything else is internal.
Builtin plugins import from here and nowhere else, as third-party plugins do.
"""

from ._version import __version__
from .acl import AddressACL
from .config import Config, UserConfig
from .connection import Backoff, Outbound, StreamProtocol
from .context import ActionContext, ServerHandle, SessionControl
from .events import EventBus
from .health import Health, Metric
from .hookspecs import hookimpl
from .passwords import SecretHash, hash_secret, parse_secret_hash, verify_secret
from .privileges import format_privilege, parse_event_mask
from .protocol import ascii_lower, clean
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
    LoginCheck,
    Response,
    ServerStatus,
    SessionInfo,
    TimerHandle,
    action,
    wall_timestamp,
)
from .security import format_tv
from .filters import compile_filter

__all__ = [
    "__version__",
    "AddressACL",
    "Action",
    "ActionContext",
    "ActionError",
    "AuthDecision",
    "AuthRequest",
    "Backoff",
    "Block",
    "CliCommand",
    "CommandOutput",
    "Config",
    "Deferred",
    "Event",
    "Health",
    "Metric",
    "EventBus",
    "LoginCheck",
    "Outbound",
    "Response",
    "SecretHash",
    "ServerHandle",
    "ServerStatus",
    "SessionControl",
    "SessionInfo",
    "StreamProtocol",
    "TimerHandle",
    "UserConfig",
    "action",
    "ascii_lower",
    "clean",
    "compile_filter",
    "format_privilege",
    "format_tv",
    "hash_secret",
    "hookimpl",
    "parse_event_mask",
    "parse_secret_hash",
    "verify_secret",
    "wall_timestamp",
]
