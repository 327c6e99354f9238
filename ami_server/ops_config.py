"""``[http]``: the operations listener's settings (``/metrics``, ``/healthz``).

A module of its own so that :mod:`ami_server.config` only gains one table;
the reader it is given is :class:`ami_server.config._Reader` (not imported
here, to keep the import one-way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple

__all__ = ["HTTPSettings", "parse_http", "DEFAULT_HTTP_PORT", "http_secrets"]

#: The listener's default port (free in Prometheus' port allocation list).
DEFAULT_HTTP_PORT = 9338
_AUTH_KINDS = ("none", "basic", "bearer")


@dataclass(frozen=True)
class HTTPSettings:
    """``[http]``: where the metrics and health endpoints listen and who may read them."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_HTTP_PORT
    #: ``none``, ``basic`` (``username`` + ``password``) or ``bearer`` (``token``).
    auth: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    #: Which endpoints need the credentials: ``/healthz`` is open by default (load balancers).
    protect_healthz: bool = False
    certificate: str = ""
    key: str = ""
    #: Seconds a client may take to send its request and read the answer.
    timeout: float = 5.0
    #: Largest request head accepted (bytes); more is answered 431 and closed.
    max_request_bytes: int = 8192
    #: Simultaneous HTTP connections; more are closed at once.
    max_connections: int = 32

    @property
    def tls(self) -> bool:
        return bool(self.certificate)


def _secret(reader: Any, name: str) -> str:
    """``name`` from the file, or from the environment variable named by ``<name>_env``."""
    value = reader.str(name, "")
    env = reader.str(f"{name}_env", "")
    if value and env:
        raise reader.error(f"{name}_env", f"set either {name} or {name}_env, not both")
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise reader.error(f"{name}_env", f"environment variable {env!r} is not set or empty")
    return value


def parse_http(reader: Any, base: Optional[Path]) -> Optional[HTTPSettings]:
    """Validate ``[http]``; ``None`` when the table is absent or ``enabled = false``."""
    defaults = HTTPSettings()
    enabled = reader.bool("enabled", True)
    host = reader.str("host", defaults.host)
    if not host:
        raise reader.error("host", "must not be empty")
    auth = reader.str("auth", "none").lower()
    if auth not in _AUTH_KINDS:
        raise reader.error("auth", f"must be one of {', '.join(_AUTH_KINDS)}")
    username = reader.str("username", "")
    password = _secret(reader, "password")
    token = _secret(reader, "token")
    if auth == "basic" and not (username and password):
        raise reader.error("auth", "basic needs username and password (or password_env)")
    if auth == "bearer" and not token:
        raise reader.error("auth", "bearer needs token (or token_env)")
    files = []
    for name in ("certificate", "key"):
        value = reader.str(name, "")
        if value:
            path = Path(value).expanduser()
            if base is not None and not path.is_absolute():
                path = base / path
            value = str(path)
        files.append(value)
    if bool(files[0]) != bool(files[1]):
        raise reader.error("key" if files[0] else "certificate", "TLS needs both certificate and key")
    settings = HTTPSettings(
        host=host,
        port=reader.int("port", defaults.port, 0, 65535),
        auth=auth,
        username=username,
        password=password,
        token=token,
        protect_healthz=bool(reader.bool("protect_healthz", False)),
        certificate=files[0],
        key=files[1],
        timeout=reader.number("timeout", defaults.timeout, 0.1, 300),
        max_request_bytes=reader.int("max_request_bytes", defaults.max_request_bytes, 1024, 65536),
        max_connections=reader.int("max_connections", defaults.max_connections, 1, 4096),
    )
    reader.finish()
    return settings if enabled else None


def http_secrets(settings: Optional[HTTPSettings]) -> Tuple[str, ...]:
    """The credentials the log redactor must never let through."""
    if settings is None:
        return ()
    return tuple(v for v in (settings.password, settings.token) if v)
