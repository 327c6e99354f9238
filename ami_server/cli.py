"""``ami-server``: run the server, check a configuration, list plugins, print the version."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Dict, List, Optional

from ._version import __version__
from .audit import Redactor, make_logger
from .config import Config, ConfigError, check_sample_secrets, load_config, plaintext_exposure_warnings
from .reload import secrets_of
from .server import Server, ServerError
from .supervisor import Supervisor, die_with_parent, workers_problem

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ami-server",
        description="An Asterisk Manager Interface server, extensible with plugins.",
        epilog="other commands: 'ami-server plugins [--json] [--config PATH]' lists the plugins; "
        "'ami-server hash-secret' prints a secret_hash for config.toml.",
    )
    parser.add_argument("--config", "-c", default="config.toml", metavar="PATH",
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and the plugins, then exit 0 (valid) or 1")
    parser.add_argument("--strict", action="store_true",
                        help="with --check-config: exit 1 on warnings too (unknown plugin names, ports in use)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="run N server processes on one port ([server] reuse_port = true), "
                        "supervised; join them with the cluster plugin")
    # Set by the supervisor for each worker it starts: the worker's index.
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"ami-server {__version__}")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        die_with_parent()
    try:
        config = load_config(args.config)
        check_sample_secrets(config)
    except ConfigError as exc:
        print(f"ami-server: configuration error: {exc}", file=sys.stderr)
        return 1
    if args.workers is not None:
        problem = workers_problem(config, args.workers)
        if problem is not None:
            print(f"ami-server: configuration error: {problem}", file=sys.stderr)
            return 1
    warnings = plaintext_exposure_warnings(config)
    if args.check_config:
        for text in warnings:
            print(f"ami-server: warning: {text}", file=sys.stderr)
        return _check(config, args.config, args.strict)
    if args.workers is not None:
        return _supervise(config, args.config, args.workers)
    try:
        server = Server(config, worker=args.worker)
    except ServerError as exc:
        print(f"ami-server: {exc}", file=sys.stderr)
        return 1
    for text in warnings:
        # In the server's own log (file or stderr), where operators look for it.
        server.log.warning("PlaintextLoginsExposed", detail=text)
    try:
        server.start()
    except ServerError as exc:
        server.log_sink.close()
        print(f"ami-server: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        server.stop()

    def reload(signum: int, frame: object) -> None:
        server.request_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reload)
    server.serve_forever()
    return 0


def _supervise(config: Config, path: str, count: int) -> int:
    """``--workers N``: the supervisor logs where the workers do, with ``supervisor: true``."""
    try:
        sink, fmt = Server._sink(config, None)
    except ServerError as exc:
        print(f"ami-server: {exc}", file=sys.stderr)
        return 1
    log = make_logger(sink, config.logging.level, fmt, Redactor(secrets_of(config)), {"supervisor": True})
    supervisor = Supervisor(path, count, log)
    supervisor.install_signals()
    try:
        return supervisor.run()
    finally:
        sink.close()


def _check(config, path: str, strict: bool = False) -> int:
    from .audit import MemorySink
    from .preflight import preflight

    sink = MemorySink()
    server = Server(config, log_sink=sink)
    try:
        server.load()
    except ServerError as exc:
        print(f"ami-server: {exc}", file=sys.stderr)
        return 1
    finally:
        server.loop.close()
    findings = preflight(config, [record.name for record in server.plugins])
    for text in findings.warnings:
        print(f"ami-server: warning: {text}", file=sys.stderr)
    for text in findings.errors:
        print(f"ami-server: {text}", file=sys.stderr)
    if findings.errors or (strict and findings.warnings):
        return 1
    print(f"{path}: OK ({len(config.users)} users, {len(server.actions)} actions)")
    return 0


def plugins_command(argv: List[str]) -> int:
    """``ami-server plugins``: every plugin, its origin, hooks and actions; exit 1 if any failed."""
    from .listing import format_json, format_text, inspect_plugins

    parser = argparse.ArgumentParser(
        prog="ami-server plugins",
        description="List builtin and installed plugins: distribution, version, entry point group, "
        "hooks, actions and privileges. Disabled and failed plugins are shown as such.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--config", "-c", metavar="PATH",
                        help="configuration whose [plugins] settings apply (default: ./config.toml if present)")
    args = parser.parse_args(argv)
    path = args.config
    if path is None and os.path.exists("config.toml"):
        path = "config.toml"
    try:
        config = load_config(path) if path else Config()
    except ConfigError as exc:
        print(f"ami-server: configuration error: {exc}", file=sys.stderr)
        return 1
    reports = inspect_plugins(config)
    sys.stdout.write(format_json(reports) + "\n" if args.json else format_text(reports))
    return 1 if any(r.status in ("failed", "missing") for r in reports) else 0


def hash_secret_command(argv: List[str]) -> int:
    """``ami-server hash-secret``: print a ``secret_hash`` for a secret from the terminal or stdin."""
    import getpass

    from .passwords import DEFAULT_LOG_N, hash_secret

    parser = argparse.ArgumentParser(
        prog="ami-server hash-secret",
        description="Print a salted scrypt hash for [users.<name>] secret_hash. The secret is read "
        "from the terminal (asked twice, not echoed) or as the first line of standard input.",
    )
    parser.add_argument("--cost", type=int, default=DEFAULT_LOG_N, choices=range(10, 21), metavar="10-20",
                        help="log2 of the scrypt work factor N (default: %(default)s)")
    args = parser.parse_args(argv)
    if sys.stdin.isatty():
        try:
            secret = getpass.getpass("Secret: ")
            again = getpass.getpass("Secret (again): ")
        except (EOFError, KeyboardInterrupt):
            print("ami-server: no secret read", file=sys.stderr)
            return 1
        if secret != again:
            print("ami-server: the two secrets differ", file=sys.stderr)
            return 1
    else:
        line = sys.stdin.readline()
        secret = line[:-1] if line.endswith("\n") else line
        secret = secret[:-1] if secret.endswith("\r") else secret
    if not secret:
        print("ami-server: the secret must not be empty", file=sys.stderr)
        return 1
    print(hash_secret(secret, log_n=args.cost))
    return 0


COMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "plugins": plugins_command,
    "hash-secret": hash_secret_command,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
