"""``ami-server --workers N``: N server processes on one port, kept running by a small supervisor.

One server process uses one core (one event loop, one GIL). To use more,
the supervisor starts N workers, each a complete server that binds the same
port with ``SO_REUSEPORT`` (``[server] reuse_port = true``); the kernel
spreads new connections over them. What makes them one server is the
cluster plugin: each worker is a node named ``<node>-<index>``, joined to
the others through Redis like nodes on different machines.

Workers are fresh interpreters (``python -m ami_server.cli --worker I``),
not forks, so no thread, lock or socket state is inherited. The supervisor
forwards SIGTERM / SIGINT (stop) and SIGHUP (reload) to every worker,
restarts a worker that dies (after a delay that grows while it keeps
dying), and gives up, stopping the others and exiting 1, when a worker
fails its start-up (exit status 1 within ``START_GRACE`` seconds): a bad
configuration or a port held by someone else would fail again. If the
supervisor itself is killed, the kernel sends each worker SIGTERM (Linux
``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .config import Config

__all__ = ["Supervisor", "die_with_parent", "workers_problem"]

#: A worker that exits with status 1 this soon after its start failed to start: the supervisor gives up.
START_GRACE = 5.0
#: Restart delays: the first, the cap, and how long a worker must live for the delay to start over.
RESTART_FIRST = 0.5
RESTART_MAX = 30.0
RESTART_RESET_AFTER = 30.0
#: How long stopping workers may take (they drain their sessions for up to 2 s) before SIGKILL.
STOP_TIMEOUT = 15.0
#: How often the supervisor looks at its workers (it has nothing else to do).
POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1


def workers_problem(config: Config, count: int) -> Optional[str]:
    """Why ``config`` cannot run ``count`` workers on one port, or ``None``."""
    source = config.source
    if count < 1:
        return "--workers must be at least 1"
    if count == 1:
        return None
    server = config.server
    if not server.reuse_port:
        return f"{source}: server.reuse_port: must be true to run {count} workers on one port"
    if server.port == 0:
        return f"{source}: server.port: must not be 0 with --workers (each worker would pick its own port)"
    if server.tls is not None and server.tls.port == 0:
        return f"{source}: server.tls.port: must not be 0 with --workers (each worker would pick its own port)"
    return None


@dataclass
class _Worker:
    """One worker slot: its current process and its restart history."""

    index: int
    process: Optional[subprocess.Popen] = None
    started: float = 0.0
    failures: int = 0
    restart_at: Optional[float] = None
    history: List[int] = field(default_factory=list)


class Supervisor:
    """Starts, watches, restarts and stops the worker processes; runs in the foreground."""

    def __init__(
        self,
        config_path: str,
        count: int,
        log: Any,
        command: Optional[Callable[[int], List[str]]] = None,
    ) -> None:
        self.config_path = config_path
        self.count = count
        self.log = log
        self.command = command or self._command
        self.workers = [_Worker(i) for i in range(count)]
        self._stop_signal: Optional[int] = None
        self._reload = False
        self._gave_up = False

    def _command(self, index: int) -> List[str]:
        return [sys.executable, "-m", "ami_server.cli", "--config", self.config_path, "--worker", str(index)]

    # -- signals (handlers only set flags; the main loop acts) ---------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def _on_reload(self, signum: int, frame: object) -> None:
        self._reload = True

    def request_stop(self) -> None:
        """Stop every worker and return from :meth:`run` (for embedding and tests)."""
        self._stop_signal = signal.SIGTERM

    # -- running -----------------------------------------------------------------
    def run(self) -> int:
        """Run until a stop signal; 0 after a clean stop, 1 if a worker could not start."""
        self.log.info("WorkersStarting", workers=self.count, config=self.config_path)
        for worker in self.workers:
            self._spawn(worker)
        while self._stop_signal is None and not self._gave_up:
            if self._reload:
                self._reload = False
                self.log.info("WorkersReloading", workers=self._signal_all(signal.SIGHUP))
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is not None:
                    self._exited(worker, now)
                elif worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
                    self._spawn(worker)
            if not self._gave_up:
                time.sleep(POLL_SECONDS)
        self._stop_all()
        return 1 if self._gave_up else 0

    def _spawn(self, worker: _Worker) -> None:
        worker.restart_at = None
        try:
            worker.process = subprocess.Popen(self.command(worker.index), stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.log.error("WorkerStartFailed", worker=worker.index, error=f"{type(exc).__name__}: {exc}")
            self._gave_up = True
            return
        worker.started = time.monotonic()
        self.log.info("WorkerStarted", worker=worker.index, pid=worker.process.pid)

    def _exited(self, worker: _Worker, now: float) -> None:
        assert worker.process is not None
        status = worker.process.returncode
        pid = worker.process.pid
        worker.process = None
        lived = now - worker.started
        worker.history.append(status)
        if status == 1 and lived < START_GRACE:
            self.log.error("WorkerStartFailed", worker=worker.index, pid=pid, status=status,
                           detail="the worker failed to start; stopping the others")
            self._gave_up = True
            return
        worker.failures = 0 if lived >= RESTART_RESET_AFTER else worker.failures + 1
        delay = min(RESTART_FIRST * 2 ** max(0, worker.failures - 1), RESTART_MAX)
        worker.restart_at = now + delay
        self.log.warning("WorkerExited", worker=worker.index, pid=pid, status=status,
                         lived=round(lived, 3), restart_in=delay)

    def _signal_all(self, signum: int) -> int:
        sent = 0
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is None:
                try:
                    process.send_signal(signum)
                    sent += 1
                except OSError:
                    pass  # it has just exited
        return sent

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for them (bounded), SIGKILL what is left."""
        signum = self._stop_signal or signal.SIGTERM
        self.log.info("WorkersStopping", signal=signal.Signals(signum).name, workers=self._signal_all(signal.SIGTERM))
        deadline = time.monotonic() + STOP_TIMEOUT
        statuses: Dict[int, Optional[int]] = {}
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            try:
                statuses[worker.index] = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                statuses[worker.index] = process.wait(5)
                self.log.warning("WorkerKilled", worker=worker.index, pid=process.pid,
                                 detail=f"still running {STOP_TIMEOUT:g} s after SIGTERM")
            worker.process = None
        self.log.info("WorkersStopped", statuses=statuses)


def die_with_parent() -> None:
    """In a worker, before anything else: have the kernel SIGTERM us when the supervisor dies (Linux).

    Done by the worker itself rather than between fork and exec, where the
    supervisor's log writer thread would make any Python code unsafe. If the
    supervisor is already gone, the worker stops at once.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() == 1:  # adopted by init: the supervisor died before the line above
        sys.exit(0)
