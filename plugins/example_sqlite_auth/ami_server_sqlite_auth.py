"""An ami-server authentication backend that keeps users in an SQLite database.

Secrets are stored as salted scrypt hashes, so this backend accepts plaintext
``Secret`` logins only (an MD5 key cannot be checked against a one-way hash);
use it behind the TLS listener. Enable it in config.toml::

    [auth]
    backends = ["config", "sqlite_auth"]

    [plugins.sqlite_auth]
    database = "/var/lib/ami-server/users.db"

and manage users with the ``ami-sqlite-users`` command.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional

from ami_server import AddressACL, AuthDecision, AuthRequest, hash_secret, hookimpl, verify_secret

SCHEMA = """
CREATE TABLE IF NOT EXISTS ami_users (
    username    TEXT PRIMARY KEY COLLATE NOCASE,
    secret_hash TEXT NOT NULL,
    read        TEXT NOT NULL DEFAULT '',
    write       TEXT NOT NULL DEFAULT '',
    permit      TEXT NOT NULL DEFAULT '',
    deny        TEXT NOT NULL DEFAULT '',
    enabled     INTEGER NOT NULL DEFAULT 1
)
"""


class BackendError(RuntimeError):
    """The backend cannot answer (misconfigured or unreadable database): the login fails closed."""


def _networks(text: str) -> List[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _classes(text: str) -> List[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _open_read_only(config: Mapping[str, Any]) -> sqlite3.Connection:
    database = config.get("database")
    if not isinstance(database, str) or not database:
        raise BackendError("[plugins.sqlite_auth] database is not set")
    if not Path(database).is_file():
        raise BackendError(f"database {database!r} does not exist")
    timeout = float(config.get("busy_timeout", 2.0))
    uri = Path(database).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout)


@hookimpl
def authenticate(request: AuthRequest, config: Mapping[str, Any]) -> Optional[AuthDecision]:
    """Runs in one of the server's auth worker threads: a connection per call keeps it thread-safe."""
    connection = _open_read_only(config)
    try:
        row = connection.execute(
            "SELECT secret_hash, read, write, permit, deny, enabled FROM ami_users WHERE username = ?",
            (request.username,),
        ).fetchone()
    finally:
        connection.close()
    if row is None:
        return None  # not ours: the next backend in [auth] backends is asked
    secret_hash, read, write, permit, deny, enabled = row
    if not enabled:
        return AuthDecision.reject("unknown_user", detail="account disabled")
    if not AddressACL.parse(_networks(permit), _networks(deny)).allows(request.peer_ip):
        return AuthDecision.reject("acl_denied", detail=f"{request.peer_ip} not allowed")
    if request.auth_type == "md5":
        return AuthDecision.reject(detail="MD5 login for a hashed secret (plaintext Secret only)")
    if request.secret is None or not verify_secret(request.secret, secret_hash):
        return AuthDecision.reject("invalid_password")
    return AuthDecision.accept(_classes(read), _classes(write))


# -- ami-sqlite-users ----------------------------------------------------------


def _read_secret() -> str:
    if sys.stdin.isatty():
        secret = getpass.getpass("Secret: ")
        if getpass.getpass("Secret (again): ") != secret:
            raise SystemExit("ami-sqlite-users: the two secrets differ")
        return secret
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _check_classes(text: str, what: str) -> str:
    names = _classes(text)
    try:
        AuthDecision.accept(read=names)  # validates the class names
    except ValueError as exc:
        raise SystemExit(f"ami-sqlite-users: --{what}: {exc}") from None
    return ",".join(names)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ami-sqlite-users", description="Manage the users of the sqlite_auth backend.")
    parser.add_argument("--database", required=True, help="SQLite database file (created by 'set' if missing)")
    commands = parser.add_subparsers(dest="command", required=True)
    setter = commands.add_parser("set", help="add a user or replace its secret and classes (secret from stdin)")
    setter.add_argument("username")
    setter.add_argument("--read", default="", help="read classes, comma-separated")
    setter.add_argument("--write", default="", help="write classes, comma-separated")
    setter.add_argument("--permit", default="", help="networks allowed, comma-separated")
    setter.add_argument("--deny", default="", help="networks refused, comma-separated")
    setter.add_argument("--disabled", action="store_true", help="store the user disabled")
    remove = commands.add_parser("remove", help="delete a user")
    remove.add_argument("username")
    commands.add_parser("list", help="list users (never secrets)")
    args = parser.parse_args(argv)

    connection = sqlite3.connect(args.database)
    try:
        connection.execute(SCHEMA)
        if args.command == "set":
            read = _check_classes(args.read, "read")
            write = _check_classes(args.write, "write")
            try:
                AddressACL.parse(_networks(args.permit), _networks(args.deny))
            except ValueError as exc:
                raise SystemExit(f"ami-sqlite-users: {exc}") from None
            secret = _read_secret()
            if not secret:
                raise SystemExit("ami-sqlite-users: the secret must not be empty")
            with connection:
                connection.execute(
                    "INSERT INTO ami_users (username, secret_hash, read, write, permit, deny, enabled) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(username) DO UPDATE SET "
                    "secret_hash = excluded.secret_hash, read = excluded.read, write = excluded.write, "
                    "permit = excluded.permit, deny = excluded.deny, enabled = excluded.enabled",
                    (args.username, hash_secret(secret), read, write, args.permit, args.deny, int(not args.disabled)),
                )
            print(f"user {args.username} saved")
        elif args.command == "remove":
            with connection:
                removed = connection.execute("DELETE FROM ami_users WHERE username = ?", (args.username,)).rowcount
            if not removed:
                print(f"ami-sqlite-users: no user {args.username!r}", file=sys.stderr)
                return 1
            print(f"user {args.username} removed")
        else:
            for username, read, write, enabled in connection.execute(
                "SELECT username, read, write, enabled FROM ami_users ORDER BY username COLLATE NOCASE"
            ):
                state = "" if enabled else "  (disabled)"
                print(f"{username}  read={read or '-'}  write={write or '-'}{state}")
    finally:
        connection.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
