"""The fail2ban filter of docs/operations.md, run over the audit file of a real ami-server process.

The filter is always checked with a stand-in for fail2ban's ``<HOST>``; when
fail2ban's own ``fail2ban-regex`` is available (``.ci/run`` unpacks Debian's
package into ``.ci/tools/fail2ban``) it is run as well.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ami_server.testing import AMIClient

from helpers import process_config, start_server_process

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
FILTER_BLOCK = re.compile(r"<!-- file: ami-server.conf -->\n```ini\n(?P<body>.*?)^```$", re.S | re.M)
# A stand-in for fail2ban's <HOST>: an optional IPv4-mapped prefix, then an address or name.
HOST = r"(?:::f{4,6}:)?(?P<host>[\w\-.^_:]*\w)"


def doc_filter() -> configparser.ConfigParser:
    match = FILTER_BLOCK.search(OPERATIONS.read_text(encoding="utf-8"))
    assert match, "docs/operations.md lost its ami-server.conf filter block"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(match["body"])
    return parser


def fail2ban_regex():
    """(command, environment) for a fail2ban-regex that runs here, or None."""
    unpacked = ROOT / ".ci" / "tools" / "fail2ban"
    script = unpacked / "usr" / "bin" / "fail2ban-regex"
    if script.exists():
        env = dict(os.environ, PYTHONPATH=str(unpacked / "usr" / "lib" / "python3" / "dist-packages"))
        return [sys.executable, str(script)], env
    found = shutil.which("fail2ban-regex")
    return ([found], dict(os.environ)) if found else None


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory):
    """Failed and successful logins against a real ami-server process writing its audit file."""
    directory = tmp_path_factory.mktemp("fail2ban")
    log_file = directory / "audit.log"
    config = directory / "config.toml"
    config.write_text(
        process_config(log_file)
        + """
[users.admin]
secret = "admin-secret-1"
read = "all"
write = "all"

[users.branch]
secret = "branch-secret-1"
permit = ["192.0.2.0/24"]
"""
    )
    process, port = start_server_process(config, log_file)
    try:
        for username, secret in [("admin", "wrong"), ("nobody", "x-secret"), ("branch", "branch-secret-1")]:
            with AMIClient("127.0.0.1", port) as client:
                client.send("Login", {"Username": username, "Secret": secret})
                client.read_until_closed()
        with AMIClient("127.0.0.1", port) as client:
            assert client.login("admin", "admin-secret-1")["Message"] == "Authentication accepted"
            client.action("Logoff")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    text = log_file.read_text()
    assert text.count('"login":"LoginFailed"') == 3  # one outcome record per failed login
    return log_file


def test_the_documented_filter_matches_exactly_the_failed_logins(audit_log):
    definition = doc_filter()["Definition"]
    failregex = definition["failregex"].strip()
    pattern = re.compile(failregex.replace("<HOST>", HOST))
    lines = audit_log.read_text().splitlines()
    matched = [line for line in lines if pattern.search(line)]
    assert len(matched) == 3
    assert all('"login":"LoginFailed"' in line for line in matched)
    assert {json.loads(line)["event"] for line in matched} == {"InvalidPassword", "InvalidAccountID", "FailedACL"}
    assert {pattern.search(line)["host"] for line in matched} == {"127.0.0.1"}
    # The date pattern (fail2ban doubles % in config files) finds each line's timestamp.
    date = definition["datepattern"].strip().replace("%%", "%")
    assert date.startswith('"timestamp": ?"%Y-%m-%dT%H:%M:%S')
    assert all(re.search(r'"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"', line) for line in lines)
    # Lines written before records became compact JSON match too.
    old = ('{"audit": true, "remote_ip": "127.0.0.1", "tls": false, "reason": "invalid_password", '
           '"event": "LoginFailed", "level": "info", "timestamp": "2026-11-26T13:50:00.216+00:00"}')
    assert pattern.search(old)["host"] == "127.0.0.1"
    # No secret reached the file the filter reads.
    text = audit_log.read_text()
    assert "admin-secret-1" not in text and "branch-secret-1" not in text and "x-secret" not in text


def test_fail2ban_itself_accepts_the_filter(audit_log, tmp_path):
    tool = fail2ban_regex()
    if tool is None:
        pytest.skip("fail2ban-regex is not available on this machine")
    command, env = tool
    match = FILTER_BLOCK.search(OPERATIONS.read_text(encoding="utf-8"))
    filter_file = tmp_path / "ami-server.conf"
    filter_file.write_text(match["body"])
    result = subprocess.run(
        command + [str(audit_log), str(filter_file)], capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", result.stdout)
    assert lines, result.stdout
    assert int(lines.group(3)) == 3, result.stdout
    # Every line's date came from the documented datepattern.
    hits = re.search(r"\[(\d+)\] \"timestamp\"", result.stdout)
    assert hits and int(hits.group(1)) == int(lines.group(1)), result.stdout
    # The address fail2ban would ban, once per failed login.
    banned = subprocess.run(
        command + ["--out", "ip", str(audit_log), str(filter_file)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert banned.stdout.split() == ["127.0.0.1"] * 3, banned.stdout + banned.stderr
