"""Salted, slow secret hashes for stored credentials (``secret_hash`` in config.toml).

Format (PHC string style): ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>``
with unpadded standard base64. A hashed secret cannot answer an MD5 challenge
(A-3.5 needs the plaintext), so users with ``secret_hash`` log in with
``Secret`` only -- preferably over TLS.

Each check costs about 16 MiB and 50 ms of a core (the defaults). All of them
run on :data:`MAX_CONCURRENT_HASHES` dedicated threads per process, and a
caller waits for its turn at most a bounded time. Bounding the concurrency is
not enough on its own: the C allocator keeps a freed 16 MiB block in the
arena of the thread that used it, so scrypt on every auth worker thread in
turn left one block per thread behind (45 parallel wrong logins raised the
server's RSS from 31 to 96 MiB for good); on two threads only two blocks
exist, reused by every check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "hash_secret", "verify_secret", "parse_secret_hash", "SecretHash", "HashingBusy",
    "MAX_CONCURRENT_HASHES", "HASH_WAIT",
]

DEFAULT_LOG_N = 14
DEFAULT_R = 8
DEFAULT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
#: Threads computing scrypt in this process: at most this many at once (two cores are enough for two).
MAX_CONCURRENT_HASHES = 2
#: Seconds a hash or check may take, its wait included, before :class:`HashingBusy` (the default
#: [auth] timeout: a login waiting longer has failed anyway).
HASH_WAIT = 5.0
_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()

_FORMAT = re.compile(
    r"^\$scrypt\$ln=(?P<ln>[0-9]{1,2}),r=(?P<r>[0-9]{1,2}),p=(?P<p>[0-9]{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)$"
)


@dataclass(frozen=True)
class SecretHash:
    """A parsed ``secret_hash``; ``repr`` hides the salt and digest."""

    log_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        return f"SecretHash(scrypt, ln={self.log_n}, r={self.r}, p={self.p})"


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


class HashingBusy(TimeoutError):
    """A hash was not computed in time: the process is flooded with hashed logins.

    An authentication backend that lets it propagate fails the login closed
    (``AuthBackendError``) rather than reporting a wrong password.
    """


def _hashing_pool() -> ThreadPoolExecutor:
    """The process's hashing threads, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_CONCURRENT_HASHES, thread_name_prefix="ami-hash")
        return _pool


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=length)


def _derive(
    secret: str, salt: bytes, log_n: int, r: int, p: int, length: int, wait: Optional[float] = None,
) -> bytes:
    """scrypt on a hashing thread; :class:`HashingBusy` if the result is not there within ``wait`` seconds."""
    limit = HASH_WAIT if wait is None else wait
    job = _hashing_pool().submit(
        _scrypt, secret.encode("utf-8", "surrogateescape"), salt, 1 << log_n, r, p, length,
    )
    try:
        return job.result(timeout=limit)
    except FutureTimeout:
        job.cancel()  # not started yet: it never will be
        raise HashingBusy(f"secret hash not computed within {limit:g} s (too many at once)") from None


def parse_secret_hash(encoded: str) -> SecretHash:
    """Parse and sanity-check a hash string; raise ``ValueError`` saying what is wrong."""
    match = _FORMAT.match(encoded.strip()) if isinstance(encoded, str) else None
    if not match:
        raise ValueError("not a secret hash (expected $scrypt$ln=..,r=..,p=..$salt$hash from 'ami-server hash-secret')")
    log_n, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    if not 10 <= log_n <= 20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError(f"scrypt parameters out of range (ln 10-20, r 1-32, p 1-16): ln={log_n}, r={r}, p={p}")
    try:
        salt, digest = _b64decode(match["salt"]), _b64decode(match["hash"])
    except ValueError:
        raise ValueError("salt or hash is not valid base64") from None
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash is too short")
    return SecretHash(log_n, r, p, salt, digest)


def hash_secret(secret: str, *, log_n: int = DEFAULT_LOG_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """Hash ``secret`` with a fresh random salt (about 50 ms and 16 MiB with the defaults)."""
    if not secret:
        raise ValueError("the secret must not be empty")
    salt = os.urandom(_SALT_BYTES)
    digest = _derive(secret, salt, log_n, r, p, _HASH_BYTES)
    return f"$scrypt$ln={log_n},r={r},p={p}${_b64encode(salt)}${_b64encode(digest)}"


def verify_secret(secret: str, stored: "str | SecretHash", *, wait: Optional[float] = None) -> bool:
    """True if ``secret`` matches ``stored``; the comparison is constant-time.

    Waits at most ``wait`` seconds (default :data:`HASH_WAIT`) for a hashing
    slot, then raises :class:`HashingBusy`.
    """
    parsed = stored if isinstance(stored, SecretHash) else parse_secret_hash(stored)
    candidate = _derive(secret, parsed.salt, parsed.log_n, parsed.r, parsed.p, len(parsed.digest), wait)
    return hmac.compare_digest(candidate, parsed.digest)
