"""Gateway figures: event fan-out through the gateway, action round trips through it.

Two ami-server processes: the upstream (standing in for Asterisk) and a
gateway in front of it (the ``ami-server-gateway`` plugin, with the ``ping``
and ``userevent`` builtins disabled so that Ping and UserEvent are
forwarded). Prints a table; asserts nothing about time.

    .venv-test/bin/python bench/gateway.py [--seconds 3] [--rounds 1]

fan-out: subscribers log in to the gateway (or, for the reference, to the
upstream itself); the publisher sends UserEvents to the upstream, whose one
event stream the gateway's upstream session carries to every subscriber.
round trip: loadgen's Ping load at C connections x P in flight, directly to
the upstream and through the gateway.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SECRET, USER, Server, build_loadgen, machine, median, raise_fd_limit, run_loadgen, workdir  # noqa: E402


def gateway_server(upstream: Server) -> Server:
    extra = (
        f'[plugins]\ndisable = ["ping", "userevent", "command", "core"]\n'
        f'[plugins.gateway.upstreams.pbx]\nhost = "127.0.0.1"\nport = {upstream.port}\n'
        f'username = "{USER}"\nsecret = "{SECRET}"\naction_timeout = 30.0\n'
    )
    server = Server("ami-server", workdir(), extra)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the upstream session is up once Ping is forwarded
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            from common import login
            login(sock)
            sock.sendall(b"Action: Ping\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += sock.recv(4096)
            if b"Pong" in reply:
                return server
        time.sleep(0.1)
    raise RuntimeError("the gateway's upstream did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--events", type=int, default=200_000, help="deliveries per fan-out run")
    args = parser.parse_args()
    raise_fd_limit()
    loadgen = build_loadgen()
    upstream = Server("ami-server", workdir())
    gateway = gateway_server(upstream)
    rows: List[Dict] = []
    try:
        for subscribers in (100, 1000):
            events = max(200, args.events // subscribers)
            direct = [run_loadgen(loadgen, upstream, "fanout", subscribers, 32, events, USER, SECRET, 120)
                      for _ in range(args.rounds)]
            through = [run_loadgen(loadgen, gateway, "fanout", subscribers, 32, events, USER, SECRET, 120,
                                   upstream.port) for _ in range(args.rounds)]
            rate_d, rate_g = median([r["rate"] for r in direct]), median([r["rate"] for r in through])
            rows.append({
                "scenario": f"fan-out N={subscribers} ({events} events)", "direct": rate_d, "gateway": rate_g,
                "ratio": rate_g / rate_d,
                "note": f"events/s delivered; lost {max(r['lost'] for r in through)}, "
                        f"gateway CPU {median([r['server_cpu'] for r in through]):.2f}, "
                        f"ami-server CPU {median([r['server_cpu'] for r in direct]):.2f}",
            })
        for inflight in (1, 32):
            direct = [run_loadgen(loadgen, upstream, "ping", 10, inflight, args.seconds, USER, SECRET)
                      for _ in range(args.rounds)]
            through = [run_loadgen(loadgen, gateway, "ping", 10, inflight, args.seconds, USER, SECRET)
                       for _ in range(args.rounds)]
            errors = sum(r["errors"] for r in direct + through)
            p50_d, p50_g = median([r["p50_ms"] for r in direct]), median([r["p50_ms"] for r in through])
            rate_d, rate_g = median([r["rate"] for r in direct]), median([r["rate"] for r in through])
            rows.append({
                "scenario": f"action round trip C=10 P={inflight}", "direct": rate_d, "gateway": rate_g,
                "ratio": rate_g / rate_d,
                "note": f"actions/s; p50 {p50_d:.2f} -> {p50_g:.2f} ms (+{p50_g - p50_d:.2f} ms), errors {errors}, "
                        f"gateway CPU {median([r['server_cpu'] for r in through]):.2f}",
            })
    finally:
        gateway.stop()
        upstream.stop()
    print(f"# {machine()}")
    print(f"{'scenario':<40} {'direct':>10} {'gateway':>10} {'ratio':>6}  note")
    for row in rows:
        print(f"{row['scenario']:<40} {row['direct']:>10.0f} {row['gateway']:>10.0f} {row['ratio']:>6.2f}  {row['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
