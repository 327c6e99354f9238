"""``ami-server``: run the server, check a configuration, print the version."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import List, Optional

from ._version import __version__
from .config import ConfigError, load_config
from .server import Server, ServerError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ami-server",
        description="An Asterisk Manager Interface server, extensible with plugins.",
    )
    parser.add_argument("--config", "-c", default="config.toml", metavar="PATH",
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and the plugins, then exit 0 (valid) or 1")
    parser.add_argument("--version", action="version", version=f"ami-server {__version__}")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"ami-server: configuration error: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        return _check(config, args.config)
    try:
        server = Server(config)
    except ServerError as exc:
        print(f"ami-server: {exc}", file=sys.stderr)
        return 1
    try:
        server.start()
    except ServerError as exc:
        server.log_sink.close()
        print(f"ami-server: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    return 0


def _check(config, path: str) -> int:
    from .audit import MemorySink

    sink = MemorySink()
    server = Server(config, log_sink=sink)
    try:
        server.load()
    except ServerError as exc:
        print(f"ami-server: {exc}", file=sys.stderr)
        return 1
    finally:
        server.loop.close()
    print(f"{path}: OK ({len(config.users)} users, {len(server.actions)} actions)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
