"""Ping round trips with and without the [http] listener (and while /metrics is scraped).

Starts ami-server three ways in turn -- no [http]; [http] on; [http] on and
/metrics scraped every 0.2 s -- and measures sequential Ping round trips on
one session. Rounds alternate the variants so that a background load
affects them alike. Prints medians and p99 in microseconds; asserts nothing.

    python bench/http_overhead.py [--pings 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SECRET, USER, free_port, percentile, ping_latencies, wait_for_port  # noqa: E402

VARIANTS = ("off", "on", "on+scrape")


def config(port: int, http_port: int, http: bool) -> str:
    text = f"""
[server]
host = "127.0.0.1"
port = {port}

[logging]
level = "warning"

[users.{USER}]
secret = "{SECRET}"
read = "all"
write = "all"
"""
    if http:
        text += f"\n[http]\nport = {http_port}\n"
    return text


def measure(variant: str, pings: int, folder: Path) -> List[float]:
    port, http_port = free_port(), free_port()
    path = folder / f"{variant}.toml"
    path.write_text(config(port, http_port, variant != "off"))
    process = subprocess.Popen([sys.executable, "-m", "ami_server", "--config", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    scraper = None
    try:
        wait_for_port(port, process)
        if variant == "on+scrape":
            def scrape() -> None:
                while not stop.wait(0.2):
                    urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read()

            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
        ping_latencies(port, 200)  # warm-up
        return ping_latencies(port, pings)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join(5)
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    medians: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                times = measure(variant, args.pings, Path(folder))
                results[variant].extend(times)
                medians[variant].append(statistics.median(times))
    print(f"Ping round trips, {args.pings} per round, {args.rounds} rounds (microseconds)")
    print(f"{'variant':<11} {'median':>8} {'p99':>8}   round medians")
    for variant in VARIANTS:
        times = results[variant]
        rounds = " ".join(f"{m * 1e6:.1f}" for m in medians[variant])
        print(f"{variant:<11} {statistics.median(times) * 1e6:8.1f} {percentile(times, 0.99) * 1e6:8.1f}   {rounds}")


if __name__ == "__main__":
    main()
