"""``[server] reuse_port`` and ``ami-server --workers N`` as real processes (no cluster: see plugins/cluster)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ami_server.config import ConfigError, load_config
from ami_server.connection import ListenError, listen
from ami_server.supervisor import workers_problem
from ami_server.testing import AMIClient

CMD = [sys.executable, "-m", "ami_server.cli"]
USERS = '[users.admin]\nsecret = "workers-secret-1"\nread = "all"\nwrite = "all"\n'

needs_reuseport = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _records(log: Path) -> List[Dict[str, Any]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _config(tmp_path: Path, port: int, reuse_port: bool = True) -> Path:
    cfg = tmp_path / "ami.toml"
    cfg.write_text(
        f'[server]\nport = {port}\nreuse_port = {"true" if reuse_port else "false"}\nlogin_failure_delay = 0\n'
        f'[logging]\nfile = "{tmp_path / "ami.log"}"\nformat = "json"\n{USERS}'
    )
    return cfg


@needs_reuseport
def test_reuse_port_lets_two_listeners_share_a_port():
    first = listen("127.0.0.1", 0, "server", "t.toml", reuse_port=True)
    port = first.getsockname()[1]
    try:
        second = listen("127.0.0.1", port, "server", "t.toml", reuse_port=True)
        second.close()
        with pytest.raises(ListenError, match="cannot listen"):
            listen("127.0.0.1", port, "server", "t.toml")
    finally:
        first.close()


def test_reuse_port_is_a_boolean_and_workers_need_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nreuse_port = "yes"\n')
    with pytest.raises(ConfigError, match="server.reuse_port: must be true or false"):
        load_config(str(bad))
    config = load_config(str(_config(tmp_path, 5038, reuse_port=False)))
    assert workers_problem(config, 1) is None
    assert "server.reuse_port: must be true" in workers_problem(config, 2)
    zero = load_config(str(_config(tmp_path, 0)))
    assert "server.port: must not be 0" in workers_problem(zero, 2)
    assert workers_problem(load_config(str(_config(tmp_path, 5038))), 2) is None
    result = subprocess.run(CMD + ["--workers", "2", "--config", str(_config(tmp_path, 5038, False))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "server.reuse_port: must be true" in result.stderr


@needs_reuseport
def test_workers_share_a_port_restart_reload_and_stop(tmp_path):
    port = _free_port()
    log = tmp_path / "ami.log"
    proc = subprocess.Popen(CMD + ["--workers", "2", "--config", str(_config(tmp_path, port))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        def started(count: int) -> List[Dict[str, Any]]:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            found = [r for r in _records(log) if r.get("event") == "ServerStarted"]
            return found if len(found) >= count else []

        first = _wait(lambda: started(2), "two workers to start")
        assert sorted(r["worker"] for r in first) == [0, 1]
        assert all(r["address"] == f"127.0.0.1:{port}" for r in first)

        # Connections spread over the workers (the kernel hashes each connection).
        clients = []
        for _ in range(24):
            client = AMIClient("127.0.0.1", port, timeout=10)
            assert client.login("admin", "workers-secret-1")["Response"] == "Success"
            clients.append(client)
        def logins() -> List[Dict[str, Any]]:
            found = [r for r in _records(log) if r.get("login") == "LoginSucceeded"]
            return found if len(found) >= 24 else []

        assert {r["worker"] for r in _wait(logins, "the login records")} == {0, 1}
        for client in clients:
            client.close()

        # A killed worker is restarted under the same index; the others keep serving.
        pids = _wait(lambda: (lambda found: found if len(found) == 2 else None)(
            {r["worker"]: r["pid"] for r in _records(log) if r.get("event") == "WorkerStarted"}), "the worker pids")
        os.kill(pids[0], signal.SIGKILL)
        _wait(lambda: [r for r in _records(log) if r.get("event") == "WorkerExited" and r["worker"] == 0],
              "the supervisor to see the death")
        _wait(lambda: started(3), "worker 0 to start again")
        restarted = [r for r in _records(log) if r.get("event") == "WorkerStarted" and r["worker"] == 0]
        assert len(restarted) == 2 and restarted[1]["pid"] != pids[0]
        with AMIClient("127.0.0.1", port, timeout=10) as client:
            assert client.login("admin", "workers-secret-1")["Response"] == "Success"

        # SIGHUP reaches every worker: each reloads.
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: {r["worker"] for r in _records(log) if r.get("event") == "ConfigReloaded"} == {0, 1},
              "both workers to reload")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stopped = [r for r in _records(log) if r.get("event") == "ServerStopped"]
        assert {r["worker"] for r in stopped} == {0, 1}
        # Nothing listens any more.
        with socket.socket() as probe, pytest.raises(OSError):
            probe.settimeout(2)
            probe.connect(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "workers-secret-1" not in log.read_text()


@needs_reuseport
def test_a_worker_that_cannot_start_stops_the_whole(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # held without SO_REUSEPORT: the workers cannot bind
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        result = subprocess.run(CMD + ["--workers", "2", "--config", str(_config(tmp_path, port))],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        holder.close()
    assert result.returncode == 1
    events = [r.get("event") for r in _records(tmp_path / "ami.log")]
    assert "WorkerStartFailed" in events and "WorkersStopped" in events
