"""Operations against a real ``ami-server`` process: /metrics under load, /healthz at shutdown,
log rotation with SIGHUP, --check-config's warnings, the shipped systemd unit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Tuple

import pytest

from ami_server.testing import AMIClient

from helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
login_failure_delay = 0

[logging]
file = "audit.log"
format = "json"

[http]
port = 0

[users.admin]
secret = "adminpass-long"
read = "all"
write = "all"
"""


def start(config: Path, cwd: Path, timeout: float = 30.0) -> Tuple[subprocess.Popen, int, int]:
    """Run ``python -m ami_server`` from ``cwd``; return it, its AMI port and its HTTP port."""
    process = subprocess.Popen([sys.executable, "-m", "ami_server", "--config", str(config)], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = config.parent / "audit.log"
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "server did not start"
        assert process.poll() is None, process.stderr.read()
        if log.exists():
            for line in log.read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "ServerStarted":
                    port = int(record["address"].rsplit(":", 1)[1])
                    return process, port, int(record["http"].rsplit(":", 1)[1])
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise


def get(port: int, path: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> Dict[str, float]:
    """``name{labels}`` -> value for every sample line of an exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@pytest.fixture
def server_dir(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "etc" / "config.toml"
    config.write_text(CONFIG)
    return config


def test_metrics_scraped_during_load_match_what_the_clients_did(server_dir):
    process, port, http = start(server_dir, server_dir.parent.parent / "elsewhere")
    clients, pings, events = 4, 50, 10
    scrapes = []
    stop_scraping = threading.Event()

    def scrape():
        while not stop_scraping.is_set():
            scrapes.append(get(http, "/metrics")[0])
            time.sleep(0.02)

    scraper = threading.Thread(target=scrape)
    try:
        scraper.start()

        def work(n):
            with AMIClient("127.0.0.1", port) as client:
                assert client.login("admin", "adminpass-long", events="off")["Response"] == "Success"
                for i in range(pings):
                    assert client.action("Ping", {"ActionID": f"{n}-{i}"})["Ping"] == "Pong"
                for i in range(events):
                    client.action("UserEvent", {"UserEvent": "Load"})
            with AMIClient("127.0.0.1", port) as client:
                client.send("Login", {"Username": "admin", "Secret": "wrong"})
                client.read_until_closed(timeout=5)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        # A listener with all events on: receives the next UserEvents.
        with AMIClient("127.0.0.1", port) as listener, AMIClient("127.0.0.1", port) as sender:
            listener.login("admin", "adminpass-long", events="user")
            sender.login("admin", "adminpass-long", events="off")
            for _ in range(3):
                sender.action("UserEvent", {"UserEvent": "Seen"})
                listener.wait_event("UserEvent")
            stop_scraping.set()
            scraper.join(10)
            status, text = get(http, "/metrics")
    finally:
        stop_scraping.set()
        stop(process)
    assert status == 200 and scrapes and set(scrapes) == {200}
    found = samples(text)
    assert found['ami_logins_total{outcome="success",reason="accepted"}'] == clients + 2
    assert found['ami_logins_total{outcome="failure",reason="invalid_password"}'] == clients
    assert found['ami_actions_total{action="Ping",result="Success"}'] == clients * pings
    assert found['ami_action_duration_seconds_count{action="Ping"}'] == clients * pings
    assert found['ami_actions_total{action="UserEvent",result="Success"}'] == clients * events + 3
    assert found['ami_events_published_total{class="user"}'] == clients * events + 3
    assert found['ami_events_delivered_total{class="user"}'] == 3
    assert found['ami_sessions{state="authenticated",transport="TCP"}'] == 2
    assert found["ami_sessions_accepted_total"] == 2 * clients + 2
    assert found['ami_auth_backend_duration_seconds_count{backend="config"}'] == 2 * clients + 2
    assert found["ami_events_dropped_total"] == 0
    assert "process_resident_memory_bytes" in found


def test_healthz_turns_503_while_the_server_drains(server_dir):
    process, port, http = start(server_dir, server_dir.parent)
    try:
        status, body = get(http, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        with AMIClient("127.0.0.1", port) as client:
            client.login("admin", "adminpass-long", events="off")
            client.send("WaitEvent", {"Timeout": "30"})  # keeps the drain busy for its 2 s
            time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            seen = []

            def unavailable():
                seen.append(get(http, "/healthz"))
                return seen[-1][0] == 503

            wait_for(unavailable, "/healthz answering 503", timeout=2.0)
            assert json.loads(seen[-1][1])["reasons"] == ["shutting down"]
        assert process.wait(10) == 0
    finally:
        stop(process)


def test_log_rotation_with_sighup_starts_a_new_file_beside_the_config(server_dir):
    process, port, _ = start(server_dir, server_dir.parent.parent / "elsewhere")
    log = server_dir.parent / "audit.log"
    try:
        assert not (server_dir.parent.parent / "elsewhere" / "audit.log").exists()
        with AMIClient("127.0.0.1", port) as client:
            client.login("admin", "adminpass-long", events="off")
        wait_for(lambda: "LoginSucceeded" in log.read_text(), "the first login logged")
        log.rename(log.with_name("audit.log.1"))  # what logrotate does without copytruncate
        process.send_signal(signal.SIGHUP)
        wait_for(log.exists, "a new audit.log")
        with AMIClient("127.0.0.1", port) as client:
            client.login("admin", "adminpass-long", events="off")
        wait_for(lambda: "LoginSucceeded" in log.read_text(), "the second login in the new file")
        assert log.with_name("audit.log.1").read_text().count("LoginSucceeded") == 1
        assert '"event":"LogReopened"' in log.read_text()
    finally:
        stop(process)


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_the_documented_logrotate_snippet_rotates_a_running_server(server_dir, tmp_path):
    process, port, _ = start(server_dir, server_dir.parent)
    log = server_dir.parent / "audit.log"
    try:
        snippet = (ROOT / "contrib" / "logrotate" / "ami-server").read_text()
        snippet = snippet.replace("/var/log/ami-server/*.log", str(log))
        snippet = re.sub(r"\n\s*create .*", "", snippet)
        snippet = snippet.replace("systemctl kill --signal=HUP ami-server.service", f"kill -HUP {process.pid}")
        (tmp_path / "rotate.conf").write_text(snippet)
        wait_for(lambda: log.stat().st_size > 0, "log lines")
        done = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"),
                               str(tmp_path / "rotate.conf")], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        with AMIClient("127.0.0.1", port) as client:
            client.login("admin", "adminpass-long", events="off")
        wait_for(lambda: log.exists() and "LoginSucceeded" in log.read_text(), "the login in the new file")
        assert log.with_name("audit.log.1").exists()
    finally:
        stop(process)


def check(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ami_server", "--check-config", *extra, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_check_config_refuses_a_host_that_does_not_resolve(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[server]\nhost = "127.0.0.300"\n[users.a]\nsecret = "long-secret-a"\n')
    done = check(config)
    assert done.returncode == 1
    assert "server.host: cannot resolve '127.0.0.300'" in done.stderr


def test_check_config_warns_about_unknown_plugin_names_and_strict_fails(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 0\n[plugins]\ndisable = ["nonexistent"]\nrequired = []\n'
                      '[plugins.wether]\ncity = "Paris"\n[users.a]\nsecret = "long-secret-a"\n')
    done = check(config)
    assert done.returncode == 0, done.stderr
    assert "warning: " in done.stderr
    assert "plugins.wether: a [plugins.wether] table for a plugin that is not installed" in done.stderr
    assert "plugins.disable: disables 'nonexistent', which is not installed" in done.stderr
    assert "OK" in done.stdout
    assert check(config, "--strict").returncode == 1


def test_check_config_warns_about_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = tmp_path / "config.toml"
        config.write_text(f'[server]\nport = {taken.getsockname()[1]}\n[users.a]\nsecret = "long-secret-a"\n')
        done = check(config)
    assert done.returncode == 0
    assert re.search(r"server\.port: cannot listen on 127\.0\.0\.1:\d+ right now \(in use\)", done.stderr)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_shipped_systemd_unit_verifies(tmp_path):
    unit = (ROOT / "contrib" / "systemd" / "ami-server.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # The unit names the documented venv; point it at this one so that verify finds the binary.
    here = Path(sys.executable).parent / "ami-server"
    assert here.exists()
    target = tmp_path / "ami-server.service"
    target.write_text(unit.replace("/opt/ami-server/venv/bin/ami-server", str(here)))
    done = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ami-server.service" not in done.stderr, done.stderr  # no warning about the unit itself


def test_the_logrotate_snippet_in_the_docs_is_the_shipped_one():
    docs = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"<!-- file: logrotate -->\n```\n(?P<body>.*?)^```$", docs, re.S | re.M)
    assert block is not None
    assert block["body"] == (ROOT / "contrib" / "logrotate" / "ami-server").read_text()
