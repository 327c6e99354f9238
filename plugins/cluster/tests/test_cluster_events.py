"""The Redis bus between real ami-server processes: exactly once, in order per publisher, across outages."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

from clusterkit import NodeProcess, RedisProcess, cluster, user_events, wait_for


def _subscribers(nodes, per_node=2):
    clients = []
    for node in nodes:
        for _ in range(per_node):
            client = node.client()
            assert client.login("admin", "adminpass", events="user")["Response"] == "Success"
            clients.append(client)
    return clients


def test_user_events_reach_every_node_exactly_once_in_order(tmp_path):
    with cluster(tmp_path, 3) as nodes:
        subscribers = _subscribers(nodes)
        publishers = []
        for node in nodes:
            client = node.client()
            client.login("admin", "adminpass", events="off")
            publishers.append(client)
        per_publisher = 40

        def flood(client, name):
            for n in range(per_publisher):
                client.send("UserEvent", {"UserEvent": "Tick", "From": name, "N": str(n)})

        threads = [threading.Thread(target=flood, args=(c, n.name)) for c, n in zip(publishers, nodes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        total = per_publisher * len(nodes)
        for subscriber in subscribers:
            events = user_events(subscriber, total)
            seen = defaultdict(list)
            for event in events:
                seen[event["From"]].append(int(event["N"]))
            # every publisher's events, each once, in its publication order
            assert {name: seq for name, seq in seen.items()} == {
                node.name: list(range(per_publisher)) for node in nodes}
            # nothing more arrives (no echo, no repeat)
            subscriber.send("Ping", {"ActionID": "end"})
            reply = subscriber.read_response(timeout=10)
            assert reply["ActionID"] == "end"
            assert not [e for e in subscriber.events if e.get("Event") == "UserEvent"]
        for client in subscribers + publishers:
            client.close()
