"""Worker benchmark: requests, login churn and fan-out with ``ami-server --workers 1`` and ``2`` on one port.

    python bench/workers.py [--rounds 3] [--seconds 3] [--events 3000]

Needs ``redis-server`` on the PATH, the cluster plugin installed
(``pip install ./plugins/cluster``) and a C compiler (``bench/loadgen.c``).
It starts its own redis-server and, per run, one supervisor with N workers
on a free loopback port (``reuse_port = true``, the cluster plugin
enabled), and prints figures; it asserts nothing about times.

- ping: ``loadgen ping`` at C=100 P=1 and C=10 P=32 (each connection keeps
  P Pings in flight, the next sent as each reply arrives); the kernel spreads
  the connections over the workers.
- login churn: ``loadgen login`` (10 parallel loops of connect, Login,
  Logoff, close); the kernel spreads the connections over the workers.
- fan-out: ``loadgen fanout`` (100 subscribers spread over the workers, one
  publisher, 32 in flight); subscribers on another worker than the
  publisher's get the events through Redis.

Server CPU is the sum over the worker processes (the supervisor only waits).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import start_redis  # noqa: E402
from common import SECRET, USER, build_loadgen, free_port, machine, median, raise_fd_limit, workdir  # noqa: E402


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> List[int]:
    out: List[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return out


class Workers:
    """``ami-server --workers N`` with the cluster plugin, on a free port."""

    def __init__(self, base: Path, count: int, redis_port: int) -> None:
        self.count = count
        self.port = free_port()
        directory = base / f"workers-{count}-{time.monotonic_ns()}"
        directory.mkdir()
        self.log = directory / "ami.log"
        config = directory / "ami.toml"
        config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nreuse_port = true\n'
            f'[logging]\nfile = "{self.log}"\nformat = "json"\n'
            f'[plugins.cluster]\nenabled = true\nredis_url = "redis://127.0.0.1:{redis_port}/0"\nnode = "bench"\n'
            f'[users.{USER}]\nsecret = "{SECRET}"\nread = "all"\nwrite = "all"\n'
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ami_server.cli", "--workers", str(count), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(directory / "stderr", "w"), cwd=directory,
        )
        deadline = time.monotonic() + 60
        while self._up() < 2 * count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"--workers {count} did not start (see {directory})")
            time.sleep(0.1)

    def _up(self) -> int:
        if not self.log.exists():
            return 0
        count = 0
        for line in self.log.read_text().splitlines():
            try:
                count += json.loads(line).get("event") == "ClusterRedisUp"
            except ValueError:
                continue
        return count

    def cpu_seconds(self) -> float:
        return sum(_cpu(pid) for pid in _children(self.process.pid))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def loadgen_run(loadgen: Path, workers: Workers, mode: str, *args: object) -> Dict:
    cpu0, t0 = workers.cpu_seconds(), time.monotonic()
    result = subprocess.run([str(loadgen), mode, "127.0.0.1", str(workers.port), *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    if result.returncode == 2 or not result.stdout.strip():
        raise RuntimeError(f"loadgen {mode} failed: {result.stderr.strip()}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["server_cpu"] = (workers.cpu_seconds() - cpu0) / wall
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds of ping and login churn")
    parser.add_argument("--events", type=int, default=3000, help="fan-out publications per run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    raise_fd_limit()
    base = workdir()
    redis_proc = start_redis(base)
    loadgen = build_loadgen()
    kinds = ("ping100x1", "ping10x32", "login", "fanout")
    results: Dict[str, List[Dict]] = {f"{kind}_{n}": [] for kind in kinds for n in (1, 2)}
    try:
        for round_ in range(args.rounds):
            for count in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                workers = Workers(base, count, redis_proc.port)  # type: ignore[attr-defined]
                try:
                    time.sleep(0.5)
                    for kind, conns, inflight in (("ping100x1", 100, 1), ("ping10x32", 10, 32)):
                        results[f"{kind}_{count}"].append(
                            loadgen_run(loadgen, workers, "ping", conns, inflight, args.seconds, USER, SECRET))
                    results[f"login_{count}"].append(
                        loadgen_run(loadgen, workers, "login", 10, args.seconds, USER, SECRET))
                    results[f"fanout_{count}"].append(
                        loadgen_run(loadgen, workers, "fanout", 100, 32, args.events, USER, SECRET, 120))
                finally:
                    workers.stop()
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    print(f"machine: {machine()}")
    print(f"ami-server --workers N on one port, cluster plugin on, median of {args.rounds} rounds:")
    labels = {"ping100x1": "ping C=100 P=1", "ping10x32": "ping C=10 P=32",
              "login": "login churn x10 parallel", "fanout": "fan-out N=100 subscribers"}
    for kind, unit in (("ping100x1", "responses/s"), ("ping10x32", "responses/s"), ("login", "logins/s"),
                       ("fanout", "deliveries/s")):
        rates = {n: median([r["rate"] for r in results[f"{kind}_{n}"]]) for n in (1, 2)}
        cpu = {n: median([r["server_cpu"] for r in results[f"{kind}_{n}"]]) for n in (1, 2)}
        errors = {n: sum(r.get("errors", 0) + r.get("lost", 0) for r in results[f"{kind}_{n}"]) for n in (1, 2)}
        label = labels[kind]
        print(f"  {label}: 1 worker {rates[1]:,.0f} {unit} (server CPU {cpu[1]:.2f}), "
              f"2 workers {rates[2]:,.0f} {unit} (server CPU {cpu[2]:.2f}), "
              f"ratio {rates[2] / rates[1]:.2f}, errors/lost {errors[1]}/{errors[2]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
