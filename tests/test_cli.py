"""The ``ami-server`` command as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


from ami_server.testing import AMIClient

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, "-m", "ami_server.cli"]


def run(*args, timeout=30):
    # Run outside the checkout so that the installed package is what runs.
    return subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT.parent)


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("ami-server ")


def test_check_config_on_the_sample():
    result = run("--check-config", "--config", str(ROOT / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_reports_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[users.ops]\nsecret = "x"\nread = "system,sytem"\n')
    result = run("--check-config", "--config", str(bad))
    assert result.returncode == 1
    assert f"{bad}: users.ops.read: unknown class: 'sytem'" in result.stderr


def test_check_config_reports_plugin_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[plugins]\ndisable = ["login"]\n')
    result = run("--check-config", "--config", str(bad))
    assert result.returncode == 1 and "'login' is essential" in result.stderr


def test_runs_in_the_foreground_and_stops_on_sigterm(tmp_path):
    cfg = tmp_path / "ami.toml"
    cfg.write_text('[server]\nport = 0\n[users.admin]\nsecret = "topsecret-1"\nread = "all"\nwrite = "all"\n')
    proc = subprocess.Popen(CMD + ["--config", str(cfg)], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines = []
    address = {}

    def reader():
        for line in proc.stderr:
            lines.append(line)
            if '"ServerStarted"' in line:
                address["value"] = json.loads(line)["address"]

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while "value" not in address and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert "value" in address, "".join(lines)
        host, port = address["value"].rsplit(":", 1)
        with AMIClient(host, int(port)) as client:
            assert client.login("admin", "topsecret-1")["Message"] == "Authentication accepted"
            assert client.action("Ping")["Ping"] == "Pong"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            client.read_until_closed()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    thread.join(5)
    text = "".join(lines)
    records = [json.loads(line) for line in lines]
    events = [r["event"] for r in records]
    assert "SessionOpened" in events and "SuccessfulAuth" in events and "ServerStopped" in events
    assert any(r["event"] == "SessionClosed" and r["reason"] == "shutdown" for r in records)
    assert "topsecret-1" not in text


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    cfg = tmp_path / "ami.toml"
    cfg.write_text(f"[server]\nport = {port}\n")
    try:
        result = run("--config", str(cfg))
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_hash_secret_reads_stdin_and_the_hash_logs_in(tmp_path):
    result = subprocess.run(
        CMD + ["hash-secret", "--cost", "10"], input="pipe-secret\n", capture_output=True, text=True,
        timeout=60, cwd=ROOT.parent,
    )
    assert result.returncode == 0, result.stderr
    encoded = result.stdout.strip()
    assert encoded.startswith("$scrypt$ln=10,r=8,p=1$") and "pipe-secret" not in result.stdout
    from ami_server.testing import make_config, running_server

    cfg = make_config({"users": {"ops": {"secret_hash": encoded, "read": "all", "write": "all"}}})
    with running_server(cfg) as srv, srv.client() as client:
        assert client.login("ops", "pipe-secret")["Message"] == "Authentication accepted"


def test_hash_secret_refuses_an_empty_secret():
    result = subprocess.run(CMD + ["hash-secret"], input="\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "must not be empty" in result.stderr and result.stdout == ""
