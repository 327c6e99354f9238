"""Ping cost in process: 100k Pings through MemoryServer's session core, no sockets.

Compares source trees on the same run (each in its own interpreter, taking
turns, so that machine noise hits them alike), for the two common reads: one
request per read (the core's fast path) and 32 pipelined requests per read.

    .venv-test/bin/python bench/inprocess_ping.py --tree /tmp/ami-before --tree . [--rounds 5]

Each tree is put first on ``sys.path``, so the interpreter needs the server's
dependencies installed (the test environment has them). Prints the CPU
nanoseconds per Ping (best and median of the rounds: on a shared machine the best is
the steadier estimate of the code's own cost) for each tree and read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

PING = b"Action: Ping\r\nActionID: 1\r\n\r\n"


def measure(count: int) -> Dict[str, float]:
    """Nanoseconds per Ping for one request per read and for 32 per read (run inside a worker)."""
    from ami_server.testing import MemoryServer, make_config

    users = {"admin": {"secret": "adminpass", "read": "all", "write": "all"}}
    result = {}
    with MemoryServer(make_config({"users": users})) as memory:
        peer = memory.connect()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        peer.read()
        session = peer.session
        receive = memory.core.receive
        flush = memory.core.outbox.flush
        out = session.out
        for name, data, reads in (("one per read", PING, count), ("32 per read", PING * 32, count // 32)):
            for _ in range(reads // 10):  # warm up
                receive(session, data)
                flush()
                del out[:]
            started = time.thread_time_ns()  # CPU time: time the process waited for a CPU does not count
            for _ in range(reads):
                receive(session, data)
                flush()
                del out[:]
            elapsed = time.thread_time_ns() - started
            result[name] = elapsed / (reads * (len(data) // len(PING)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="a source tree (repeat to compare)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.count)))
        return 0
    trees = [os.path.abspath(tree) for tree in (args.tree or ["."])]
    samples: Dict[str, Dict[str, List[float]]] = {tree: {} for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run([sys.executable, __file__, "--worker", "--count", str(args.count)], env=env,
                                 check=True, capture_output=True, text=True, timeout=600).stdout
            for name, value in json.loads(out).items():
                samples[tree].setdefault(name, []).append(value)
    print(f"{'tree':<32} {'read':<14} {'best ns':>8} {'median ns':>10} {'best Pings/s':>13}"
          f"  ({args.rounds} rounds of {args.count} Pings)")
    for tree in trees:
        for name, values in samples[tree].items():
            best, median = min(values), statistics.median(values)
            print(f"{tree:<32} {name:<14} {best:>8.0f} {median:>10.0f} {1e9 / best:>13,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
