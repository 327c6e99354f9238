"""Cluster benchmark: cross-node fan-out through Redis, and local fan-out with the Redis bus on and off.

    python bench/cluster.py [--events 3000] [--rounds 3] [--rate 2000] [--baseline-python PATH]

Needs ``redis-server`` on the PATH, the cluster plugin installed
(``pip install ./plugins/cluster``) and a C compiler for the local
fan-out (``bench/loadgen.c``). It starts its own redis-server and
ami-server processes on free loopback ports and prints figures; it asserts
nothing about times.

- cross-node: a publisher on node A sends UserEvents carrying their send
  time (CLOCK_MONOTONIC, shared by the processes of one machine) at a fixed
  rate; 100 subscribers, half on A and half on B, are read by one selectors
  loop here. Delivered events/s, loss, and latency p50/p99 of local (A)
  and remote (B) deliveries; the difference is what the Redis hop adds.
- local fan-out: ``loadgen fanout`` (100 subscribers, 32 in flight) against
  one node with the cluster plugin enabled (Redis up) and disabled.

``--baseline-python`` names the interpreter of another installation (an
earlier version of ami-server and the plugin): its cross-node and
bus-enabled runs are interleaved with this one's in the same rounds, so
that before and after share the machine's conditions.
"""

from __future__ import annotations

import argparse
import json
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Server, build_loadgen, free_port, login, machine, median, percentile, run_loadgen, workdir  # noqa: E402


def start_redis(directory: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    process.port = port  # type: ignore[attr-defined]
                    return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit("redis-server did not start")


def cluster_table(redis_port: int, node: str) -> str:
    return f'\n[plugins.cluster]\nenabled = true\nredis_url = "redis://127.0.0.1:{redis_port}/0"\nnode = "{node}"\n'


def connect(port: int, events: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    login(sock, events)
    sock.setblocking(False)
    return sock


def cross_node(redis_port: int, base: Path, events: int, rate: float, subscribers: int = 100,
               python: str = sys.executable) -> Dict:
    """One run: publisher on A, subscribers split over A and B."""
    nodes = []
    for name in ("a", "b"):
        directory = base / f"node-{name}-{time.monotonic_ns()}"
        directory.mkdir()
        nodes.append(Server("ami-server", directory, cluster_table(redis_port, f"bench-{name}"), python))
    try:
        time.sleep(1.0)  # both nodes reach Redis
        subs = [(connect(nodes[i % 2].port, "user"), "local" if i % 2 == 0 else "remote") for i in range(subscribers)]
        latencies: Dict[str, List[float]] = {"local": [], "remote": []}
        counts = [0] * subscribers
        selector = selectors.DefaultSelector()
        buffers = [b""] * subscribers
        for index, (sock, _) in enumerate(subs):
            selector.register(sock, selectors.EVENT_READ, index)
        publisher = socket.create_connection(("127.0.0.1", nodes[0].port), timeout=10)
        login(publisher, "off")
        stop = threading.Event()

        def drain_replies() -> None:
            publisher.settimeout(0.2)
            while not stop.is_set():
                try:
                    if not publisher.recv(65536):
                        return
                except socket.timeout:
                    continue
                except OSError:
                    return

        def publish() -> None:
            interval = 1.0 / rate
            start = time.monotonic()
            for n in range(events):
                target = start + n * interval
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                publisher.sendall(f"Action: UserEvent\r\nUserEvent: B\r\nT: {time.monotonic():.6f}\r\n\r\n".encode())

        threading.Thread(target=drain_replies, daemon=True).start()
        sender = threading.Thread(target=publish)
        started = time.monotonic()
        sender.start()
        expected = events * subscribers
        received = 0
        deadline = started + events / rate + 20
        last = started
        while received < expected and time.monotonic() < deadline:
            for key, _ in selector.select(0.5):
                index = key.data
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                if not data:
                    continue
                now = time.monotonic()
                buf = buffers[index] + data
                *blocks, buffers[index] = buf.split(b"\r\n\r\n")
                kind = subs[index][1]
                for block in blocks:
                    at = block.find(b"\r\nT: ")
                    if at >= 0 and block.startswith(b"Event: UserEvent"):
                        sent = float(block[at + 5:].split(b"\r\n", 1)[0])
                        latencies[kind].append(now - sent)
                        counts[index] += 1
                        received += 1
                        last = now
        sender.join(30)
        stop.set()
        duration = last - started
        for sock, _ in subs:
            sock.close()
        publisher.close()
        return {
            "delivered_per_s": received / duration if duration > 0 else 0.0,
            "lost": expected - received,
            "local_p50_ms": percentile(latencies["local"], 0.5) * 1000,
            "local_p99_ms": percentile(latencies["local"], 0.99) * 1000,
            "remote_p50_ms": percentile(latencies["remote"], 0.5) * 1000,
            "remote_p99_ms": percentile(latencies["remote"], 0.99) * 1000,
        }
    finally:
        for node in nodes:
            node.stop()


def local_fanout(loadgen: Path, redis_port: int, base: Path, enabled: bool, events: int,
                 python: str = sys.executable) -> Dict:
    directory = base / f"local-{enabled}-{time.monotonic_ns()}"
    directory.mkdir()
    extra = cluster_table(redis_port, "bench-local") if enabled else ""
    server = Server("ami-server", directory, extra, python)
    try:
        time.sleep(0.5)
        return run_loadgen(loadgen, server, "fanout", 100, 32, events, "bench", "bench-secret", 120)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=2000.0, help="cross-node publications per second")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--baseline-python", help="interpreter of an earlier installation, measured alongside")
    args = parser.parse_args()
    base = workdir()
    redis_proc = start_redis(base)
    loadgen = build_loadgen()
    results: Dict[str, List[Dict]] = {"cross": [], "local_on": [], "local_off": [], "base_cross": [], "base_on": []}
    port = redis_proc.port  # type: ignore[attr-defined]
    try:
        for round_ in range(args.rounds):
            results["cross"].append(cross_node(port, base, args.events, args.rate))
            if args.baseline_python:
                results["base_cross"].append(cross_node(port, base, args.events, args.rate, python=args.baseline_python))
            runs = [("local_on", True, sys.executable), ("local_off", False, sys.executable)]
            if args.baseline_python:
                runs.append(("base_on", True, args.baseline_python))
            if round_ % 2:
                runs.reverse()
            for key, enabled, python in runs:
                results[key].append(local_fanout(loadgen, port, base, enabled, args.events * 10, python))
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    print(f"machine: {machine()}")
    cross = results["cross"]
    print(f"cross-node fan-out, 100 subscribers (50 on A, 50 on B), {args.events} events at {args.rate:g}/s, "
          f"median of {args.rounds}:")
    for key in ("delivered_per_s", "lost", "local_p50_ms", "local_p99_ms", "remote_p50_ms", "remote_p99_ms"):
        print(f"  {key}: {median([r[key] for r in cross]):.2f}")
    print(f"  added p50 ms: {median([r['remote_p50_ms'] - r['local_p50_ms'] for r in cross]):.2f}")
    print(f"  added p99 ms: {median([r['remote_p99_ms'] - r['local_p99_ms'] for r in cross]):.2f}")
    on = median([r["rate"] for r in results["local_on"]])
    off = median([r["rate"] for r in results["local_off"]])
    print(f"local fan-out N=100 (loadgen): bus disabled {off:,.0f} events/s, enabled {on:,.0f} events/s, "
          f"ratio {on / off:.2f}")
    if args.baseline_python:
        cross = results["base_cross"]
        print(f"baseline ({args.baseline_python}), same rounds:")
        for key in ("delivered_per_s", "lost", "local_p50_ms", "local_p99_ms", "remote_p50_ms", "remote_p99_ms"):
            print(f"  {key}: {median([r[key] for r in cross]):.2f}")
        print(f"  added p50 ms: {median([r['remote_p50_ms'] - r['local_p50_ms'] for r in cross]):.2f}")
        print(f"  added p99 ms: {median([r['remote_p99_ms'] - r['local_p99_ms'] for r in cross]):.2f}")
        base_on = median([r["rate"] for r in results["base_on"]])
        print(f"  local fan-out N=100, bus enabled: {base_on:,.0f} events/s, ratio to the same bus-disabled runs "
              f"{base_on / off:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
