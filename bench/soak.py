"""Soak test: mixed load on one ami-server for N minutes, printing RSS and open descriptors over time.

    python bench/soak.py --minutes 10

The load, all at once and restarted as each run ends: Pings on 20 connections
with 4 in flight, UserEvents fanned out to 50 subscribers, login churn on 2
parallel loops, and every 30 s a subscriber that stops reading (it must be cut
off). Every sample shows the server's RSS, open file descriptors and
counters; a leak shows as a column that keeps growing. Not part of CI.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SECRET, USER, Server, build_loadgen, login, raise_fd_limit, workdir  # noqa: E402


def status(port: int) -> dict:
    """ServerStatus over a short-lived session (the bench user has the system class)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        login(sock)
        sock.sendall(b"Action: ServerStatus\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
    return dict(re.findall(r"(\w+): ([^\r\n]*)", buf.decode()))


def loop_loadgen(stop: threading.Event, loadgen: Path, port: int, mode: str, *args: object, failures: list) -> None:
    while not stop.is_set():
        result = subprocess.run([str(loadgen), mode, "127.0.0.1", str(port), *map(str, args)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{mode}: {result.stderr.strip() or result.stdout.strip()}")


def stalled_subscribers(stop: threading.Event, port: int, every: float) -> None:
    """Every ``every`` seconds: a subscriber that never reads, held until the server cuts it off
    (kernel socket buffers absorb a few MB of the fan-out's events first) or 120 s pass."""
    while not stop.wait(every):
        before = int(status(port)["SlowConsumerDisconnects"])
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        login(stalled, events="user")
        deadline = time.monotonic() + 120
        while not stop.wait(2) and time.monotonic() < deadline:
            if int(status(port)["SlowConsumerDisconnects"]) > before:
                break
        stalled.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    args = parser.parse_args()
    raise_fd_limit()
    loadgen = build_loadgen()
    server = Server("ami-server", workdir())
    stop = threading.Event()
    failures: list = []
    workers = [
        threading.Thread(target=loop_loadgen, args=(stop, loadgen, server.port, "ping", 20, 4, 20, USER, SECRET),
                         kwargs={"failures": failures}),
        threading.Thread(target=loop_loadgen,
                         args=(stop, loadgen, server.port, "fanout", 50, 8, 20000, USER, SECRET, 120),
                         kwargs={"failures": failures}),
        threading.Thread(target=loop_loadgen, args=(stop, loadgen, server.port, "login", 2, 20, USER, SECRET),
                         kwargs={"failures": failures}),
        threading.Thread(target=stalled_subscribers, args=(stop, server.port, 30.0)),
    ]
    for worker in workers:
        worker.daemon = True
        worker.start()
    started = time.monotonic()
    print(f"{'minute':>7} {'RSS MiB':>8} {'fds':>5} {'sessions':>8} {'accepted':>9} {'published':>10} "
          f"{'dropped':>8} {'slow cut':>8}", flush=True)
    rows = []
    try:
        while True:
            elapsed = time.monotonic() - started
            counters = status(server.port)
            row = (elapsed / 60, server.rss_bytes() / 2**20, server.open_fds(), int(counters["Sessions"]),
                   int(counters["SessionsAccepted"]), int(counters["EventsPublished"]),
                   int(counters["EventsDropped"]), int(counters["SlowConsumerDisconnects"]))
            rows.append(row)
            print(f"{row[0]:7.1f} {row[1]:8.1f} {row[2]:5d} {row[3]:8d} {row[4]:9d} {row[5]:10d} {row[6]:8d} {row[7]:8d}",
                  flush=True)
            if elapsed >= args.minutes * 60:
                break
            time.sleep(min(args.interval, max(0.0, args.minutes * 60 - elapsed)))
    finally:
        stop.set()
        for worker in workers:
            worker.join(150)
        server.stop()
    if failures:
        print(f"{len(failures)} load runs failed; first: {failures[0]}")
    first, last = rows[0], rows[-1]
    settled = rows[len(rows) // 2] if len(rows) > 2 else first
    print(f"RSS {first[1]:.1f} -> {last[1]:.1f} MiB (from the middle sample: {settled[1]:.1f} -> {last[1]:.1f}); "
          f"fds {first[2]} -> {last[2]}; {last[4]} sessions accepted, {last[5]} events published, "
          f"{last[7]} slow consumers cut off; server exit status {server.process.returncode}")
    return 1 if failures or server.process.returncode not in (0, -15) else 0


if __name__ == "__main__":
    sys.exit(main())
