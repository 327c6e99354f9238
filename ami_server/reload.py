"""Reloading the configuration of a running server (D-8.9).

Every step that can fail -- reading the file, the certificates, binding a
moved listener, the authentication chain -- runs before anything changes,
so a failed reload leaves the server exactly as it was. Then the new
configuration is committed and the reload listeners (``ServerHandle.on_reload``)
run: the ``config`` backend, for one, closes or re-classes the sessions of
users that changed.
"""

from __future__ import annotations

from dataclasses import replace
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .config import Config, ConfigError, check_sample_secrets, load_config
from .connection import ListenError, listen, server_tls_context
from .login import AuthChainError, build_chain
from .ops_config import http_secrets

if TYPE_CHECKING:  # pragma: no cover
    import socket

    from .server import Server

__all__ = ["reload", "restart_required", "secrets_of"]


def reload(server: "Server", new: Optional[Config] = None) -> Tuple[bool, str]:
    """Apply ``new`` (or the file read again) to ``server``; ``(ok, message)``.

    The log file is reopened first, whatever the outcome, so that SIGHUP
    after logrotate moved it always starts a new file.
    """
    from .ops import reopen_logs

    reopen_logs(server)
    ok, message = _reload(server, new)
    server.ops.reloads["ok" if ok else "failed"] += 1
    return ok, message


def restart_required(running: Config, new: Config) -> List[str]:
    """What ``new`` changes that only a restart applies, compared with what runs (not the last file).

    ``audit_read_only_actions`` is read at every action, so a reload applies it.
    """
    def logging_of(config: Config) -> Tuple[str, str, str]:
        return config.logging.level, config.logging.format, config.logging.file

    return [
        key for key, before, after in (
            ("plugins.disable", running.plugins.disable, new.plugins.disable),
            ("plugins.required", running.plugins.required, new.plugins.required),
            ("logging", logging_of(running), logging_of(new)),
            ("http", running.http, new.http),
            ("server.reuse_port", running.server.reuse_port, new.server.reuse_port),
        ) if before != after
    ]


def _reload(server: "Server", new: Optional[Config]) -> Tuple[bool, str]:
    old = server.config
    try:
        if new is None:
            new = load_config(old.source)
        check_sample_secrets(new)
        chain = build_chain(server.manager, new.auth_backends, new.source)
        tls_context = server_tls_context(new) if new.server.tls is not None else None
        listeners = _rebind(old, new)
    except (ConfigError, AuthChainError, ListenError) as exc:
        server.log.error("ReloadFailed", error=str(exc))
        return False, f"Reload failed: {exc}"
    pending = restart_required(server.boot_config, new)
    # -- commit: nothing below can fail -------------------------------
    for transport, sock in listeners.items():
        server.replace_listener(transport, sock)
    server.config = new
    server.tls_context = tls_context
    server.login.chain = chain
    server.redactor.add_secrets(secrets_of(new))
    server.actions = server.actions.with_tables(new.plugins.tables)
    server.dispatcher.registry = server.actions
    router = server.dispatcher.router
    if router is not None:
        server.dispatcher.router = replace(router, config=new.plugins.tables.get(router.plugin, {}))
    server.core.outbox.limit = new.server.output_queue_limit
    server.workers.resize(new.server.worker_threads, new.server.worker_queue_limit)
    server.auth_workers.resize(new.auth.worker_threads, new.server.auth_limit)
    server.reloaded_at = time.monotonic()
    server.reloaded_wall = time.time()
    revoked, updated = server.core.revocations, server.core.reclassed
    server.run_reload_listeners(new)
    revoked = server.core.revocations - revoked
    updated = server.core.reclassed - updated
    server.audit.record(
        "ConfigReloaded", source=new.source, users=len(new.users), sessions_updated=updated,
        sessions_revoked=revoked, restart_required=pending,
    )
    message = f"Configuration reloaded ({updated} sessions updated, {revoked} revoked)"
    if pending:
        message += f"; restart to apply {', '.join(pending)}"
    return True, message


def _rebind(old: Config, new: Config) -> Dict[str, Optional["socket.socket"]]:
    """Bind moved listeners before the old ones close; on failure close what was bound."""
    changes: Dict[str, Optional["socket.socket"]] = {}
    try:
        if (old.server.host, old.server.port) != (new.server.host, new.server.port):
            changes["TCP"] = listen(new.server.host, new.server.port, "server", new.source, new.server.reuse_port)
        old_tls, new_tls = old.server.tls, new.server.tls
        old_where = (old_tls.host, old_tls.port) if old_tls else None
        new_where = (new_tls.host, new_tls.port) if new_tls else None
        if old_where != new_where:
            changes["TLS"] = None if new_tls is None else listen(
                new_tls.host, new_tls.port, "server.tls", new.source, new.server.reuse_port)
    except ListenError:
        for sock in changes.values():
            if sock is not None:
                sock.close()
        raise
    return changes


def secrets_of(config: Config) -> List[str]:
    """Every configured secret and secret hash: what the log redactor must never let through."""
    found = [value for user in config.users.values() for value in (user.secret, user.secret_hash) if value]
    return found + list(http_secrets(config.http))
