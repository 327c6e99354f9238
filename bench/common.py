"""Shared pieces of the benchmark and soak scripts: servers, the load generator, /proc readings."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
USER, SECRET = "bench", "bench-secret"


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_loadgen() -> Path:
    """Compile bench/loadgen.c with ``cc -O2`` into bench/.build (again only when it changed)."""
    source = BENCH / "loadgen.c"
    target = BENCH / ".build" / "loadgen"
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        target.parent.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(target), str(source)], check=True)
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.recv(64)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


class Server:
    """A server process under test: ami-server (default audit settings) or the minimal one."""

    def __init__(self, kind: str, workdir: Path, extra_config: str = "", python: str = sys.executable) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = workdir / f"{kind}.log"
        if kind == "ami-server":
            config = workdir / "ami-server.toml"
            config.write_text(
                f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n{extra_config}\n'
                f'[users.{USER}]\nsecret = "{SECRET}"\nread = "all"\nwrite = "all"\n'
                # The sample config's users beside the benchmark's: the default shape, three users.
                '[users.admin]\nsecret = "change-me"\nread = "all"\nwrite = "all"\n'
                '[users.dashboard]\nsecret = "dashboard-secret"\nread = ["system", "call", "user"]\nwrite = []\n'
            )
            command = [python, "-m", "ami_server.cli", "--config", str(config)]
        else:
            command = [sys.executable, str(BENCH / "minimal_server.py"), str(self.port)]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log, cwd=workdir)
        wait_for_port(self.port, self.process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def run_loadgen(loadgen: Path, server: Server, mode: str, *args: object, timeout: float = 300) -> Dict:
    """Run one load and return its JSON figures plus the server's CPU share meanwhile."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    command = [str(loadgen), mode, "127.0.0.1", str(server.port), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    if result.returncode == 2 or not result.stdout.strip():
        raise RuntimeError(f"loadgen {mode} failed against {server.kind}: {result.stderr.strip()}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["server_cpu"] = (server.cpu_seconds() - cpu0) / wall
    figures["exit"] = result.returncode
    return figures


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ami-bench-"))


def median(values: List[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}"


def login(sock: socket.socket, events: str = "off") -> None:
    """Blocking Login on a connected socket (banner read here)."""
    buf = b""
    while b"\r\n" not in buf:
        buf += sock.recv(4096)
    sock.sendall(f"Action: Login\r\nUsername: {USER}\r\nSecret: {SECRET}\r\nEvents: {events}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed during login")
        buf += chunk
    if b"Authentication accepted" not in buf:
        raise RuntimeError(f"login failed: {buf!r}")


def ping_latencies(port: int, count: int = 200) -> List[float]:
    """Round trips of ``count`` Pings on a new logged-in session, in seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        login(sock)
        times = []
        for n in range(count):
            start = time.perf_counter()
            sock.sendall(f"Action: Ping\r\nActionID: rt{n}\r\n\r\n".encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(4096)
            times.append(time.perf_counter() - start)
        return times


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0
