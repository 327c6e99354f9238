"""Benchmark ami-server against a minimal selectors AMI server on this machine.

    python bench/run.py                # every scenario, 3 rounds (about 6 minutes)
    python bench/run.py --quick        # 1 round, shorter runs
    python bench/run.py --only ping,fanout --rounds 5

Request rows (ping, hello) keep P requests in flight per connection and send
the next one as each reply arrives. The hello rows need the example plugin
installed (``pip install plugins/example_hello``); without it they are skipped.

Both servers run as their own processes and get the same load, alternating,
round after round; the table shows medians and the ratio ami-server / minimal.
The load generator (bench/loadgen.c, compiled with cc) reports its own CPU
share: a figure is trusted only where the same generator drove the minimal
server harder than ami-server.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    SECRET,
    USER,
    Server,
    build_loadgen,
    login,
    machine,
    median,
    percentile,
    ping_latencies,
    raise_fd_limit,
    run_loadgen,
    workdir,
)

KINDS = ("minimal", "ami-server")


def rounds_of(args: argparse.Namespace, run: Callable[[Server], Dict], servers: Dict[str, Server]) -> Dict[str, List[Dict]]:
    results: Dict[str, List[Dict]] = {kind: [] for kind in KINDS}
    for number in range(args.rounds):
        order = KINDS if number % 2 == 0 else tuple(reversed(KINDS))
        for kind in order:
            results[kind].append(run(servers[kind]))
    return results


def summary(results: Dict[str, List[Dict]], key: str) -> Dict[str, float]:
    return {kind: median([r[key] for r in runs]) for kind, runs in results.items()}


def ping(args, loadgen, servers, rows):
    for conns in (1, 10, 100):
        for inflight in (1, 32):
            results = rounds_of(
                args, lambda s: _checked(run_loadgen(loadgen, s, "ping", conns, inflight, args.seconds, USER, SECRET)), servers
            )
            rate = summary(results, "rate")
            rows.append(row(
                f"ping C={conns} P={inflight}", "responses/s", rate, results,
                extra=f"p50 {summary(results, 'p50_ms')['ami-server']:.2f} ms, "
                      f"p99 {summary(results, 'p99_ms')['ami-server']:.2f} ms "
                      f"(minimal {summary(results, 'p99_ms')['minimal']:.2f})",
            ))


def hello(args, loadgen, servers, rows):
    """The example plugin's Hello: an action that builds its own Response (and publishes an event) per request."""
    if not hello_installed():
        print("hello: skipped, the example plugin is not installed (pip install plugins/example_hello)",
              file=sys.stderr)
        return
    for conns, inflight in ((1, 1), (10, 32)):
        results = rounds_of(
            args,
            lambda s: _checked(run_loadgen(loadgen, s, "ping", conns, inflight, args.seconds, USER, SECRET, "Hello")),
            servers,
        )
        rows.append(row(
            f"hello C={conns} P={inflight}", "responses/s", summary(results, "rate"), results,
            extra=f"p50 {summary(results, 'p50_ms')['ami-server']:.2f} ms",
        ))


def hello_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "example_hello" for ep in entry_points(group="ami_server.actions"))


def login_churn(args, loadgen, servers, rows):
    results = rounds_of(args, lambda s: _checked(run_loadgen(loadgen, s, "login", 10, args.seconds, USER, SECRET)), servers)
    rows.append(row("login x10 parallel", "logins/s", summary(results, "rate"), results))


def fanout(args, loadgen, servers, rows):
    for subscribers in (10, 100, 1000):
        events = max(1000, min(100_000, args.deliveries // subscribers))
        results = rounds_of(
            args, lambda s: _checked(run_loadgen(loadgen, s, "fanout", subscribers, 32, events, USER, SECRET, 120)), servers
        )
        lost = max(r["lost"] for runs in results.values() for r in runs)
        rows.append(row(f"fanout N={subscribers}", "events/s delivered", summary(results, "rate"), results,
                        extra=f"{events} events each, lost {lost}"))


def filtered(args, loadgen, servers, rows):
    """Fan-out to 100 subscribers that each hold one include filter (a regex searched in every
    event, B-5.13); ami-server only, since the minimal server has no filters."""
    subscribers, events = 100, max(1000, min(100_000, args.deliveries // 100))
    runs = [_checked(run_loadgen(loadgen, servers["ami-server"], "fanout", subscribers, 32, events, USER, SECRET,
                                 120, 0, "UserEvent: ben[c]h"))
            for _ in range(args.rounds)]
    rows.append({
        "scenario": "fanout N=100, 1 filter each", "unit": "events/s delivered",
        "ami-server": median([r["rate"] for r in runs]), "minimal": float("nan"), "ratio": float("nan"),
        "note": f"{events} events each, lost {max(r['lost'] for r in runs)}; server CPU "
                f"{median([r['server_cpu'] for r in runs]):.0%}, generator CPU {median([r['gen_cpu'] for r in runs]):.0%}",
    })


def idle(args, loadgen, servers, rows):
    count = args.idle_sessions
    figures = {}
    for kind in KINDS:
        server = servers[kind]
        before = server.rss_bytes()
        socks = []
        try:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
                login(sock)
                socks.append(sock)
            time.sleep(1.0)  # let the server settle its buffers before reading RSS
            after = server.rss_bytes()
            latencies = ping_latencies(server.port)
        finally:
            for sock in socks:
                sock.close()
        figures[kind] = {"per_session": (after - before) / count, "p99": percentile(latencies, 0.99) * 1e3}
    rows.append({
        "scenario": f"idle {count} sessions", "unit": "RSS bytes/session",
        "ami-server": figures["ami-server"]["per_session"], "minimal": figures["minimal"]["per_session"],
        # The minimal server keeps almost nothing per session (its growth is within RSS noise).
        "ratio": (figures["ami-server"]["per_session"] / figures["minimal"]["per_session"]
                  if figures["minimal"]["per_session"] > 64 else float("nan")),
        "note": f"Ping p99 with them open: {figures['ami-server']['p99']:.2f} ms "
                f"(minimal {figures['minimal']['p99']:.2f} ms)",
    })


def slow(args, loadgen, servers, rows):
    server = servers["ami-server"]
    limit = 1048576
    subscriber = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    subscriber.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    login(subscriber, events="user")
    rss_before = server.rss_bytes()
    peak = rss_before
    # The publisher floods from its own process, so that it does not share a GIL
    # with the client whose Ping latency is measured here.
    flooder = subprocess.Popen([sys.executable, "-c", FLOOD, str(server.port)])
    latencies: List[float] = []
    cut_off = False
    deadline = time.monotonic() + args.seconds * 2
    while time.monotonic() < deadline:
        latencies += ping_latencies(server.port, 50)
        peak = max(peak, server.rss_bytes())
        server.log.flush()
        if "SlowConsumerDisconnect" in server.log_path.read_text():
            cut_off = True
            latencies += ping_latencies(server.port, 200)  # after the cut-off, with the flood still on
            break
    flooder.terminate()
    flooder.wait(10)
    subscriber.close()
    rows.append({
        "scenario": "slow consumer", "unit": "RSS growth (bytes)", "ami-server": peak - rss_before,
        "minimal": float("nan"), "ratio": float("nan"),
        "note": f"limit {limit}; cut off: {'yes' if cut_off else 'NO'}; other client's Ping p99 "
                f"{percentile(latencies, 0.99) * 1e3:.2f} ms over {len(latencies)} pings",
    })


FLOOD = """
import socket, sys
sys.path.insert(0, %r)
from common import login
publisher = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
login(publisher)
body = b"Action: UserEvent\\r\\nUserEvent: flood\\r\\nData: " + b"x" * 200 + b"\\r\\n\\r\\n"
while True:
    publisher.sendall(body * 50)
    publisher.recv(1 << 20)
""" % str(Path(__file__).resolve().parent)


def startup(args, loadgen, servers, rows):
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ami_server.cli", "--check-config", "--config", str(ROOT / "config.toml")],
                       check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    rows.append({"scenario": "start-up (--check-config)", "unit": "seconds", "ami-server": median(times),
                 "minimal": float("nan"), "ratio": float("nan"),
                 "note": "sample config.toml, entry-point discovery included"})


def _checked(figures: Dict) -> Dict:
    if figures.get("errors") or figures.get("lost"):
        raise RuntimeError(f"the load saw errors: {figures}")
    return figures


def row(name: str, unit: str, rate: Dict[str, float], results: Dict[str, List[Dict]], extra: str = "") -> Dict:
    gen = {kind: median([r["gen_cpu"] for r in runs]) for kind, runs in results.items()}
    srv = {kind: median([r["server_cpu"] for r in runs]) for kind, runs in results.items()}
    trusted = rate["minimal"] > rate["ami-server"]
    note = (f"server CPU {srv['ami-server']:.0%} (minimal {srv['minimal']:.0%}), generator CPU "
            f"{gen['ami-server']:.0%} (minimal {gen['minimal']:.0%})"
            + ("" if trusted else "; NOT TRUSTED: the minimal server was not driven harder"
               " (ami-server was ahead; the generator may bound its figure, so the ratio is at least this)"))
    if extra:
        note = f"{extra}; {note}"
    return {"scenario": name, "unit": unit, "ami-server": rate["ami-server"], "minimal": rate["minimal"],
            "ratio": rate["ami-server"] / rate["minimal"] if rate["minimal"] else float("nan"), "note": note}


SCENARIOS = {
    "ping": ping, "hello": hello, "login": login_churn, "fanout": fanout, "filtered": filtered, "idle": idle, "slow": slow,
    "startup": startup,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per ping/login run")
    parser.add_argument("--deliveries", type=int, default=2_000_000, help="fan-out deliveries per run")
    parser.add_argument("--idle-sessions", type=int, default=10_000)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s runs, fewer sessions")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.deliveries, args.idle_sessions = 1, 1.0, 300_000, 2000
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    limit = raise_fd_limit()
    if "idle" in chosen and limit < args.idle_sessions * 2 + 100:
        args.idle_sessions = max(100, (limit - 100) // 2)
    loadgen = build_loadgen()
    directory = workdir()
    servers = {kind: Server(kind, directory) for kind in KINDS}
    rows: List[Dict] = []
    try:
        for name in chosen:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            SCENARIOS[name](args, loadgen, servers, rows)
    finally:
        for server in servers.values():
            server.stop()
    print(f"\nmachine: {machine()}")
    print(f"rounds: {args.rounds}, medians; ami-server with default audit settings (JSON lines to a file)\n")
    print(f"{'scenario':<28} {'unit':<20} {'ami-server':>12} {'minimal':>12} {'ratio':>7}  notes")
    for r in rows:
        def fmt(value: float) -> str:
            return "-" if value != value else (f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}")
        ratio = "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}"
        print(f"{r['scenario']:<28} {r['unit']:<20} {fmt(r['ami-server']):>12} {fmt(r['minimal']):>12} {ratio:>7}  {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
