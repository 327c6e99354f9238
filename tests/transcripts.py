"""Reading Asterisk wire transcripts and replaying them against ami-server.

A transcript lists, per connection, the exact bytes a client sent (``>>``)
and received (``<<``), with connects and server-side closes. Replay sends the
same bytes and compares what comes back after masking per-run values
(timestamps, SessionID, ports, challenges, uptime).
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from helpers import USERS

REFERENCE_DIRS = [
    Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "asterisk-22.10.1",
    Path(__file__).resolve().parent / "reference" / "asterisk-22.10.1",
]

_STEP_RE = re.compile(r"^\[\+\s*([0-9.]+)\] (?:C([0-9]+) (<<|>>|--) ?(.*)|NOTE: (.*))$")
_COUNT_RE = re.compile(r"^\((\d+) bytes\)$")


def reference_dir() -> Optional[Path]:
    for path in REFERENCE_DIRS:
        if path.is_dir():
            return path
    return None


@dataclass
class Step:
    time: float
    conn: int
    kind: str  # connect | send | recv | eof
    data: bytes = b""


@dataclass
class Transcript:
    name: str
    steps: List[Step] = field(default_factory=list)


def _unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "rnt":
            out += {"r": b"\r", "n": b"\n", "t": b"\t"}[text[i + 1]]
            i += 2
            continue
        out += ch.encode("utf-8")
        i += 1
    return bytes(out)


def parse_transcript(path: Path) -> Transcript:
    transcript = Transcript(path.stem)
    current: Optional[Step] = None
    expected_len = 0
    body: List[str] = []

    def close_step() -> None:
        nonlocal current, body
        if current is not None and current.kind in ("send", "recv"):
            current.data = _unescape("".join(body))
            if len(current.data) != expected_len:
                raise ValueError(
                    f"{path.name}: step at {current.time} has {len(current.data)} bytes, header says {expected_len}"
                )
        current, body = None, []

    for raw_line in path.read_text(encoding="utf-8").split("\n"):
        match = _STEP_RE.match(raw_line)
        if match:
            close_step()
            when, conn, arrow, rest, note = match.groups()
            if note is not None:
                continue
            step_time = float(when)
            if arrow in ("<<", ">>"):
                count = _COUNT_RE.match(rest.strip())
                if not count:
                    raise ValueError(f"{path.name}: bad step line {raw_line!r}")
                expected_len = int(count.group(1))
                current = Step(step_time, int(conn), "recv" if arrow == "<<" else "send")
                transcript.steps.append(current)
            elif rest.startswith("TCP connect"):
                transcript.steps.append(Step(step_time, int(conn), "connect"))
            elif rest.startswith("TLS connect"):
                transcript.steps.append(Step(step_time, int(conn), "connect_tls"))
            elif rest.startswith("connection closed by server"):
                transcript.steps.append(Step(step_time, int(conn), "eof"))
            elif rest.startswith("client closes"):
                transcript.steps.append(Step(step_time, int(conn), "close"))
            else:
                raise ValueError(f"{path.name}: unknown step {raw_line!r}")
            continue
        if raw_line.startswith("#") or current is None:
            continue
        # The recorder marks a chunk that ends mid-line with a trailing remark.
        body.append(raw_line.split("   <-- (no line terminator", 1)[0])
    close_step()
    return transcript


_MASKS: List[Tuple[re.Pattern, bytes]] = [
    (re.compile(rb"Timestamp: \d+\.\d{6}\r\n"), b"Timestamp: <TS>\r\n"),
    (re.compile(rb"(?<=: )(?!1970-01-01T00:00:00\.000\+0000)\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}\r\n"), b"<TV>\r\n"),
    (re.compile(rb"SessionID: 0x[0-9a-f]{12}\r\n"), b"SessionID: <SID>\r\n"),
    (re.compile(rb"(IPV[46]/(?:TCP|TLS)/[0-9a-fA-F.:]+)/\d+\r\n"), rb"\1/<PORT>\r\n"),
    (re.compile(rb"Uptime: \d+\r\n"), b"Uptime: <N>\r\n"),
    (re.compile(rb"LastReload: \d+\r\n"), b"LastReload: <N>\r\n"),
    (re.compile(rb"Challenge: [1-9]\d{8}\r\n"), b"Challenge: <CHALLENGE>\r\n"),
    # CoreStatus: the server's start and reload moments (B-5.15).
    (re.compile(rb"(Core(?:Startup|Reload)Date): \d{4}-\d\d-\d\d\r\n"), rb"\1: <DATE>\r\n"),
    (re.compile(rb"(Core(?:Startup|Reload)Time): \d\d:\d\d:\d\d\r\n"), rb"\1: <TIME>\r\n"),
    # core show version: who built it, where, on which machine and when (B-5.16).
    (re.compile(rb"(Output: Asterisk [0-9.]+ built by )[^\r\n]*\r\n"), rb"\1<BUILD>\r\n"),
]


def mask(data: bytes) -> bytes:
    for pattern, replacement in _MASKS:
        data = pattern.sub(replacement, data)
    return data


_CHALLENGE_RE = re.compile(rb"Challenge: ([1-9]\d{8})\r\n")
_KEY_RE = re.compile(rb"Key: ([0-9a-f]{32})")


class ReplayError(AssertionError):
    pass


class Replayer:
    """Replays one transcript against a server at ``(host, port)``."""

    def __init__(self, host: str, port: int, step_timeout: float = 8.0, max_gap: float = 0.15,
                 expected_transform: Optional[Callable[[int, bytes], bytes]] = None,
                 tls_port: Optional[int] = None, tls_context: Optional[ssl.SSLContext] = None) -> None:
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.tls_context = tls_context
        self.step_timeout = step_timeout
        self.max_gap = max_gap
        # Applied to all bytes recorded so far on a connection (spec §8 adjustments).
        self.transform = expected_transform or (lambda conn, data: data)
        self.socks: Dict[int, socket.socket] = {}
        self.expected: Dict[int, bytes] = {}
        self.recorded: Dict[int, bytes] = {}
        self.received: Dict[int, bytes] = {}
        self.closed: Dict[int, bool] = {}

    def _read(self, conn: int, deadline: float) -> bool:
        sock = self.socks[conn]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            self.closed[conn] = True
            return False
        self.received[conn] += data
        return True

    def _fail(self, conn: int, what: str) -> None:
        raise ReplayError(
            f"C{conn}: {what}\n--- expected (masked)\n{mask(self.expected[conn])!r}\n"
            f"--- received (masked)\n{mask(self.received[conn])!r}"
        )

    def _rewrite_key(self, conn: int, data: bytes) -> bytes:
        """Recompute an MD5 Key that was correct for Asterisk's challenge for ours."""
        match = _KEY_RE.search(data)
        if not match:
            return data
        theirs = _CHALLENGE_RE.findall(self.recorded[conn])
        ours = _CHALLENGE_RE.findall(self.received[conn])
        if not theirs or not ours:
            return data
        for user in USERS.values():
            secret = user["secret"].encode()
            if hashlib.md5(theirs[-1] + secret).hexdigest().encode() == match.group(1):
                new_key = hashlib.md5(ours[-1] + secret).hexdigest().encode()
                return data.replace(match.group(1), new_key)
        return data

    def _check_drained(self, conn: int, wait: float = 0.3) -> None:
        deadline = time.monotonic() + wait
        while not self.closed[conn] and self._read(conn, deadline):
            pass
        if mask(self.received[conn]) != mask(self.expected[conn]):
            self._fail(conn, "received bytes the transcript does not have")

    def run(self, transcript: Transcript) -> int:
        """Replay ``transcript``; raise :class:`ReplayError` at the first difference.

        Returns how many of its received chunks arrived as recorded (every one, when it returns).
        """
        previous = 0.0
        matched = 0
        try:
            for step in transcript.steps:
                gap = step.time - previous
                previous = step.time
                if step.kind in ("connect", "send") and gap > 0.05:
                    time.sleep(min(gap, self.max_gap))
                conn = step.conn
                if step.kind in ("connect", "connect_tls"):
                    if step.kind == "connect_tls":
                        if self.tls_port is None or self.tls_context is None:
                            raise ReplayError(f"C{conn}: the transcript connects over TLS; no TLS listener given")
                        raw = socket.create_connection((self.host, self.tls_port), timeout=self.step_timeout)
                        sock = self.tls_context.wrap_socket(raw, server_hostname=self.host)
                    else:
                        sock = socket.create_connection((self.host, self.port), timeout=self.step_timeout)
                    self.socks[conn] = sock
                    self.expected[conn] = b""
                    self.recorded[conn] = b""
                    self.received[conn] = b""
                    self.closed[conn] = False
                elif step.kind == "send":
                    data = self._rewrite_key(conn, step.data)
                    try:
                        self.socks[conn].sendall(data)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                elif step.kind == "recv":
                    self.recorded[conn] += step.data
                    self.expected[conn] = self.transform(conn, self.recorded[conn])
                    want = mask(self.expected[conn])
                    deadline = time.monotonic() + self.step_timeout
                    while not mask(self.received[conn]).startswith(want):
                        if not self._read(conn, deadline):
                            self._fail(conn, "expected bytes did not arrive")
                    matched += 1
                elif step.kind == "close":
                    self._check_drained(conn)
                    self.socks[conn].close()
                    self.closed[conn] = True
                elif step.kind == "eof":
                    deadline = time.monotonic() + self.step_timeout
                    while not self.closed[conn]:
                        if not self._read(conn, deadline) and not self.closed[conn]:
                            self._fail(conn, "server did not close the connection")
                    if mask(self.received[conn]) != mask(self.expected[conn]):
                        self._fail(conn, "bytes before the close differ")
            # Nothing unexpected may follow.
            time.sleep(0.3)
            for conn in self.socks:
                self._check_drained(conn, 0.02)
            return matched
        finally:
            for sock in self.socks.values():
                sock.close()
