"""Login churn in process: connect, Login, Logoff, close through MemoryServer's session core, no sockets.

    python bench/inprocess_login.py                      # this tree, 5 rounds
    python bench/inprocess_login.py --tree /tmp/before --tree .
    python bench/inprocess_login.py --profile 20000      # cProfile one run, top functions by own time

Each cycle is what a PHP page does: a connection (accept, banner), a
plaintext Login with the default audit trail (JSON lines to a sink that
keeps nothing, so the writer thread is not timed), a Logoff, the close.
Each tree runs in its own interpreter, taking turns; the figure is CPU
microseconds per cycle (best and median of the rounds). It prints figures
and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

LOGIN = b"Action: Login\r\nActionID: 1\r\nUsername: bench\r\nSecret: bench-secret\r\n\r\n"
LOGOFF = b"Action: Logoff\r\nActionID: 2\r\n\r\n"


def cycle_function() -> Callable[[], None]:
    """A server in memory and one connect/Login/Logoff/close cycle against it."""
    from ami_server.audit import LogSink
    from ami_server.testing import MemoryServer, make_config

    class Discard(LogSink):
        def write_line(self, line: str) -> None:
            pass

    users = {"bench": {"secret": "bench-secret", "read": "all", "write": "all"}}
    memory = MemoryServer(make_config({"users": users}), log_sink=Discard())

    ports = itertools.cycle(range(40000, 60000))

    def cycle() -> None:
        peer = memory.connect(("127.0.0.1", next(ports)))
        peer.take()
        peer.send(LOGIN)
        peer.take()
        peer.send(LOGOFF)
        peer.read()
        if not peer.closed:
            raise RuntimeError("Logoff did not close the session")

    return cycle


def measure(count: int) -> float:
    cycle = cycle_function()
    for _ in range(count // 10):  # warm up
        cycle()
    started = time.thread_time_ns()
    for _ in range(count):
        cycle()
    return (time.thread_time_ns() - started) / count / 1000


def profile(count: int, sort: str) -> None:
    import cProfile
    import pstats

    cycle = cycle_function()
    for _ in range(count // 10):
        cycle()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        cycle()
    profiler.disable()
    pstats.Stats(profiler).sort_stats(sort).print_stats(45)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="a source tree (repeat to compare)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--profile", type=int, metavar="CYCLES", help="profile CYCLES cycles of this tree")
    parser.add_argument("--sort", default="tottime", help="profile order (tottime, cumtime)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.sort)
        return 0
    if args.worker:
        print(json.dumps(measure(args.count)))
        return 0
    trees = [os.path.abspath(tree) for tree in (args.tree or ["."])]
    samples: Dict[str, List[float]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run([sys.executable, __file__, "--worker", "--count", str(args.count)], env=env,
                                 check=True, capture_output=True, text=True, timeout=600).stdout
            samples[tree].append(json.loads(out))
    print(f"{'tree':<40} {'best us':>8} {'median us':>10}  ({args.rounds} rounds of {args.count} cycles)")
    for tree in trees:
        values: Any = samples[tree]
        print(f"{tree:<40} {min(values):>8.1f} {statistics.median(values):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
