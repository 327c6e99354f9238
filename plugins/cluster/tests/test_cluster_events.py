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


def _reader(client, count, arrivals, timeout=60.0):
    """Collect ``count`` UserEvents with their arrival times (a thread per subscriber)."""
    def run():
        try:
            deadline = time.monotonic() + timeout
            for _ in range(count):
                event = user_events(client, 1, deadline - time.monotonic())[0]
                arrivals.append((time.monotonic(), event["From"], int(event["N"])))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion on arrivals
            arrivals.append((time.monotonic(), "error", repr(exc)))
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_redis_killed_and_restarted_during_a_flood(tmp_path):
    """No loss within retention, nothing twice, and local delivery never waits for Redis."""
    with cluster(tmp_path, 2) as (a, b):
        redis_proc = a.redis
        per_publisher = 400
        local_sub, remote_sub = a.client(), b.client()
        for client in (local_sub, remote_sub):
            client.login("admin", "adminpass", events="user")
        pubs = []
        for node in (a, b):
            client = node.client()
            client.login("admin", "adminpass", events="off")
            pubs.append(client)
        local_arrivals, remote_arrivals = [], []
        readers = [_reader(local_sub, 2 * per_publisher, local_arrivals),
                   _reader(remote_sub, 2 * per_publisher, remote_arrivals)]
        outage = {}

        def flood(client, name):
            for n in range(per_publisher):
                client.send("UserEvent", {"UserEvent": "Tick", "From": name, "N": str(n)})
                time.sleep(0.005)

        threads = [threading.Thread(target=flood, args=(c, n.name)) for c, n in zip(pubs, (a, b))]
        for thread in threads:
            thread.start()
        time.sleep(0.6)
        outage["start"] = time.monotonic()
        redis_proc.kill()
        time.sleep(1.5)
        redis_proc.start()
        outage["end"] = time.monotonic()
        for thread in threads + readers:
            thread.join(90)
        for arrivals in (local_arrivals, remote_arrivals):
            assert not [x for x in arrivals if x[1] == "error"], arrivals[-1]
            by_publisher = defaultdict(list)
            for _, name, n in arrivals:
                by_publisher[name].append(n)
            assert dict(by_publisher) == {a.name: list(range(per_publisher)), b.name: list(range(per_publisher))}
        # Node A's own publications reached its local subscriber while Redis was down: no pause.
        own = [t for t, name, _ in local_arrivals if name == a.name]
        during = [t for t in own if outage["start"] < t < outage["end"]]
        assert len(during) > 50, "local delivery paused while Redis was down"
        gaps = [later - earlier for earlier, later in zip(own, own[1:])]
        assert max(gaps) < 0.5, f"local delivery paused for {max(gaps):.2f} s"
        assert a.records("ClusterRedisDown") and a.records("ClusterRedisUp")
        for client in [local_sub, remote_sub] + pubs:
            client.close()


def test_events_beyond_retention_are_counted_as_lost(tmp_path):
    """A node that stops reading for longer than the stream keeps events hears how many it lost."""
    import signal

    with cluster(tmp_path, 2, extra="stream_maxlen = 100") as (a, b):
        watcher = b.client()
        watcher.login("admin", "adminpass", events="user,system")
        pub = a.client()
        pub.login("admin", "adminpass", events="off")
        pub.action("UserEvent", {"UserEvent": "Tick", "From": "a", "N": "0"})
        user_events(watcher, 1)
        b.process.send_signal(signal.SIGSTOP)
        try:
            total = 1500
            for n in range(1, total + 1):  # one at a time: mostly one stream entry each
                pub.action("UserEvent", {"UserEvent": "Tick", "From": "a", "N": str(n)})
            wait_for(lambda: a.redis.client().xlen("ami:cluster:events:" + a.name) < 600, "the stream to be trimmed")
        finally:
            b.process.send_signal(signal.SIGCONT)
        # Every event is either delivered (once, in order) or counted as lost.
        numbers, lost = [], 0
        deadline = time.monotonic() + 30
        while len(numbers) + lost < total:
            block = watcher.read_block(timeout=max(0.1, deadline - time.monotonic()))
            if block.get("Event") == "UserEvent":
                numbers.append(int(block["N"]))
            elif block.get("Event") == "ClusterEventsLost":
                assert block["Node"] == a.name
                lost += int(block["Count"])
        assert lost > 0 and len(numbers) + lost == total
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers) and numbers[-1] == total
        wait_for(lambda: sum(r["count"] for r in b.records("ClusterEventsLost")) == lost, "the audit records")
        watcher.close()
        pub.close()


def test_publications_beyond_the_bound_are_dropped_and_audited(tmp_path):
    with cluster(tmp_path, 2, extra="publish_queue_limit = 50") as (a, b):
        watcher = b.client()
        watcher.login("admin", "adminpass", events="user")
        pub = a.client()
        pub.login("admin", "adminpass", events="off")
        a.redis.kill()
        wait_for(lambda: a.records("ClusterRedisDown"), "node a to notice")
        for n in range(200):  # answered at once: local service does not wait for Redis
            assert pub.action("UserEvent", {"UserEvent": "Tick", "From": "a", "N": str(n)}, timeout=2)[
                "Response"] == "Success"
        a.redis.start()
        dropped = wait_for(lambda: a.records("ClusterEventsDropped"), "the drop audit record")
        count = sum(r["count"] for r in dropped)
        assert count > 0
        received = user_events(watcher, 200 - count, timeout=20)
        assert [int(e["N"]) for e in received] == list(range(200 - count))
        watcher.close()
        pub.close()


def test_each_node_writes_its_own_stream_and_a_node_that_joins_is_heard(tmp_path):
    """Per-node streams: a node found after the readers started is read from when they started."""
    with cluster(tmp_path, 2) as (a, b):
        watchers = []
        for node in (a, b):
            client = node.client()
            client.login("admin", "adminpass", events="user")
            watchers.append(client)
        late = NodeProcess(tmp_path, "nodec", a.redis).start()
        try:
            pub = late.client()
            pub.login("admin", "adminpass", events="off")
            for n in range(20):  # at once: the others have not looked the new node up yet
                pub.send("UserEvent", {"UserEvent": "Tick", "From": late.name, "N": str(n)})
            for watcher in watchers:
                assert [int(e["N"]) for e in user_events(watcher, 20)] == list(range(20))
            redis_client = a.redis.client()
            keys = {k.decode() for k in redis_client.keys("ami:cluster:*")}
            assert "ami:cluster:events:nodec" in keys and "ami:cluster:events" not in keys
            members = {m.decode() for m in redis_client.zrange("ami:cluster:streams", 0, -1)}
            assert members == {a.name, b.name, late.name}
            pub.close()
        finally:
            late.stop()
        for watcher in watchers:
            watcher.close()
