"""A bounded thread pool for work that may block (blocking actions, auth backends).

The event loop must never wait, so a handler declared ``blocking=True`` runs
here and its outcome is handed back to the loop with a callback. Both the
number of threads and the number of queued jobs are bounded: when the queue
is full :meth:`WorkerPool.submit` refuses the job instead of growing memory.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["WorkerPool", "Outcome"]

#: ``(value, exception)``: exactly one of them is meaningful.
Outcome = Tuple[Any, Optional[BaseException]]

_STOP = object()


class WorkerPool:
    """``threads`` daemon threads started on first use, ``queue_limit`` waiting jobs."""

    def __init__(
        self,
        threads: int,
        queue_limit: int,
        on_error: Callable[[BaseException], None],
        name: str = "ami-worker",
    ) -> None:
        if threads < 1 or queue_limit < 1:
            raise ValueError("a worker pool needs at least one thread and one queue slot")
        self.max_threads = threads
        self.queue_limit = queue_limit
        self.name = name
        self._jobs: "queue.Queue[Any]" = queue.Queue(maxsize=queue_limit)
        self._threads: List[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False
        #: Called (in the worker) when handing an outcome back raised.
        self.on_error = on_error
        self.stats = {"submitted": 0, "refused": 0}

    def submit(self, job: Callable[[], Any], done: Callable[[Outcome], None]) -> bool:
        """Queue ``job``; ``done`` is called in the worker with its outcome.

        Returns False (and never calls ``done``) when the pool is closed or
        its queue is full.
        """
        with self._lock:
            if self._closed:
                return False
            try:
                self._jobs.put_nowait((job, done))
            except queue.Full:
                self.stats["refused"] += 1
                return False
            self.stats["submitted"] += 1
            if self._idle:
                self._idle -= 1  # a waiting thread takes this job
            elif len(self._threads) < self.max_threads:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            # else: the job waits for the next thread that finishes
        return True

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                return
            job, done = item
            try:
                outcome: Outcome = (job(), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                outcome = (None, exc)
            try:
                done(outcome)
            except Exception as exc:  # noqa: BLE001 - a failed hand-over must not kill the thread
                self.on_error(exc)
            with self._lock:
                if self._jobs.empty():
                    self._idle += 1

    def resize(self, threads: int, queue_limit: int) -> None:
        """New bounds (on reload); extra threads start on demand, surplus ones stay until exit."""
        with self._lock:
            self.max_threads = threads
            self.queue_limit = queue_limit
            self._jobs.maxsize = queue_limit

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread (metrics)."""
        return self._jobs.qsize()

    @property
    def threads(self) -> int:
        return len(self._threads)

    def close(self, timeout: float = 0.0) -> None:
        """Refuse new jobs and let idle threads exit; busy ones finish on their own.

        Threads are daemons, so a job stuck in a plugin cannot keep the
        process alive; ``timeout`` bounds how long to wait for them.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        # Drop queued jobs: their sessions are closing with the server.
        try:
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in threads:
            try:
                self._jobs.put_nowait(_STOP)
            except queue.Full:
                break
        if timeout > 0:
            for thread in threads:
                thread.join(timeout)
