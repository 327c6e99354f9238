"""Configuration: ``config.toml`` parsed and validated into frozen records.

Every error names the file, the key path and what is wrong, and unknown keys
are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, List, Mapping, Optional, Tuple, Union

from .acl import AddressACL
from .ops_config import HTTPSettings, parse_http
from .passwords import parse_secret_hash
from .privileges import ClassListError, parse_class_list
from .protocol import ascii_lower

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older interpreters only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "ServerSettings",
    "TLSSettings",
    "AuthSettings",
    "UserConfig",
    "LoggingSettings",
    "PluginSettings",
    "Config",
    "load_config",
    "parse_config",
    "SAMPLE_SECRETS",
    "is_loopback_host",
    "check_sample_secrets",
    "plaintext_exposure_warnings",
]

_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")


class ConfigError(Exception):
    """Invalid configuration; the message names the file and the key path."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class TLSSettings:
    """``[server.tls]``: a second listener that speaks AMI over TLS."""

    host: str
    port: int
    certificate: str
    key: str


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: listener and protocol limits (spec §0 table)."""

    host: str = "127.0.0.1"
    port: int = 5038
    ami_version: str = "11.0.0"
    asterisk_version: str = "22.10.1"
    system_name: str = ""
    auth_timeout: float = 30.0
    auth_limit: int = 50
    login_failure_delay: float = 1.0
    allow_multiple_login: bool = True
    timestamp_events: bool = False
    output_queue_limit: int = 1048576
    action_timeout: float = 10.0
    worker_threads: int = 8
    worker_queue_limit: int = 256
    require_tls_for_plaintext: bool = False
    reuse_port: bool = False
    tls: Optional[TLSSettings] = None


@dataclass(frozen=True)
class UserConfig:
    """One ``[users.<name>]`` table. ``read``/``write`` are class bit masks.

    Exactly one of ``secret`` (plaintext; plaintext and MD5 logins) and
    ``secret_hash`` (scrypt; plaintext logins only) is set.
    """

    name: str
    secret: str = field(default="", repr=False)
    read: int = 0
    write: int = 0
    allow_multiple_login: Optional[bool] = None
    secret_hash: str = field(default="", repr=False)
    acl: AddressACL = field(default_factory=AddressACL)
    require_tls_for_plaintext: Optional[bool] = None
    enabled: bool = True
    #: ``[users.<name>.attributes]``: data for plugins (a gateway's policy, say), handed on
    #: with the login decision as ``SessionInfo.attributes``.
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class LoggingSettings:
    """``[logging]``: where structured logs and audit records go."""

    level: str = "info"
    format: str = "auto"
    file: str = ""
    audit_read_only_actions: bool = False


@dataclass(frozen=True)
class PluginSettings:
    """``[plugins]``: which plugins to block or require, and their own tables."""

    disable: Tuple[str, ...] = ()
    required: Tuple[str, ...] = ()
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class AuthSettings:
    """``[auth]``: which backends decide logins, in order, and how long they may take."""

    backends: Tuple[str, ...] = ("config",)
    timeout: float = 5.0
    worker_threads: int = 4


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    server: ServerSettings = field(default_factory=ServerSettings)
    users: Mapping[str, UserConfig] = field(default_factory=lambda: MappingProxyType({}))
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    source: str = "<defaults>"
    #: ``[http]``: the metrics and health listener (``None``: off).
    http: Optional[HTTPSettings] = None

    @property
    def auth_backends(self) -> Tuple[str, ...]:
        return self.auth.backends

    def user(self, username: str) -> Optional[UserConfig]:
        """User lookup, ASCII-case-insensitive (A-3.3): no look-alike letter names a user."""
        return self.users.get(ascii_lower(username))


class _Reader:
    """Pops keys from one table with type checks, then rejects what is left."""

    def __init__(self, source: str, path: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(source, path, f"must be a table, not {_type_name(table)}")
        self.source = source
        self.path = path
        self.table = dict(table)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def str(self, name: str, default: str) -> str:
        value = self.table.pop(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {_type_name(value)}")
        return value

    def bool(self, name: str, default: Optional[bool]) -> Optional[bool]:
        value = self.table.pop(name, default)
        if value is not None and not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {_type_name(value)}")
        return value

    def int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.table.pop(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {_type_name(value)}")
        if not low <= value <= high:
            raise self.error(name, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.table.pop(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, not {_type_name(value)}")
        if math.isnan(value) or not low <= value <= high:
            raise self.error(name, f"must be between {low:g} and {high:g}, got {value}")
        return float(value)

    def str_list(self, name: str) -> Tuple[str, ...]:
        value = self.table.pop(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(name, "must be a list of non-empty strings")
        return tuple(value)

    def sub(self, name: str) -> "_Reader":
        return _Reader(self.source, self.key(name), self.table.pop(name, {}))

    def finish(self) -> None:
        for name in self.table:
            raise self.error(name, "unknown key")


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _tls(reader: _Reader, default_host: str, base: Optional[Path]) -> TLSSettings:
    host = reader.str("host", default_host)
    if not host:
        raise reader.error("host", "must not be empty")
    port = reader.int("port", 5039, 0, 65535)
    files = {}
    for name in ("certificate", "key"):
        value = reader.str(name, "")
        if not value:
            raise reader.error(name, "is required (a PEM file)")
        path = Path(value).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        files[name] = str(path)
    reader.finish()
    return TLSSettings(host, port, files["certificate"], files["key"])


def _server(reader: _Reader, base: Optional[Path] = None) -> ServerSettings:
    defaults = ServerSettings()
    ami_version = reader.str("ami_version", defaults.ami_version)
    if not _VERSION_RE.match(ami_version):
        raise reader.error("ami_version", f"must look like 11.0.0, got {ami_version!r}")
    host = reader.str("host", defaults.host)
    if not host:
        raise reader.error("host", "must not be empty")
    tls = _tls(reader.sub("tls"), host, base) if "tls" in reader.table else None
    settings = ServerSettings(
        host=host,
        port=reader.int("port", defaults.port, 0, 65535),
        ami_version=ami_version,
        asterisk_version=reader.str("asterisk_version", defaults.asterisk_version),
        system_name=reader.str("system_name", defaults.system_name),
        auth_timeout=reader.number("auth_timeout", defaults.auth_timeout, 0.05, 86400),
        auth_limit=reader.int("auth_limit", defaults.auth_limit, 1, 1_000_000),
        login_failure_delay=reader.number(
            "login_failure_delay", defaults.login_failure_delay, 0, 10
        ),
        allow_multiple_login=bool(
            reader.bool("allow_multiple_login", defaults.allow_multiple_login)
        ),
        timestamp_events=bool(reader.bool("timestamp_events", defaults.timestamp_events)),
        output_queue_limit=reader.int(
            "output_queue_limit", defaults.output_queue_limit, 65536, 1 << 34
        ),
        action_timeout=reader.number("action_timeout", defaults.action_timeout, 0.01, 86400),
        worker_threads=reader.int("worker_threads", defaults.worker_threads, 1, 1024),
        worker_queue_limit=reader.int("worker_queue_limit", defaults.worker_queue_limit, 1, 1_000_000),
        require_tls_for_plaintext=bool(reader.bool("require_tls_for_plaintext", False)),
        reuse_port=bool(reader.bool("reuse_port", False)),
        tls=tls,
    )
    for name in ("asterisk_version", "system_name"):
        value = getattr(settings, name)
        if "\r" in value or "\n" in value:
            raise reader.error(name, "must be one line")
    reader.finish()
    return settings


def _classes(reader: _Reader, name: str) -> int:
    value = reader.table.pop(name, [])
    if not isinstance(value, (str, list)):
        raise reader.error(name, f"must be a class list, not {_type_name(value)}")
    try:
        return parse_class_list(value)
    except ClassListError as exc:
        raise reader.error(name, f"{exc.reason}: {exc.token!r}") from None


def _attributes(user: _Reader) -> Mapping[str, Any]:
    value = user.table.pop("attributes", {})
    if not isinstance(value, dict):
        raise user.error("attributes", f"must be a table, not {_type_name(value)}")
    return MappingProxyType(dict(value))


def _users(reader: _Reader) -> Mapping[str, UserConfig]:
    users: dict[str, UserConfig] = {}
    for name in list(reader.table):
        if not re.fullmatch(r"[A-Za-z0-9_.@+-]+", name):
            raise reader.error(name, "user names may use letters, digits and _ . @ + - only")
        if ascii_lower(name) in users:
            raise reader.error(name, "duplicate user (user names are case-insensitive)")
        user = reader.sub(name)
        has_secret, has_hash = "secret" in user.table, "secret_hash" in user.table
        if has_secret and has_hash:
            raise user.error("secret_hash", "set either secret or secret_hash, not both")
        secret = user.str("secret", "")
        secret_hash = user.str("secret_hash", "")
        if has_hash:
            if not secret_hash:
                raise user.error("secret_hash", "must not be empty")
            try:
                parse_secret_hash(secret_hash)
            except ValueError as exc:
                raise user.error("secret_hash", str(exc)) from None
        elif not secret:
            raise user.error("secret", "is required (or secret_hash) and must not be empty")
        permit, deny = user.str_list("permit"), user.str_list("deny")
        try:
            acl = AddressACL.parse(permit, deny)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            raise user.error(key, problem) from None
        users[ascii_lower(name)] = UserConfig(
            name=name,
            secret=secret,
            read=_classes(user, "read"),
            write=_classes(user, "write"),
            allow_multiple_login=user.bool("allow_multiple_login", None),
            secret_hash=secret_hash,
            acl=acl,
            require_tls_for_plaintext=user.bool("require_tls_for_plaintext", None),
            enabled=bool(user.bool("enabled", True)),
            attributes=_attributes(user),
        )
        user.finish()
    reader.finish()
    return MappingProxyType(users)


def _logging(reader: _Reader, base: Optional[Path] = None) -> LoggingSettings:
    level = reader.str("level", "info").lower()
    if level not in _LOG_LEVELS:
        raise reader.error("level", f"must be one of {', '.join(_LOG_LEVELS)}")
    fmt = reader.str("format", "auto").lower()
    if fmt not in _LOG_FORMATS:
        raise reader.error("format", f"must be one of {', '.join(_LOG_FORMATS)}")
    file = reader.str("file", "")
    if file and base is not None and not Path(file).expanduser().is_absolute():
        file = str(base / file)  # like the TLS files: relative to the config file, not the cwd
    settings = LoggingSettings(
        level=level,
        format=fmt,
        file=str(Path(file).expanduser()) if file else "",
        audit_read_only_actions=bool(reader.bool("audit_read_only_actions", False)),
    )
    reader.finish()
    return settings


def _plugins(reader: _Reader) -> PluginSettings:
    disable = reader.str_list("disable")
    required = reader.str_list("required")
    both = set(disable) & set(required)
    if both:
        raise reader.error("required", f"plugin {sorted(both)[0]!r} is also disabled")
    tables = {}
    for name in list(reader.table):
        value = reader.table.pop(name)
        if not isinstance(value, dict):
            raise reader.error(name, "unknown key (plugin settings must be a [plugins.<name>] table)")
        tables[name] = MappingProxyType(value)
    return PluginSettings(disable=disable, required=required, tables=MappingProxyType(tables))


def _auth(reader: _Reader) -> AuthSettings:
    defaults = AuthSettings()
    backends = reader.str_list("backends") if "backends" in reader.table else defaults.backends
    if not backends:
        raise reader.error("backends", "must name at least one backend")
    if len(set(backends)) != len(backends):
        raise reader.error("backends", "names a backend twice")
    settings = AuthSettings(
        backends=backends,
        timeout=reader.number("timeout", defaults.timeout, 0.01, 300),
        worker_threads=reader.int("worker_threads", defaults.worker_threads, 1, 256),
    )
    reader.finish()
    return settings


def parse_config(data: Mapping[str, Any], source: str = "<config>", base: Optional[Path] = None) -> Config:
    """Validate an already parsed TOML document; relative file names are resolved against ``base``."""
    root = _Reader(source, "", data)
    config = Config(
        server=_server(root.sub("server"), base),
        users=_users(root.sub("users")),
        logging=_logging(root.sub("logging"), base),
        plugins=_plugins(root.sub("plugins")),
        auth=_auth(root.sub("auth")),
        source=source,
        http=parse_http(root.sub("http"), base) if "http" in root.table else None,
    )
    root.finish()
    return config


def load_config(path: Union[str, Path]) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` naming what is wrong."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return parse_config(data, source, Path(path).resolve().parent)


# -- start-up safety checks ----------------------------------------------------

#: Secrets of the sample ``config.toml``: published, so anyone can log in with them.
SAMPLE_SECRETS = frozenset({"change-me", "dashboard-secret"})


def is_loopback_host(host: str) -> bool:
    """True only for ``localhost`` and loopback IP literals; any other name counts as reachable."""
    if ascii_lower(host) == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _listeners(config: Config) -> List[Tuple[str, str, bool]]:
    """``(key, host, tls)`` for each listener the configuration opens."""
    found = [("server.host", config.server.host, False)]
    if config.server.tls is not None:
        found.append(("server.tls.host", config.server.tls.host, True))
    return found


def check_sample_secrets(config: Config) -> None:
    """Refuse a sample secret on a listener other clients can reach.

    The sample ``config.toml`` is public, so its secrets are no secret; on
    loopback only local users can try them. Raises :class:`ConfigError`
    naming the file, the user's key and how to set a real secret. Disabled
    users and ``secret_hash`` users are not checked.
    """
    exposed = [(key, host) for key, host, _ in _listeners(config) if not is_loopback_host(host)]
    if not exposed:
        return
    key, host = exposed[0]
    for user in config.users.values():
        if user.enabled and user.secret in SAMPLE_SECRETS:
            raise ConfigError(
                config.source, f"users.{user.name}.secret",
                f"is the sample configuration's placeholder, and {key} = {host!r} is not a loopback "
                f"address; refusing to start. Set a secret of your own, or run 'ami-server hash-secret' "
                f"and put its output in users.{user.name}.secret_hash instead of secret",
            )


def plaintext_exposure_warnings(config: Config) -> List[str]:
    """Warnings for a plain-TCP listener, not on loopback, that accepts plaintext ``Secret`` logins.

    Such a login sends the secret readable by anyone on the path. It is possible
    unless ``require_tls_for_plaintext`` holds for every user (the server
    setting, or each user's override) -- MD5 logins are not counted.
    """
    host = config.server.host
    if is_loopback_host(host):
        return []
    default = config.server.require_tls_for_plaintext
    users = sorted(
        user.name for user in config.users.values()
        if user.enabled and not (default if user.require_tls_for_plaintext is None else user.require_tls_for_plaintext)
    )
    others = [] if default else [b for b in config.auth.backends if b != "config"]
    if not users and not others:
        return []
    who = []
    if users:
        who.append(f"users {', '.join(users)}")
    if others:
        who.append(f"users of the backends {', '.join(others)}")
    return [
        f"{config.source}: server.host: {host!r} is not a loopback address and that listener has no TLS: "
        f"{' and '.join(who)} can log in with a plaintext Secret readable on the network. "
        f"Set [server] require_tls_for_plaintext = true and add a [server.tls] listener, "
        f"or listen on 127.0.0.1"
    ]
