"""One round trip (1 connection, 1 request in flight): where each server spends it.

    python bench/roundtrip.py [--seconds 3] [--rounds 3] [--action Ping]

Runs ``loadgen ping 1 1`` against the minimal server and ami-server in turn
and prints, per server, responses/s and the server's CPU per round trip split
into user and system time (``/proc/<pid>/stat``). With ``strace`` on the PATH
it then counts the system calls per round trip (``strace -c -f`` attached for
part of a further run; strace slows the server, so its rate is not reported).
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SECRET, USER, Server, build_loadgen, machine, median, workdir  # noqa: E402


def cpu_split(pid: int) -> tuple:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def one_run(loadgen: Path, server: Server, seconds: float, action: str) -> Dict[str, float]:
    user0, sys0 = cpu_split(server.pid)
    result = subprocess.run([str(loadgen), "ping", "127.0.0.1", str(server.port), "1", "1", str(seconds), USER, SECRET,
                             action], capture_output=True, text=True, timeout=seconds + 60)
    user1, sys1 = cpu_split(server.pid)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["errors"]:
        raise RuntimeError(f"errors against {server.kind}: {figures}")
    # The CPU deltas cover the warm-up half second too: count its responses at the measured rate.
    total = figures["rate"] * (figures["seconds"] + 0.5)
    return {"rate": figures["rate"], "user_us": (user1 - user0) / total * 1e6, "sys_us": (sys1 - sys0) / total * 1e6}


def syscalls(loadgen: Path, server: Server, seconds: float, action: str) -> List[str]:
    """``strace -c`` lines (calls per round trip) for the server under the same load."""
    out = server.log_path.with_suffix(".strace")
    load = subprocess.Popen([str(loadgen), "ping", "127.0.0.1", str(server.port), "1", "1", str(seconds + 1.5), USER,
                             SECRET, action], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(server.pid), "-o", str(out)],
                              stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    stdout, _ = load.communicate(timeout=60)
    lines = [line.split() for line in out.read_text().splitlines() if line[:1] == " " or line[:1].isdigit()]
    rows = [(parts[-1], int(parts[3])) for parts in lines if len(parts) >= 5 and parts[3].isdigit()]
    trips = max((count for name, count in rows if name in ("recvfrom", "read")), default=0)
    return [f"{name} {count / trips:.2f}" for name, count in rows if name != "total" and trips]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--action", default="Ping")
    args = parser.parse_args()
    loadgen = build_loadgen()
    directory = workdir()
    servers = {kind: Server(kind, directory) for kind in ("minimal", "ami-server")}
    runs: Dict[str, List[Dict[str, float]]] = {kind: [] for kind in servers}
    calls: Dict[str, List[str]] = {}
    try:
        for number in range(args.rounds):
            for kind in (servers if number % 2 == 0 else reversed(list(servers))):
                runs[kind].append(one_run(loadgen, servers[kind], args.seconds, args.action))
        if shutil.which("strace"):
            for kind, server in servers.items():
                calls[kind] = syscalls(loadgen, server, min(args.seconds, 2.0), args.action)
    finally:
        for server in servers.values():
            server.stop()
    print(f"machine: {machine()}")
    print(f"{args.action}, 1 connection, 1 in flight; medians of {args.rounds} rounds\n")
    print(f"{'server':<12} {'round trips/s':>14} {'user us/rt':>11} {'system us/rt':>13}  system calls per round trip")
    for kind, figures in runs.items():
        print(f"{kind:<12} {median([f['rate'] for f in figures]):>14,.0f} "
              f"{median([f['user_us'] for f in figures]):>11.1f} {median([f['sys_us'] for f in figures]):>13.1f}  "
              f"{', '.join(calls.get(kind, ['(strace not found)']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
