"""Salted, slow secret hashes for stored credentials (``secret_hash`` in config.toml).

Format (PHC string style): ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>``
with unpadded standard base64. A hashed secret cannot answer an MD5 challenge
(A-3.5 needs the plaintext), so users with ``secret_hash`` log in with
``Secret`` only -- preferably over TLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

__all__ = ["hash_secret", "verify_secret", "parse_secret_hash", "SecretHash"]

DEFAULT_LOG_N = 14
DEFAULT_R = 8
DEFAULT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
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


def _derive(secret: str, salt: bytes, log_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        secret.encode("utf-8", "surrogateescape"), salt=salt, n=n, r=r, p=p,
        maxmem=256 * n * r + (1 << 20), dklen=length,
    )


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


def verify_secret(secret: str, stored: "str | SecretHash") -> bool:
    """True if ``secret`` matches ``stored``; the comparison is constant-time."""
    parsed = stored if isinstance(stored, SecretHash) else parse_secret_hash(stored)
    candidate = _derive(secret, parsed.salt, parsed.log_n, parsed.r, parsed.p, len(parsed.digest))
    return hmac.compare_digest(candidate, parsed.digest)
