import re
import subprocess
import sys
import textwrap
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

USERS = {
    "admin": {"secret": "adminpass", "read": "all", "write": "all"},
    "reader": {"secret": "readerpass", "read": "system,call,user", "write": []},
    "limited": {"secret": "limitedpass", "read": "call", "write": "call"},
}


def wait_for(predicate, what, timeout=5.0):
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path for throwaway plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def plugin_module(plugin_dir, name, body):
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


def start_server_process(config: Path, log_file: Path, timeout: float = 30.0):
    """Run ``ami-server --config`` as a real process; return it and the port its log announces."""
    process = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "server did not start"
        assert process.poll() is None, process.stderr.read()
        found = log_file.exists() and re.search(r'"address": "127\.0\.0\.1:(\d+)"', log_file.read_text())
        if found:
            return process, int(found.group(1))
        time.sleep(0.05)
