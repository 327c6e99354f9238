"""RSS of the server under parallel wrong logins of a ``secret_hash`` user.

    python bench/login_rss.py [--clients 45] [--seconds 6] [--failure-delay 1.0]

Each client connects, sends a Login with a wrong Secret for a user stored as
an scrypt hash (about 16 MiB and 50 ms of CPU per check) and waits for the
server to close; again and again until the time is up. Prints the server's
RSS (VmRSS from /proc) before, its peak during, right after, and after 5 s of
quiet, and how many logins were answered. Not part of CI; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, wait_for_port, workdir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ami_server.passwords import hash_secret  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wrong_logins(port: int, until: float, answered: list) -> None:
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"Action: Login\r\nUsername: ops\r\nSecret: wrong-guess\r\n\r\n")
                data = b""
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if b"Authentication failed" in data:
                    answered.append(1)
        except OSError:
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=45)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--failure-delay", type=float, default=1.0)
    args = parser.parse_args()
    tmp = workdir()
    try:
        port = free_port()
        config = Path(tmp) / "ami.toml"
        config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {port}\nlogin_failure_delay = {args.failure_delay}\n'
            f'[users.ops]\nsecret_hash = "{hash_secret("the-right-one")}"\nread = "all"\nwrite = "all"\n'
        )
        log = open(Path(tmp) / "server.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=log, cwd=tmp)
        try:
            wait_for_port(port, process)
            time.sleep(1.0)
            before = rss_mib(process.pid)
            answered: list = []
            until = time.monotonic() + args.seconds
            threads = [threading.Thread(target=wrong_logins, args=(port, until, answered), daemon=True)
                       for _ in range(args.clients)]
            for thread in threads:
                thread.start()
            peak = before
            while any(t.is_alive() for t in threads):
                peak = max(peak, rss_mib(process.pid))
                time.sleep(0.1)
            after = rss_mib(process.pid)
            time.sleep(5.0)
            quiet = rss_mib(process.pid)
            print(f"{args.clients} clients x {args.seconds:g} s, failure delay {args.failure_delay:g} s: "
                  f"{len(answered)} logins answered")
            print(f"RSS MiB: before {before:.1f}, peak {peak:.1f}, after {after:.1f}, after 5 s quiet {quiet:.1f}")
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
