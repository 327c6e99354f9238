"""``ami-server --workers 2`` on one port, joined by the cluster plugin through a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest

from clusterkit import PASSWORD, USERS, RedisProcess, free_port, user_events, wait_for

from ami_server.testing import AMIClient

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")


class Workers:
    """The supervisor process and its log (shared by the supervisor and every worker)."""

    def __init__(self, tmp_path: Path, redis_proc: RedisProcess, count: int = 2) -> None:
        self.port = free_port()
        self.log = tmp_path / "workers.log"
        self.config = tmp_path / "workers.toml"
        self.config.write_text(f"""
[server]
host = "127.0.0.1"
port = {self.port}
reuse_port = true
login_failure_delay = 0

[logging]
file = "{self.log}"
format = "json"

[plugins.cluster]
enabled = true
redis_url = "{redis_proc.url}"
node = "w"
password_env = "AMI_TEST_REDIS_PASSWORD"
session_ttl = 3
request_timeout = 2
{USERS}
""")
        env = dict(os.environ, AMI_TEST_REDIS_PASSWORD=redis_proc.password)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ami_server.cli", "--workers", str(count), "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "workers.err", "w"), env=env, cwd=tmp_path,
        )
        self.count = count

    def records(self, name: str) -> List[Dict[str, Any]]:
        out = []
        if not self.log.exists():
            return out
        for line in self.log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
        return out

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, "the supervisor exited"
            up = Counter((r.get("worker"), r.get("link")) for r in self.records("ClusterRedisUp"))
            return all(up[(i, link)] >= 1 for i in range(self.count) for link in ("writer", "reader"))

        wait_for(ready, "every worker to reach Redis", timeout=40, interval=0.05)

    def client(self) -> AMIClient:
        return AMIClient("127.0.0.1", self.port, timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert self.process.wait(30) == 0
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait(10)


@pytest.fixture
def workers(tmp_path):
    redis_proc = RedisProcess(tmp_path / "redis").start()
    group = Workers(tmp_path, redis_proc)
    try:
        group.wait_ready()
        yield group
    finally:
        group.stop()
        redis_proc.stop()
    for path in tmp_path.iterdir():
        if path.suffix in (".log", ".err"):
            assert PASSWORD not in path.read_text(errors="replace"), path


def _node_of(client: AMIClient) -> str:
    return client.action("ClusterStatus", {})["Node"]


def test_connections_spread_and_user_events_cross_workers(workers):
    subscribers = []
    for _ in range(16):
        client = workers.client()
        assert client.login("admin", "adminpass", events="user")["Response"] == "Success"
        subscribers.append(client)
    nodes = Counter(_node_of(client) for client in subscribers)
    assert set(nodes) == {"w-0", "w-1"}, nodes
    # One publisher per worker, each event delivered once to every subscriber, in order.
    publishers = {}
    for _ in range(40):
        client = workers.client()
        client.login("admin", "adminpass", events="off")
        node = _node_of(client)
        if node in publishers:
            client.close()
        else:
            publishers[node] = client
        if len(publishers) == 2:
            break
    assert set(publishers) == {"w-0", "w-1"}
    per_publisher = 30
    for node, client in publishers.items():
        for n in range(per_publisher):
            client.send("UserEvent", {"UserEvent": "Tick", "From": node, "N": str(n)})
    for subscriber in subscribers:
        events = user_events(subscriber, 2 * per_publisher)
        by_node: Dict[str, List[int]] = {}
        for event in events:
            by_node.setdefault(event["From"], []).append(int(event["N"]))
        assert by_node == {"w-0": list(range(per_publisher)), "w-1": list(range(per_publisher))}
        subscriber.send("Ping", {"ActionID": "end"})
        assert subscriber.read_response(timeout=10)["ActionID"] == "end"
        assert not [e for e in subscriber.events if e.get("Event") == "UserEvent"]
    for client in subscribers + list(publishers.values()):
        client.close()


def test_single_login_holds_across_workers(workers):
    count = 30
    results: List[Any] = [None] * count
    barrier = threading.Barrier(count)

    def attempt(index: int) -> None:
        client = workers.client()
        try:
            barrier.wait(10)
            reply = client.login("solo", "solopass", events="off")
            results[index] = (reply.get("Response"), reply.get("Message"), client)
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            results[index] = ("error", repr(exc), client)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    outcomes = [(r[0], r[1]) for r in results]
    assert outcomes.count(("Success", "Authentication accepted")) == 1, outcomes
    assert all(o == ("Error", "Login Already In Use") for o in outcomes if o[0] != "Success"), outcomes
    # The refusals came from both workers: the claim in Redis, not one process's memory, decided.
    # (Log lines reach the file within tens of milliseconds: wait for them, bounded.)
    refusals = wait_for(lambda: (lambda found: found if len(found) >= count - 1 else None)(
        workers.records("SessionLimit")), "the SessionLimit records", timeout=5)
    assert len(refusals) == count - 1 and {r.get("worker") for r in refusals} == {0, 1}
    for _, _, client in results:
        client.close()


def test_a_worker_is_its_own_node():
    from ami_server_cluster.config import parse_config

    assert parse_config({"node": "gw"}, environ={}, worker=3).node == "gw-3"
    assert parse_config({}, environ={}, worker=0).node == f"{socket.gethostname()}-0"
    assert parse_config({"node": "gw"}, environ={}).node == "gw"
