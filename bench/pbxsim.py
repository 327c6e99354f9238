"""Benchmark of the pbxsim plugin: call setups/s with 100 subscribers, and memory per 1,000 calls.

Prints figures; asserts nothing about time. Two parts:

1. ``memory``: the simulator core on a fake clock holds N concurrent calls
   (Local pair running Answer + Echo); RSS growth per 1,000 calls.
2. ``server``: a real ami-server process with pbxsim; 100 subscriber sessions
   (read=all, events on) in a separate reader process; pbxsim traffic places
   inbound calls at a fixed rate (each: endpoint -> Dial(PJSIP/bob) -> bridge ->
   hang-up, ~25 events). Reports the call setups/s achieved (calls the server
   had started when the window closed), events published and delivered/s,
   loss (published x subscribers - delivered), the lag (Ping round trips
   during the window) and the server's CPU seconds.
3. ``--find-max``: part 2 at each rate of ``--rates``; a rate is sustained
   when 99% of the offered calls started in its window, no delivery was lost and
   90% of the Pings came back within ``--max-lag`` seconds (a shared
   machine's scheduling spikes show in the max, which is printed too).

    python bench/pbxsim.py [--rate 200] [--calls 2000] [--subscribers 100] [--concurrent 10000]
    python bench/pbxsim.py --find-max [--rates 200,300,400] [--seconds 10] [--max-lag 0.1]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory(concurrent: int, traced: bool = False) -> None:
    from ami_server_pbxsim.channels import Originate
    from ami_server_pbxsim.testing import FakeClock
    from ami_server_pbxsim import Simulator, parse_config

    clock = FakeClock()
    config = parse_config({"extensions": {"up@default": ["Answer", "Echo"]}})
    sim = Simulator(config, lambda n, c, h: None, clock.call_later, clock.monotonic, lambda: 1796224762.0)
    gc.collect()
    if traced:
        import tracemalloc
        tracemalloc.start()
    before = rss_kib()
    started = time.perf_counter()
    for _ in range(concurrent):
        sim.originate(Originate("Local/up@default", application="Echo"), lambda r: None)
    clock.advance(1.0)
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_kib()
    assert len(sim.channels) == 2 * concurrent
    if traced:
        current = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(f"memory: Python allocations held {current / concurrent:,.0f} B per call (tracemalloc; RSS below "
              f"includes its overhead)")
    print(f"memory: {concurrent} concurrent calls ({2 * concurrent} channels): RSS +{(after - before) / 1024:.1f} MiB"
          f" = {(after - before) / 1024 / (concurrent / 1000):.2f} MiB per 1,000 calls;"
          f" core alone sets up {concurrent / elapsed:,.0f} calls/s (no subscribers, no sockets)")


def _subscriber_process(port: int, count: int, ready, stop, result) -> None:
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"Action: Login\r\nUsername: sub\r\nSecret: subpass\r\n\r\n")
        socks.append(s)
    counts = [0] * count
    tails = [b""] * count
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    ready.set()
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            i = key.data
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(key.fileobj)
                continue
            buf = tails[i] + data
            counts[i] += buf.count(b"\r\nPrivilege: call,all\r\n") + buf.count(b"\r\nPrivilege: dialplan,all\r\n")
            tails[i] = buf[-40:]
            # avoid double counting across the kept tail
            counts[i] -= tails[i].count(b"\r\nPrivilege: call,all\r\n") + tails[i].count(b"\r\nPrivilege: dialplan,all\r\n")
    for i in range(count):
        counts[i] += tails[i].count(b"\r\nPrivilege: call,all\r\n") + tails[i].count(b"\r\nPrivilege: dialplan,all\r\n")
    result.put(counts)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _action(sock: socket.socket, text: str, until: str = r"\r\n\r\n") -> str:
    sock.sendall(text.encode())
    data = b""
    while not re.search(until.encode(), data):
        data += sock.recv(65536)
    return data.decode()


def _ping_while(sock: socket.socket, until: float) -> List[float]:
    """Ping round trips (seconds), one every 0.2 s until ``until``: how late the server's loop answers."""
    rtts = []
    while time.monotonic() < until:
        sent = time.monotonic()
        _action(sock, "Action: Ping\r\n\r\n")
        rtts.append(time.monotonic() - sent)
        time.sleep(max(0.0, min(0.2, until - time.monotonic())))
    return rtts


def server(rate: float, calls: int, subscribers: int) -> Dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="pbxsim-bench-"))
    log = tmp / "server.log"
    (tmp / "config.toml").write_text(f"""
[server]
host = "127.0.0.1"
port = 0
auth_limit = {subscribers + 10}
output_queue_limit = 8388608
[logging]
file = "{log}"
format = "json"
level = "info"
[users.sub]
secret = "subpass"
read = "all"
write = []
[users.driver]
secret = "driverpass"
read = []
write = "all"
[plugins.pbxsim]
seed = 1
[plugins.pbxsim.extensions]
"in@default" = ["Dial(PJSIP/bob,10)", "Hangup"]
[plugins.pbxsim.endpoints.alice]
callerid = '"Alice" <201>'
[plugins.pbxsim.endpoints.bob]
answer_delay = 0.2
[plugins.pbxsim.traffic]
calls_per_second = {rate}
max_concurrent = 100000
callers = ["alice"]
destinations = ["in@default"]
ring_time = 0.2
talk_time = 1.0
total_calls = {calls}
""")
    proc = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(tmp / "config.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("server did not start")
            found = log.exists() and re.search(r'"address": ?"127\.0\.0\.1:(\d+)"', log.read_text())
            port = int(found.group(1)) if found else None
            time.sleep(0.05)
        ctx = multiprocessing.get_context("spawn")
        ready, stop, result = ctx.Event(), ctx.Event(), ctx.Queue()
        reader = ctx.Process(target=_subscriber_process, args=(port, subscribers, ready, stop, result))
        reader.start()
        if not ready.wait(30):
            raise SystemExit("subscribers did not connect")
        time.sleep(1.0)
        driver = socket.create_connection(("127.0.0.1", port), timeout=10)
        driver.recv(100)
        _action(driver, "Action: Login\r\nUsername: driver\r\nSecret: driverpass\r\nEvents: off\r\n\r\n")
        published0 = int(re.search(r"EventsPublished: (\d+)", _action(driver, "Action: ServerStatus\r\n\r\n")).group(1))
        cpu0, wall0 = _cpu_seconds(proc.pid), time.monotonic()
        _action(driver, "Action: PBXSimStart\r\n\r\n")
        setup_window = calls / rate
        rtts = _ping_while(driver, wall0 + setup_window)
        stopped = _action(driver, "Action: PBXSimStop\r\n\r\n")
        started = int(re.search(r"CallsStarted: (\d+)", stopped).group(1))
        setup_cpu = _cpu_seconds(proc.pid) - cpu0
        # let the last calls finish (ring 0.2 + answer + talk 1.0) and the output drain
        while True:
            time.sleep(1.0)
            status = _action(driver, "Action: CoreShowChannels\r\n\r\n", r"ListItems: \d+\r\n\r\n")
            if "ListItems: 0" in status or time.monotonic() - wall0 > setup_window + 30:
                break
        time.sleep(1.0)
        cpu1, wall1 = _cpu_seconds(proc.pid), time.monotonic()
        text = _action(driver, "Action: ServerStatus\r\n\r\n")
        published = int(re.search(r"EventsPublished: (\d+)", text).group(1)) - published0
        dropped = re.search(r"EventsDropped: (\d+)", text)
        slow = re.search(r"SlowConsumerDisconnects: (\d+)", text)
        stop.set()
        counts = result.get(timeout=30)
        reader.join(10)
        delivered = sum(counts)
        call_events = min(counts) if counts else 0
        rtts.sort()
        lost = max(counts) * len(counts) - delivered
        print(f"server: {calls} calls offered at {rate:g}/s to {subscribers} subscribers over {setup_window:.1f} s")
        print(f"  call setups/s achieved: {started / setup_window:.0f} ({started} calls started in the window; "
              f"server CPU {setup_cpu / setup_window * 100:.0f}% of one core while placing calls)")
        p90 = rtts[min(len(rtts) - 1, len(rtts) * 9 // 10)]
        print(f"  lag: Ping round trip during the window median {rtts[len(rtts) // 2] * 1000:.1f} ms, "
              f"p90 {p90 * 1000:.1f} ms, max {rtts[-1] * 1000:.1f} ms ({len(rtts)} pings)")
        print(f"  events published: {published} ({published / calls:.1f} per call, incl. the driver's status events)")
        print(f"  call+dialplan events delivered: {delivered} in {wall1 - wall0:.1f} s = "
              f"{delivered / (wall1 - wall0):,.0f}/s; per subscriber min {min(counts)} max {max(counts)}")
        print(f"  loss: {lost} deliveries short of the fullest subscriber; "
              f"server EventsDropped {dropped.group(1) if dropped else '?'}, "
              f"slow-consumer disconnects {slow.group(1) if slow else '?'}")
        per_call = (cpu1 - cpu0) / max(started, 1)
        print(f"  server CPU: {cpu1 - cpu0:.1f} s over {wall1 - wall0:.1f} s wall = {per_call * 1000:.2f} ms per call "
              f"(set up, run and delivered to every subscriber): at most {1 / per_call:.0f} calls/s on a whole core")
        driver.close()
        return {"rate": rate, "achieved": started / setup_window, "started": started, "calls": calls,
                "lost": lost + int(dropped.group(1) if dropped else 0) + int(slow.group(1) if slow else 0),
                "max_lag": rtts[-1], "p90_lag": p90, "median_lag": rtts[len(rtts) // 2],
                "cpu": setup_cpu / setup_window, "cpu_per_call": per_call}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def find_max(rates: List[float], seconds: float, subscribers: int, max_lag: float) -> None:
    """Part 2 at rising rates; prints each run and the highest sustained rate."""
    best = None
    rows = []
    for rate in rates:
        result = server(rate, int(rate * seconds), subscribers)
        # 1% slack: the last call is due 1/rate before the window closes, PBXSimStop may overtake it.
        ok = result["started"] >= 0.99 * result["calls"] and result["lost"] == 0 and result["p90_lag"] <= max_lag
        rows.append((result, ok))
        if ok:
            best = rate
    print(f"find-max: {subscribers} subscribers, {seconds:g} s per rate, lag limit {max_lag * 1000:.0f} ms")
    for result, ok in rows:
        print(f"  offered {result['rate']:6.0f}/s: achieved {result['achieved']:6.0f}/s, lost {result['lost']:.0f}, "
              f"Ping median {result['median_lag'] * 1000:.1f} ms p90 {result['p90_lag'] * 1000:.1f} ms "
              f"max {result['max_lag'] * 1000:.1f} ms, "
              f"server CPU {result['cpu'] * 100:.0f}%, {result['cpu_per_call'] * 1000:.2f} ms per call -> "
              f"{'sustained' if ok else 'NOT sustained'}")
    print(f"  highest sustained rate: {best if best is not None else 'none'}")
    per_call = rows[-1][0]["cpu_per_call"]
    print(f"  server CPU per call at the highest rate: {per_call * 1000:.2f} ms = at most {1 / per_call:.0f} "
          f"calls/s on a whole core, whatever else the machine runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=10000)
    parser.add_argument("--only", choices=("memory", "server"))
    parser.add_argument("--tracemalloc", action="store_true", help="also count Python allocations per call")
    parser.add_argument("--find-max", action="store_true")
    parser.add_argument("--rates", default="200,250,300,350,400,500,600,800")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-lag", type=float, default=0.1)
    args = parser.parse_args()
    if args.find_max:
        find_max([float(r) for r in args.rates.split(",")], args.seconds, args.subscribers, args.max_lag)
        return
    if args.only != "server":
        memory(args.concurrent, args.tracemalloc)
    if args.only != "memory":
        server(args.rate, args.calls, args.subscribers)


if __name__ == "__main__":
    main()
