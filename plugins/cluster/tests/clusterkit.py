"""Real redis-server and ami-server processes for the cluster tests, each on a free loopback port.

Every wait is bounded; every process started here is stopped by its own
handle (never by name).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from ami_server.testing import AMIClient

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
PASSWORD = "redis-S3cret-never-logged"
USERS = """
[users.admin]
secret = "adminpass"
read = "all"
write = "all"

[users.solo]
secret = "solopass"
read = "all"
write = "all"
allow_multiple_login = false
"""


def need_redis() -> str:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (CI installs Debian's redis-server)")
    pytest.importorskip("redis")
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, what: str, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


class RedisProcess:
    """A redis-server on a free port with a password and an fsync-always append-only file."""

    def __init__(self, directory: Path, password: str = PASSWORD) -> None:
        self.binary = need_redis()
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "RedisProcess":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--requirepass", self.password,
             "--protected-mode", "no", "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, "redis-server to answer PING")
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)

    def ping(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "redis-server exited"
        try:
            return bool(self.client().ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class NodeProcess:
    """``ami-server --config`` with ``[plugins.cluster]`` as a real process."""

    def __init__(self, directory: Path, name: str, redis: RedisProcess, extra: str = "", server: str = "") -> None:
        self.directory = directory
        self.name = name
        self.redis = redis
        self.log_file = directory / f"{name}.log"
        self.config = directory / f"{name}.toml"
        self.extra = extra
        self.server = server
        self.process: Optional[subprocess.Popen] = None
        self.port = 0

    def write_config(self) -> None:
        self.config.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
login_failure_delay = 0

{self.server}

[logging]
file = "{self.log_file}"
format = "json"
level = "info"

[plugins.cluster]
enabled = true
redis_url = "{self.redis.url}"
node = "{self.name}"
password_env = "AMI_TEST_REDIS_PASSWORD"
session_ttl = 3
request_timeout = 2
{self.extra}
{USERS}
""")

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        self.write_config()
        if self.log_file.exists():
            self.log_file.unlink()
        env = dict(os.environ, AMI_TEST_REDIS_PASSWORD=self.redis.password)
        self.process = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=open(self.directory / f"{self.name}.err", "w"),
                                        env=env)

        def started() -> Optional[int]:
            assert self.process is not None and self.process.poll() is None, (self.directory / f"{self.name}.err").read_text()
            found = self.log_file.exists() and re.search(r'"address": ?"127\.0\.0\.1:(\d+)"', self.log_file.read_text())
            return int(found.group(1)) if found else None

        self.port = wait_for(started, f"node {self.name} to start", timeout, 0.05)
        wait_for(lambda: "ClusterRedisUp" in self.log_file.read_text() and self.log_file.read_text().count(
            "ClusterRedisUp") >= 2, f"node {self.name} to reach Redis", timeout, 0.05)
        return self

    def client(self, timeout: float = 10.0) -> AMIClient:
        return AMIClient("127.0.0.1", self.port, timeout=timeout)

    def records(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        out = []
        for line in self.log_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if name is None or record.get("event") == name:
                out.append(record)
        return out

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def cluster(tmp_path: Path, count: int = 3, extra: str = "", server: str = "") -> Iterator[List[NodeProcess]]:
    """A redis-server and ``count`` nodes, all stopped afterwards."""
    redis_proc = RedisProcess(tmp_path / "redis").start()
    nodes = [NodeProcess(tmp_path, f"node{chr(ord('a') + i)}", redis_proc, extra, server) for i in range(count)]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        redis_proc.stop()


def user_events(client: AMIClient, count: int, timeout: float = 20.0) -> List[Any]:
    """Read ``count`` UserEvents (skipping other events), each read bounded."""
    found = [block for block in client.events if block.get("Event") == "UserEvent"][:count]
    client.events = [block for block in client.events if block not in found]
    deadline = time.monotonic() + timeout
    while len(found) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(found)} of {count} UserEvents arrived"
        block = client.read_block(timeout=remaining)
        if block.get("Event") == "UserEvent":
            found.append(block)
    return found
