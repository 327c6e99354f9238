"""Shared test data and helpers; test modules import them from here (``from helpers import ...``).

A plain module rather than conftest.py: pytest loads conftest.py itself, and
importing it by name as well would give a second copy of the module.
``conftest.py`` keeps only fixtures (and re-exports these names for modules
that still import them from it).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
import time
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

#: The users of the reference transcripts (spec Appendix A) and of most tests.
USERS: Dict[str, Dict[str, object]] = {
    "admin": {"secret": "adminpass", "read": "all", "write": "all"},
    "reader": {"secret": "readerpass", "read": "system,call,user", "write": []},
    "limited": {"secret": "limitedpass", "read": "call", "write": "call"},
}


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def non_loopback_ipv4() -> Optional[str]:
    """An IPv4 address of this machine that is not loopback, or None."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def plugin_module(plugin_dir: Path, name: str, body: str) -> EntryPoint:
    """Write module ``name`` and return a real EntryPoint of the ami_server.actions group for it."""
    (plugin_dir / f"{name}.py").write_text(textwrap.dedent(body))
    sys.modules.pop(name, None)
    return EntryPoint(name, name, "ami_server.actions")


def process_config(log_file: Path) -> str:
    """The ``[server]`` and ``[logging]`` tables :func:`start_server_process` relies on.

    Any free loopback port (the log announces it), no login failure delay, and
    the log as JSON lines in ``log_file``; append the ``[users.*]`` tables.
    """
    return f"""
[server]
host = "127.0.0.1"
port = 0
login_failure_delay = 0

[logging]
file = "{log_file}"
format = "json"
"""


def start_server_process(config: Path, log_file: Path, timeout: float = 30.0) -> Tuple[subprocess.Popen, int]:
    """Run ``ami-server --config`` as a real process; return it and the port its log announces."""
    process = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "server did not start"
        assert process.poll() is None, process.stderr.read()
        found = log_file.exists() and re.search(r'"address":"127\.0\.0\.1:(\d+)"', log_file.read_text())
        if found:
            return process, int(found.group(1))
        time.sleep(0.05)
