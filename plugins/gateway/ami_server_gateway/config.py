"""The ``[plugins.gateway]`` table, validated once at start-up with key paths in every error.

Secrets are kept in :class:`Secret`, whose ``repr`` never shows the value, so
that a logged settings record cannot leak one.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

__all__ = ["ConfigError", "GatewayConfig", "Secret", "UpstreamConfig", "parse_gateway_config"]

ROOT = "plugins.gateway"
#: Asterisk actions that only report: forwarded, they are audited as read-only actions are
#: (``ActionExecuted`` only with ``[logging] audit_read_only_actions``). ``read_only_actions`` replaces it.
READ_ONLY_ACTIONS = (
    "Ping", "Status", "CoreShowChannels", "CoreShowChannelMap", "CoreStatus", "CoreSettings", "ListCommands",
    "QueueStatus", "QueueSummary", "ExtensionState", "ExtensionStateList", "DeviceStateList",
    "PresenceState", "PresenceStateList", "MailboxCount", "MailboxStatus", "BridgeList", "BridgeInfo",
    "ParkedCalls", "Parkinglots", "PJSIPShowEndpoints", "PJSIPShowEndpoint", "PJSIPShowRegistrationsOutbound",
    "PJSIPShowContacts", "PJSIPShowAors", "SIPpeers", "SIPshowpeer", "IAXpeers", "IAXpeerlist", "ConfbridgeList",
    "ConfbridgeListRooms", "AgentsStatus", "VoicemailUsersList", "CoreShowChannelsCount",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(ValueError):
    """A bad ``[plugins.gateway]`` value; the message starts with its key path."""


class Secret:
    """An upstream secret: readable by the login code, never printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True)
class UpstreamConfig:
    """One Asterisk behind the gateway."""

    name: str
    host: str
    port: int
    username: str
    secret: Secret = field(repr=False)
    auth: str = "md5"
    tls: Optional[ssl.SSLContext] = field(default=None, repr=False)
    tls_server_name: Optional[str] = None
    connect_timeout: float = 5.0
    action_timeout: float = 10.0
    blocking_timeout: float = 60.0
    backoff_initial: float = 0.5
    backoff_cap: float = 30.0
    backoff_jitter: float = 0.2
    pool_size: int = 4
    pool_idle: float = 30.0
    blocking_actions: Tuple[str, ...] = ()
    max_pending: int = 10000
    #: The TLS settings as written (``tls``, ``tls_ca_file``, ``tls_verify``), to compare on reload.
    tls_settings: Tuple[Any, ...] = ()

    @property
    def session_key(self) -> Tuple[Any, ...]:
        """What the upstream session depends on: a reload that changes it reconnects the upstream."""
        return (self.host, self.port, self.username, self.secret.value(), self.auth, self.tls_settings,
                self.tls_server_name, self.connect_timeout)


@dataclass(frozen=True)
class GatewayConfig:
    upstreams: Mapping[str, UpstreamConfig]
    default_upstream: str
    upstream_header: str = "Upstream"
    event_header: str = ""
    read_only_actions: Tuple[str, ...] = READ_ONLY_ACTIONS

    @property
    def longest_timeout(self) -> float:
        return max(max(u.action_timeout, u.blocking_timeout) for u in self.upstreams.values())


class _Table:
    """A table being read: takes keys off a copy and reports leftovers as unknown."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: must be a table")
        self.data = dict(data)
        self.path = path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}.{key}: {problem}")

    def str(self, key: str, default: Optional[str] = None, *, required: bool = False) -> Optional[str]:
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return default
        value = self.data.pop(key)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise self.error(key, f"must be a number from {low} to {high}")
        return float(value)

    def int(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"must be an integer from {low} to {high}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.pop(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def names(self, key: str) -> Tuple[str, ...]:
        value = self.data.pop(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and _NAME_RE.match(v) for v in value):
            raise self.error(key, "must be a list of action names")
        return tuple(value)

    def done(self) -> None:
        if self.data:
            key = sorted(self.data)[0]
            raise self.error(key, "unknown key")


def _secret(table: _Table, env: Mapping[str, str]) -> Secret:
    given = [k for k in ("secret", "secret_env", "secret_file") if k in table.data]
    if len(given) != 1:
        raise table.error("secret", "give exactly one of secret, secret_env, secret_file")
    key = given[0]
    value = table.str(key)
    assert value is not None
    if key == "secret":
        text = value
    elif key == "secret_env":
        if value not in env:
            raise table.error(key, f"environment variable {value!r} is not set")
        text = env[value]
    else:
        try:
            with open(value, encoding="utf-8") as stream:
                text = stream.readline().rstrip("\r\n")
        except OSError as exc:
            raise table.error(key, f"cannot read {value!r}: {exc.strerror or exc}") from None
    if not text or "\r" in text or "\n" in text:
        raise table.error(key, "the secret must be one non-empty line")
    return Secret(text)


def _tls(table: _Table) -> Tuple[Optional[ssl.SSLContext], Optional[str], Tuple[Any, ...]]:
    enabled = table.bool("tls", False)
    ca_file = table.str("tls_ca_file")
    verify = table.bool("tls_verify", True)
    server_name = table.str("tls_server_name")
    settings = (enabled, ca_file, verify)
    if not enabled:
        if ca_file or server_name:
            raise table.error("tls", "tls_ca_file and tls_server_name need tls = true")
        return None, None, settings
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise table.error("tls_ca_file", f"cannot load {ca_file!r}: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context, server_name, settings


def _upstream(name: str, data: Any, env: Mapping[str, str]) -> UpstreamConfig:
    if not _NAME_RE.match(name):
        raise ConfigError(f"{ROOT}.upstreams.{name}: upstream names are letters, digits, '_' and '-'")
    table = _Table(data, f"{ROOT}.upstreams.{name}")
    host = table.str("host", required=True)
    port = table.int("port", 5038, 1, 65535)
    username = table.str("username", required=True)
    if not username or "\r" in username or "\n" in username:
        raise table.error("username", "must be one non-empty line")
    secret = _secret(table, env)
    auth = table.str("auth", "md5")
    if auth not in ("md5", "plain"):
        raise table.error("auth", "must be 'md5' or 'plain'")
    tls, server_name, tls_settings = _tls(table)
    initial = table.number("backoff_initial", 0.5, 0.01, 3600)
    config = UpstreamConfig(
        name=name, host=host or "", port=port, username=username, secret=secret, auth=auth or "md5",
        tls=tls, tls_server_name=server_name,
        connect_timeout=table.number("connect_timeout", 5.0, 0.1, 600),
        action_timeout=table.number("action_timeout", 10.0, 0.1, 3600),
        blocking_timeout=table.number("blocking_timeout", 60.0, 0.1, 3600),
        backoff_initial=initial,
        backoff_cap=table.number("backoff_cap", 30.0, initial, 3600),
        backoff_jitter=table.number("backoff_jitter", 0.2, 0, 0.99),
        pool_size=table.int("pool_size", 4, 0, 256),
        pool_idle=table.number("pool_idle", 30.0, 0.1, 86400),
        blocking_actions=table.names("blocking_actions"),
        max_pending=table.int("max_pending", 10000, 1, 10_000_000),
        tls_settings=tls_settings,
    )
    table.done()
    return config


def parse_gateway_config(data: Mapping[str, Any], env: Optional[Mapping[str, str]] = None) -> Optional[GatewayConfig]:
    """The gateway's settings, or ``None`` when no upstream is configured (the plugin stays idle)."""
    table = _Table(data, ROOT)
    raw = table.data.pop("upstreams", None)
    if raw is None:
        if table.data:
            raise table.error(sorted(table.data)[0], "unknown key (or no [plugins.gateway.upstreams.<name>] table)")
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise table.error("upstreams", "must hold one table per upstream")
    env = os.environ if env is None else env
    upstreams = {name: _upstream(name, value, env) for name, value in raw.items()}
    default = table.str("default_upstream", next(iter(upstreams)))
    if default not in upstreams:
        raise table.error("default_upstream", f"no upstream called {default!r}")
    header = table.str("upstream_header", "Upstream") or ""
    if not _HEADER_RE.match(header) or header.lower() in ("action", "actionid"):
        raise table.error("upstream_header", "must be a header name (letters, digits, '-', '_')")
    # With several upstreams every upstream event says where it comes from: clients need it, and so
    # does the filter that keeps a user's events to the upstreams the user may use.
    event_header = table.str("event_header", "Upstream" if len(upstreams) > 1 else "") or ""
    if event_header and not _HEADER_RE.match(event_header):
        raise table.error("event_header", "must be empty or a header name")
    if not event_header and len(upstreams) > 1:
        raise table.error("event_header", "must name a header when there are several upstreams")
    read_only = table.names("read_only_actions") if "read_only_actions" in table.data else READ_ONLY_ACTIONS
    table.done()
    return GatewayConfig(upstreams, default, header, event_header, read_only)
