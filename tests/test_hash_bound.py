"""scrypt checks are bounded per process: few at once, a bounded wait, slots never leak."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from ami_server import passwords
from ami_server.passwords import MAX_CONCURRENT_HASHES, HashingBusy, hash_secret, verify_secret

#: A cheap hash (ln=10) so that the real scrypt runs fast where it runs.
STORED = hash_secret("right", log_n=10)


class CountingScrypt:
    """Wraps hashlib.scrypt: counts calls running at once; optionally raises or blocks."""

    def __init__(self, real, hold: float = 0.02, fail_every: int = 0, gate: "threading.Event | None" = None):
        self.real = real
        self.hold = hold
        self.fail_every = fail_every
        self.gate = gate
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls = 0
        self.threads = set()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.calls += 1
            call = self.calls
            self.most = max(self.most, self.running)
            self.threads.add(threading.get_ident())
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "test gate never opened"
            time.sleep(self.hold)  # a worker thread, never the server's loop
            if self.fail_every and call % self.fail_every == 0:
                raise ValueError("scrypt failed")
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def run_threads(count, target):
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "a verify call did not return"


def test_concurrent_checks_never_exceed_the_bound_and_exceptions_release_their_slot(monkeypatch):
    counter = CountingScrypt(hashlib.scrypt, fail_every=3)
    monkeypatch.setattr(hashlib, "scrypt", counter)
    results = {}

    def check(i):
        try:
            results[i] = verify_secret("right" if i % 2 else "wrong", STORED, wait=20)
        except ValueError as exc:
            results[i] = exc

    run_threads(24, check)
    assert counter.calls == 24
    assert 1 <= counter.most <= MAX_CONCURRENT_HASHES
    assert len(counter.threads) <= MAX_CONCURRENT_HASHES  # the same few threads, whoever asks
    failed = [r for r in results.values() if isinstance(r, ValueError)]
    assert len(failed) == 8  # every third call raised, and the caller got the error
    answered = {i: r for i, r in results.items() if not isinstance(r, ValueError)}
    assert all(r is (i % 2 == 1) for i, r in answered.items())
    # Raising calls gave their slot back: the full bound is still available.
    counter.fail_every = 0
    run_threads(MAX_CONCURRENT_HASHES * 2, lambda i: results.__setitem__(i, verify_secret("right", STORED, wait=5)))
    assert counter.running == 0 and counter.most <= MAX_CONCURRENT_HASHES


def test_a_check_that_cannot_get_a_slot_in_time_fails_closed(monkeypatch):
    gate = threading.Event()
    counter = CountingScrypt(hashlib.scrypt, hold=0, gate=gate)
    monkeypatch.setattr(hashlib, "scrypt", counter)
    holders = [threading.Thread(target=verify_secret, args=("right", STORED), kwargs={"wait": 20}, daemon=True)
               for _ in range(MAX_CONCURRENT_HASHES)]
    try:
        for thread in holders:
            thread.start()
        deadline = time.monotonic() + 5
        while counter.running < MAX_CONCURRENT_HASHES:
            assert time.monotonic() < deadline, "the holders never started"
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(HashingBusy):
            verify_secret("right", STORED, wait=0.2)
        assert time.monotonic() - started < 5
        assert counter.calls == MAX_CONCURRENT_HASHES  # the refused check never ran
    finally:
        gate.set()
        for thread in holders:
            thread.join(10)
    assert counter.calls == MAX_CONCURRENT_HASHES and counter.running == 0
    assert verify_secret("right", STORED, wait=5) is True


def test_hashing_busy_is_a_timeout_error():
    assert issubclass(HashingBusy, TimeoutError)
    assert passwords.HASH_WAIT > 0
