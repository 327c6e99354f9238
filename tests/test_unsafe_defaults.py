"""Start-up refuses the sample's secrets off loopback and warns about plaintext logins there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ami_server.config import (
    ConfigError,
    check_sample_secrets,
    is_loopback_host,
    parse_config,
    plaintext_exposure_warnings,
)

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, "-m", "ami_server.cli"]


def run(*args, timeout=30):
    return subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT.parent)


def sample_on(tmp_path: Path, host: str) -> Path:
    """The shipped sample config.toml, listening on ``host`` and any free port."""
    text = (ROOT / "config.toml").read_text()
    assert 'host = "127.0.0.1"' in text and "port = 5038" in text
    path = tmp_path / "config.toml"
    path.write_text(text.replace('host = "127.0.0.1"', f'host = "{host}"').replace("port = 5038", "port = 0"))
    return path


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LocalHost", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False),
    ("192.0.2.7", False), ("2001:db8::1", False), ("pbx.example.org", False),
])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


def test_the_sample_on_loopback_is_accepted_without_warning():
    result = run("--check-config", "--config", str(ROOT / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_sample_off_loopback_is_refused_naming_file_key_and_remedy(tmp_path):
    config = sample_on(tmp_path, "0.0.0.0")
    expected = (
        f"ami-server: configuration error: {config}: users.admin.secret: is the sample configuration's "
        "placeholder, and server.host = '0.0.0.0' is not a loopback address; refusing to start. Set a "
        "secret of your own, or run 'ami-server hash-secret' and put its output in users.admin.secret_hash "
        "instead of secret\n"
    )
    checked = run("--check-config", "--config", str(config))
    assert (checked.returncode, checked.stderr) == (1, expected)
    process = subprocess.Popen(CMD + ["--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    try:
        _, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)
        pytest.fail("the server started with the sample's secret on 0.0.0.0")
    assert (process.returncode, stderr) == (1, expected)
    assert "change-me" not in stderr


def config(server=None, users=None, auth=None):
    data = {"server": server or {}, "users": users or {}}
    if auth:
        data["auth"] = auth
    return parse_config(data, "ami.toml")


def test_every_reachable_listener_and_every_sample_secret_counts():
    placeholder = {"dash": {"secret": "dashboard-secret"}}
    with pytest.raises(ConfigError, match=r"^ami.toml: users.dash.secret: .*server.tls.host = '::'"):
        check_sample_secrets(config(
            {"host": "127.0.0.1", "tls": {"host": "::", "certificate": "c.pem", "key": "k.pem"}}, placeholder,
        ))
    check_sample_secrets(config({"host": "::1"}, placeholder))
    check_sample_secrets(config({"host": "0.0.0.0"}, {"old": {"secret": "change-me", "enabled": False}}))
    check_sample_secrets(config({"host": "0.0.0.0"}, {"ops": {"secret": "a-real-one"}}))


def test_plaintext_exposure_warnings_name_who_can_log_in_in_plaintext():
    users = {
        "ops": {"secret": "s1"},
        "bot": {"secret": "s2", "require_tls_for_plaintext": True},
        "old": {"secret": "s3", "enabled": False},
    }
    [warning] = plaintext_exposure_warnings(config({"host": "0.0.0.0"}, users))
    assert warning.startswith("ami.toml: server.host: '0.0.0.0' is not a loopback address and that listener "
                              "has no TLS: users ops can log in with a plaintext Secret")
    assert "require_tls_for_plaintext = true" in warning and "s1" not in warning
    strict = {"host": "0.0.0.0", "require_tls_for_plaintext": True}
    assert plaintext_exposure_warnings(config(strict, users)) == []
    [warning] = plaintext_exposure_warnings(config(strict, {**users, "legacy": {
        "secret": "s4", "require_tls_for_plaintext": False}}))
    assert "users legacy can" in warning
    [warning] = plaintext_exposure_warnings(config({"host": "0.0.0.0"}, auth={"backends": ["config", "ldap"]}))
    assert "users of the backends ldap" in warning
    assert plaintext_exposure_warnings(config({"host": "127.0.0.1"}, users)) == []


def test_plaintext_logins_off_loopback_are_warned_at_check_and_start_up(tmp_path):
    log_file = tmp_path / "ami.log"
    path = tmp_path / "ami.toml"
    path.write_text(f"""
[server]
host = "0.0.0.0"
port = 0

[logging]
file = "{log_file}"
format = "json"

[users.ops]
secret = "ops-real-secret"
read = "all"
""")
    checked = run("--check-config", "--config", str(path))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.startswith(f"ami-server: warning: {path}: server.host: '0.0.0.0' is not a loopback")
    assert "plaintext Secret" in checked.stderr and "ops-real-secret" not in checked.stderr
    process = subprocess.Popen(CMD + ["--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        records = []
        while not any(r.get("event") == "ServerStarted" for r in records):
            assert time.monotonic() < deadline, "server did not start"
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
            if log_file.exists():
                records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    [warning] = [r for r in records if r.get("event") == "PlaintextLoginsExposed"]
    assert warning["level"] == "warning" and "plaintext Secret" in warning["detail"]
    assert "ops-real-secret" not in log_file.read_text()
