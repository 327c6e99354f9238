"""Out of file descriptors: the listener is paused and retried, not spun on (hardening).

The server runs as a real process under a low descriptor limit; clients use
up its descriptors with open sessions until a connection gets no banner.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import process_config, wait_for

LIMIT = 64


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _records(log_file: Path, name: str) -> list:
    out = []
    for line in log_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == name:
            out.append(record)
    return out


def _banner(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(100)
    except (socket.timeout, ConnectionError):
        return b""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc for the CPU figure")
def test_out_of_descriptors_pauses_accepting_then_resumes(tmp_path):
    log_file = tmp_path / "audit.log"
    config = tmp_path / "config.toml"
    config.write_text(process_config(log_file) + '[users.admin]\nsecret = "adminpass"\nread = "all"\nwrite = "all"\n')

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))

    process = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=low_limit)
    clients = []
    try:
        wait_for(lambda: log_file.exists() and '"ServerStarted"' in log_file.read_text(), "the server to start")
        port = int(_records(log_file, "ServerStarted")[0]["address"].rsplit(":", 1)[1])
        starved = None
        for _ in range(LIMIT + 10):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if not _banner(sock, 1.0).startswith(b"Asterisk Call Manager/"):
                starved = sock
                break
            clients.append(sock)
            # Logged in, so that auth_limit (unauthenticated sessions) is not what runs out.
            sock.sendall(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = _banner(sock, 5.0)
                assert chunk, "no login reply"
                reply += chunk
            assert b"Authentication accepted" in reply
        assert starved is not None, "the descriptors never ran out"
        wait_for(lambda: _records(log_file, "AcceptPaused"), "the AcceptPaused record")
        cpu_before = _cpu_seconds(process.pid)
        time.sleep(2.0)
        cpu_used = _cpu_seconds(process.pid) - cpu_before
        assert cpu_used < 0.5, f"the loop spun on the listener: {cpu_used:.2f} s of CPU in 2 s"
        assert len(_records(log_file, "AcceptPaused")) == 1  # one record per episode, not per attempt
        assert not _records(log_file, "AcceptFailed")
        # A descriptor frees: the waiting connection is accepted and served.
        for sock in clients[:5]:
            sock.close()
        del clients[:5]
        assert _banner(starved, 5.0).startswith(b"Asterisk Call Manager/")
        wait_for(lambda: _records(log_file, "AcceptResumed"), "the AcceptResumed record")
        resumed = _records(log_file, "AcceptResumed")[0]
        assert resumed["failed_attempts"] >= 1 and resumed["error"] == "Too many open files"
        clients.append(starved)
        # The sessions opened before the episode are still served.
        clients[0].sendall(b"Action: Ping\r\nActionID: alive\r\n\r\n")
        assert b"ActionID: alive" in _banner(clients[0], 5.0) + _banner(clients[0], 0.5)
    finally:
        for sock in clients:
            sock.close()
        process.terminate()
        process.wait(10)
