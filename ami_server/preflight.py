"""``--check-config``'s checks beyond parsing: what would fail or surprise at start-up.

Errors (start-up would fail): a listener host that does not resolve, an
``[http]`` table without ``prometheus_client``. Warnings (start-up works,
but something is probably a typo or in the way): a ``[plugins.<name>]``
table or a ``disable`` name that matches no installed plugin, a port that
is taken right now.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

from .config import Config
from .security import host_port

__all__ = ["Findings", "preflight", "listeners_of"]


@dataclass(frozen=True)
class Findings:
    errors: Tuple[str, ...]
    warnings: Tuple[str, ...]


def listeners_of(config: Config) -> List[Tuple[str, str, int]]:
    """``(config key, host, port)`` of every listener the configuration opens."""
    found = [("server", config.server.host, config.server.port)]
    if config.server.tls is not None:
        found.append(("server.tls", config.server.tls.host, config.server.tls.port))
    if config.http is not None:
        found.append(("http", config.http.host, config.http.port))
    return found


def _resolve(host: str, port: int) -> Tuple[int, tuple]:
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
    return family, sockaddr


def _port_taken(family: int, sockaddr: tuple) -> str:
    """Why binding fails now ('' when it works), with the options the server uses."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "in use"
        return exc.strerror or str(exc)
    finally:
        sock.close()
    return ""


def preflight(config: Config, plugin_names: Iterable[str]) -> Findings:
    """Check ``config`` against this machine and the installed plugins (``plugin_names``, disabled ones too)."""
    errors: List[str] = []
    warnings: List[str] = []
    source = config.source
    for key, host, port in listeners_of(config):
        try:
            family, sockaddr = _resolve(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            errors.append(f"{source}: {key}.host: cannot resolve {host!r}: {exc}")
            continue
        if port == 0:
            continue
        problem = _port_taken(family, sockaddr)
        if problem:
            warnings.append(f"{source}: {key}.port: cannot listen on {host_port(host, port)} right now ({problem})")
    if config.http is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            errors.append(f"{source}: http: needs the prometheus_client package: pip install 'ami-server[metrics]'")
    installed = set(plugin_names)
    warnings.extend(_unknown(source, "plugins", sorted(config.plugins.tables), installed,
                             "a [plugins.{name}] table for a plugin that is not installed"))
    warnings.extend(_unknown(source, "plugins.disable", config.plugins.disable, installed,
                             "disables {name!r}, which is not installed"))
    warnings.extend(_unknown(source, "plugins.required", config.plugins.required, installed,
                             "requires {name!r}, which is not installed"))
    return Findings(tuple(errors), tuple(warnings))


def _unknown(source: str, key: str, names: Sequence[str], installed: set, text: str) -> List[str]:
    out = []
    for name in names:
        if name not in installed:
            where = f"{key}.{name}" if key == "plugins" else key
            hint = _close_match(name, installed)
            out.append(f"{source}: {where}: " + text.format(name=name) + (f" (did you mean {hint!r}?)" if hint else ""))
    return out


def _close_match(name: str, names: Iterable[str]) -> str:
    import difflib

    found = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.75)
    return found[0] if found else ""
