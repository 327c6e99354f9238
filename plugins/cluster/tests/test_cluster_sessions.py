"""Cluster-wide sessions between real processes: single login, node death, SessionList / SessionKick, secrets."""

from __future__ import annotations

import threading
import time

from clusterkit import PASSWORD, cluster, wait_for

from ami_server.testing import AMIClient


def _try_login(node, results, index, barrier):
    client = node.client()
    try:
        barrier.wait(10)
        reply = client.login("solo", "solopass", events="off")
        results[index] = (reply.get("Response"), reply.get("Message"), client)
    except Exception as exc:  # noqa: BLE001 - recorded, asserted by the test
        results[index] = ("error", repr(exc), client)


def test_single_login_holds_across_three_nodes_under_50_parallel_logins(tmp_path):
    with cluster(tmp_path, 3) as nodes:
        results = [None] * 50
        barrier = threading.Barrier(50)
        threads = [threading.Thread(target=_try_login, args=(nodes[i % 3], results, i, barrier)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        outcomes = [(r[0], r[1]) for r in results]
        winners = [r for r in results if r[0] == "Success"]
        assert len(winners) == 1, outcomes
        assert all(o == ("Error", "Login Already In Use") for o in outcomes if o[0] != "Success"), outcomes
        winner = winners[0][2]
        assert winner.action("Ping", {"ActionID": "w"})["ActionID"] == "w"
        for _, _, client in results:
            client.close()
        # The winner's connection closed: its node releases the key at once (no TTL wait).
        wait_for(lambda: _admitted(nodes[1]), "the released login", timeout=2.5, interval=0.1)


def _admitted(node) -> bool:
    with node.client() as client:
        return client.login("solo", "solopass").get("Response") == "Success"


def test_a_killed_nodes_users_log_in_elsewhere_after_the_ttl(tmp_path):
    with cluster(tmp_path, 2) as (a, b):
        holder = a.client()
        assert holder.login("solo", "solopass")["Response"] == "Success"
        with b.client() as refused:
            assert refused.login("solo", "solopass")["Message"] == "Login Already In Use"
        killed_at = time.monotonic()
        a.kill()
        holder.close()

        wait_for(lambda: _admitted(b), "the dead node's key to expire", timeout=3 + 5, interval=0.25)
        assert time.monotonic() - killed_at <= 3 + 5


def test_session_list_and_kick_across_nodes(tmp_path):
    with cluster(tmp_path, 3) as nodes:
        clients = []
        for node in nodes:
            client = node.client()
            client.login("admin", "adminpass", events="off")
            clients.append(client)
        admin = clients[0]
        admin.send("SessionList", {"ActionID": "l1"})
        start = admin.read_response()
        assert start["Response"] == "Success" and start["EventList"] == "start" and start["ActionID"] == "l1"
        entries = []
        while True:
            block = admin.read_block()
            if block["Event"] == "SessionListComplete":
                break
            entries.append(block)
        assert block["ListItems"] == str(len(entries))
        by_node = {}
        for entry in entries:
            assert entry.lines[0] == ("Event", "SessionEntry") and entry.lines[1][0] == "ActionID"
            assert entry.lines[2][0] == "SessionID" and entry.lines[3][0] == "Node"
            by_node.setdefault(entry["Node"], []).append(entry)
        assert set(by_node) == {n.name for n in nodes}
        assert all(len(v) == 1 and v[0]["Username"] == "admin" for v in by_node.values())
        # Kick the session on node c from node a.
        target = by_node[nodes[2].name][0]["SessionID"]
        assert admin.action("SessionKick", {"SessionID": target})["Message"] == "Session kicked"
        clients[2].read_until_closed(timeout=5)
        assert admin.action("SessionKick", {"SessionID": target})["Message"] == "No such session"
        revoked = wait_for(lambda: nodes[2].records("SessionRevoked"), "the revocation on node c")
        assert revoked[0]["session"] == target
        for client in clients:
            client.close()


def test_redis_password_never_logged(tmp_path):
    with cluster(tmp_path, 2) as (a, b):
        with a.client() as client:
            client.login("admin", "adminpass")
            client.action("UserEvent", {"UserEvent": "x"})
        a.redis.kill()
        wait_for(lambda: a.records("ClusterRedisDown"), "the outage record")
        a.redis.start()
        wait_for(lambda: len(a.records("ClusterRedisUp")) >= 3, "the reconnection")
    for path in tmp_path.iterdir():
        if path.suffix in (".log", ".err"):
            assert PASSWORD not in path.read_text(errors="replace"), path


def test_bad_cluster_config_names_the_key(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "bad.toml"
    config.write_text(f"""
[server]
port = 0
[plugins.cluster]
enabled = true
redis_url = "redis://:{PASSWORD}@127.0.0.1:1/0"
""")
    result = subprocess.run([sys.executable, "-m", "ami_server.cli", "--check-config", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "plugins.cluster.redis_url" in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
