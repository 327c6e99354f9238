"""The ``[plugins.cluster]`` table, validated once at start-up with key paths in every error.

The Redis password never appears in the table itself: it is read from an
environment variable or a file, so that the configuration file (and any
error quoting it) holds no secret.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, FrozenSet, Mapping, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["ClusterConfig", "ClusterConfigError", "parse_config", "DEFAULT_URL"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HEADER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ClusterConfigError(ValueError):
    """An invalid ``[plugins.cluster]`` key; the message names ``plugins.cluster.<key>``."""


@dataclass(frozen=True)
class ClusterConfig:
    """Every setting of the cluster plugin, with its default."""

    enabled: bool = False
    redis_url: str = DEFAULT_URL
    node: str = ""
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    tls_ca_file: Optional[str] = None
    prefix: str = "ami:cluster"
    stream_maxlen: int = 100_000
    publish_queue_limit: int = 10_000
    inbound_batches: int = 8
    read_count: int = 500
    session_ttl: float = 15.0
    request_timeout: float = 3.0
    redis_timeout: float = 2.0
    forward_security_events: bool = False
    local_events: FrozenSet[str] = frozenset({"shutdown"})
    local_headers: FrozenSet[str] = frozenset({"upstream"})

    @property
    def events_stream(self) -> str:
        """This node's own event stream: only it writes there, only the others read it."""
        return self.events_stream_of(self.node)

    def events_stream_of(self, node: str) -> str:
        return f"{self.prefix}:events:{node}"

    @property
    def streams_key(self) -> str:
        """The sorted set of nodes that publish, scored by their last registration (Redis's clock)."""
        return f"{self.prefix}:streams"

    def control_stream(self, node: str) -> str:
        return f"{self.prefix}:ctl:{node}"

    def login_key(self, user_key: str) -> str:
        return f"{self.prefix}:login:{user_key}"

    @property
    def nodes_key(self) -> str:
        return f"{self.prefix}:nodes"

    def safe_url(self) -> str:
        """The URL as it may be logged: scheme, host, port and database, never credentials."""
        parts = urlsplit(self.redis_url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"


def _err(key: str, message: str) -> ClusterConfigError:
    return ClusterConfigError(f"plugins.cluster.{key}: {message}")


def _bool(table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise _err(key, "must be true or false")
    return value


def _number(table: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _err(key, f"must be a number from {low:g} to {high:g}")
    return float(value)


def _int(table: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _err(key, f"must be a whole number from {low} to {high}")
    return value


def _str(table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise _err(key, "must be a string")
    return value


def _names(table: Mapping[str, Any], key: str, default: Tuple[str, ...], pattern: "re.Pattern[str]") -> FrozenSet[str]:
    value = table.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and pattern.match(v) for v in value):
        raise _err(key, "must be a list of names (letters, digits, '-', '_')")
    return frozenset(v.lower() for v in value)


def _password(table: Mapping[str, Any], environ: Mapping[str, str]) -> Optional[str]:
    """The password from ``password_env`` or ``password_file``; errors never quote it."""
    if "password" in table:
        raise _err("password", "is not accepted in the file: use password_env or password_file")
    env = _str(table, "password_env", "")
    path = _str(table, "password_file", "")
    if env and path:
        raise _err("password_env", "and password_file are exclusive")
    if env:
        if env not in environ:
            raise _err("password_env", f"environment variable {env!r} is not set")
        return environ[env]
    if path:
        try:
            with open(path, encoding="utf-8") as stream:
                lines = stream.read().splitlines()
        except OSError as exc:
            raise _err("password_file", f"cannot read {path!r}: {exc.strerror or exc}") from None
        if not lines or not lines[0]:
            raise _err("password_file", f"{path!r} is empty")
        return lines[0]
    return None


def parse_config(
    table: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None, worker: Optional[int] = None
) -> ClusterConfig:
    """Validate ``[plugins.cluster]``; raise :class:`ClusterConfigError` naming the key.

    ``worker`` is the index of this process under ``ami-server --workers N``:
    each worker is its own node, ``<node>-<worker>`` (``<host>-<worker>`` by
    default), a name that stays the same when the worker is restarted.
    """
    environ = os.environ if environ is None else environ
    known = set(ClusterConfig.__dataclass_fields__) - {"password"} | {"password_env", "password_file", "password"}
    for key in table:
        if key not in known:
            raise _err(key, "unknown key")
    enabled = _bool(table, "enabled", False)
    url = _str(table, "redis_url", DEFAULT_URL)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _err("redis_url", "is not a valid URL") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise _err("redis_url", "must be redis://host[:port][/db] or rediss://host[:port][/db]")
    if parts.password is not None:
        # Never echo the URL: it holds the secret.
        raise _err("redis_url", "must not contain a password: use password_env or password_file")
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise _err("redis_url", "the path must be a database number")
    node = _str(table, "node", "")
    if worker is not None:
        node = f"{node or socket.gethostname()}-{worker}"
    node = node or f"{socket.gethostname()}-{os.getpid()}"
    if not _NAME.match(node):
        raise _err("node", "must be 1 to 64 letters, digits, '.', ':', '-' or '_'")
    prefix = _str(table, "prefix", "ami:cluster")
    if not _NAME.match(prefix):
        raise _err("prefix", "must be 1 to 64 letters, digits, '.', ':', '-' or '_'")
    username = _str(table, "username", "") or parts.username or None
    ca = _str(table, "tls_ca_file", "") or None
    if ca is not None and not os.path.isfile(ca):
        raise _err("tls_ca_file", f"{ca!r} is not a readable file")
    defaults = ClusterConfig()
    return ClusterConfig(
        enabled=enabled,
        redis_url=url,
        node=node,
        username=username,
        password=_password(table, environ),
        tls_ca_file=ca,
        prefix=prefix,
        stream_maxlen=_int(table, "stream_maxlen", defaults.stream_maxlen, 100, 100_000_000),
        publish_queue_limit=_int(table, "publish_queue_limit", defaults.publish_queue_limit, 1, 10_000_000),
        inbound_batches=_int(table, "inbound_batches", defaults.inbound_batches, 1, 1000),
        read_count=_int(table, "read_count", defaults.read_count, 1, 100_000),
        session_ttl=_number(table, "session_ttl", defaults.session_ttl, 1, 3600),
        request_timeout=_number(table, "request_timeout", defaults.request_timeout, 0.1, 60),
        redis_timeout=_number(table, "redis_timeout", defaults.redis_timeout, 0.1, 60),
        forward_security_events=_bool(table, "forward_security_events", False),
        local_events=_names(table, "local_events", ("Shutdown",), _HEADER),
        local_headers=_names(table, "local_headers", ("Upstream",), _HEADER),
    )
