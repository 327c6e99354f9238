"""Replay of call transcripts in which Asterisk orders events between channels differently on each run.

Asterisk raises a call's events from several threads, so two recordings of
the same actions interleave the channels' events differently; only each
channel's own sequence is stable. This replay mode sends a transcript's
client bytes as :class:`transcripts.Replayer` does, and compares per
connection, after masking:

- the replies (the banner, each response, and each list from its start
  response to its Complete event as one unit), byte for byte and in order;
- the broadcast events grouped by what they are about (the first of Channel,
  DestChannel, LocalOneChannel, BridgeUniqueid and Device, else the event
  name), each group's sequence byte for byte. OriginateResponse is a group
  of its own (per channel): Asterisk raises it from the originating thread,
  so it falls anywhere among the channel's first events.

Nothing else may differ: no group, reply or event may be missing or extra.
Channel names are grouped as sent (the scenario starts the simulator's Local
counter where Asterisk's was); other key values are masked, since bridge
UUIDs are new on every run.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from transcripts import ReplayError, Transcript

Mask = Callable[[bytes], bytes]
Key = Tuple[bytes, bytes]

_KEY_HEADERS = (b"Channel", b"DestChannel", b"LocalOneChannel", b"BridgeUniqueid", b"Device")
_RAW_KEYS = {b"Channel", b"DestChannel", b"LocalOneChannel", b"Device"}
_BANNER = re.compile(rb"Asterisk Call Manager/[^\r\n]*\r\n")


@dataclass
class Stream:
    """One connection's bytes split into replies and per-key event sequences (complete messages only)."""

    replies: List[bytes] = field(default_factory=list)
    events: Dict[Key, List[bytes]] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"replies ({len(self.replies)}):"] + [f"  {r!r}" for r in self.replies]
        for key, items in sorted(self.events.items()):
            lines.append(f"events {key[0].decode()}={key[1].decode(errors='replace')} ({len(items)}):")
            lines += [f"  {e!r}" for e in items]
        return "\n".join(lines)


def _header(message: bytes, name: bytes) -> Optional[bytes]:
    match = re.search(rb"(?:^|\r\n)" + name + rb": ([^\r\n]*)\r\n", message)
    return match.group(1) if match else None


def event_key(message: bytes, mask: Mask) -> Key:
    """What a broadcast event is about: the first key header present, else its name."""
    for name in _KEY_HEADERS:
        value = _header(message, name)
        if value is not None:
            value = value if name in _RAW_KEYS else mask(value)
            if message.startswith(b"Event: OriginateResponse\r\n"):
                name = b"OriginateResponse " + name
            return name, value
    return b"Event", _header(message, b"Event") or b""


def _is_broadcast(message: bytes) -> bool:
    # Broadcast events carry "Privilege: <class>,all" on their second line; list items and
    # action-owned events (WaitEventComplete, ...) carry none, Status items "Privilege: Call".
    return message.startswith(b"Event: ") and re.match(rb"Event: [^\r\n]*\r\nPrivilege: [a-z,]+,all\r\n",
                                                       message) is not None


def split_stream(data: bytes, mask: Mask) -> Stream:
    """Split received bytes into masked replies and masked, grouped events; an unfinished tail is left out."""
    stream = Stream()
    pos = 0
    banner = _BANNER.match(data)
    if banner:
        stream.replies.append(mask(banner.group(0)))
        pos = banner.end()
    listing: Optional[bytes] = None
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        message = data[pos:end + 4]
        pos = end + 4
        if listing is not None:
            listing += message
            if b"\r\nEventList: Complete\r\n" in message:
                stream.replies.append(mask(listing))
                listing = None
        elif message.startswith(b"Response: ") and b"\r\nEventList: start\r\n" in message:
            listing = message
        elif _is_broadcast(message):
            stream.events.setdefault(event_key(message, mask), []).append(mask(message))
        else:
            stream.replies.append(mask(message))
    return stream


def covers(received: Stream, expected: Stream) -> bool:
    """Whether ``received`` has at least as many replies, and events in every group, as ``expected``."""
    if len(received.replies) < len(expected.replies):
        return False
    return all(len(received.events.get(key, ())) >= len(items) for key, items in expected.events.items())


def first_difference(received: Stream, expected: Stream, exact: bool) -> Optional[str]:
    """The first reply or group where ``received`` differs from ``expected`` (only its prefix unless ``exact``)."""
    for i, want in enumerate(expected.replies):
        got = received.replies[i] if i < len(received.replies) else None
        if got != want:
            return f"reply {i}: expected {want!r}, received {got!r}"
    if exact and len(received.replies) > len(expected.replies):
        return f"extra reply: {received.replies[len(expected.replies)]!r}"
    for key, want_items in expected.events.items():
        got_items = received.events.get(key, [])
        for i, want in enumerate(want_items):
            got = got_items[i] if i < len(got_items) else None
            if got != want:
                return f"events about {key!r}, #{i}: expected {want!r}, received {got!r}"
        if exact and len(got_items) > len(want_items):
            return f"events about {key!r}: extra {got_items[len(want_items)]!r}"
    if exact:
        for key in received.events.keys() - expected.events.keys():
            return f"events about {key!r}, which Asterisk did not send: {received.events[key][0]!r}"
    return None


class ChannelReplayer:
    """Replays one call transcript against ``(host, port)``, comparing replies and per-channel events."""

    def __init__(self, host: str, port: int, mask: Mask, step_timeout: float = 8.0, max_gap: float = 1.2,
                 expected_transform: Optional[Callable[[int, bytes], bytes]] = None) -> None:
        self.host = host
        self.port = port
        self.mask = mask
        self.step_timeout = step_timeout
        self.max_gap = max_gap
        self.transform = expected_transform or (lambda conn, data: data)
        self.socks: Dict[int, socket.socket] = {}
        self.recorded: Dict[int, bytes] = {}
        self.received: Dict[int, bytes] = {}
        self.closed: Dict[int, bool] = {}

    def _read(self, conn: int, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed[conn]:
            return False
        sock = self.socks[conn]
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed[conn] = True
            return False
        self.received[conn] += data
        return True

    def _streams(self, conn: int) -> Tuple[Stream, Stream]:
        expected = split_stream(self.transform(conn, self.recorded[conn]), self.mask)
        return split_stream(self.received[conn], self.mask), expected

    def _fail(self, conn: int, what: str) -> None:
        received, expected = self._streams(conn)
        raise ReplayError(f"C{conn}: {what}\n--- expected\n{expected.describe()}\n--- received\n{received.describe()}")

    def _wait_covered(self, conn: int) -> None:
        deadline = time.monotonic() + self.step_timeout
        while True:
            received, expected = self._streams(conn)
            if covers(received, expected):
                break
            if not self._read(conn, deadline):
                self._fail(conn, "expected replies or events did not arrive")
        difference = first_difference(received, expected, exact=False)
        if difference:
            self._fail(conn, difference)

    def _check_exact(self, conn: int, wait: float) -> None:
        deadline = time.monotonic() + wait
        while self._read(conn, deadline):
            pass
        received, expected = self._streams(conn)
        difference = first_difference(received, expected, exact=True)
        if difference:
            self._fail(conn, difference)

    def run(self, transcript: Transcript) -> int:
        """Replay ``transcript``; raise :class:`ReplayError` at the first difference.

        Returns how many replies and events were compared (all connections).
        """
        previous = 0.0
        try:
            for step in transcript.steps:
                gap = step.time - previous
                previous = step.time
                if step.kind in ("connect", "send") and gap > 0.05:
                    time.sleep(min(gap, self.max_gap))
                conn = step.conn
                if step.kind == "connect":
                    self.socks[conn] = socket.create_connection((self.host, self.port), timeout=self.step_timeout)
                    self.recorded[conn] = self.received[conn] = b""
                    self.closed[conn] = False
                elif step.kind == "connect_tls":
                    raise ReplayError(f"C{conn}: TLS connections are not replayed in this mode")
                elif step.kind == "send":
                    try:
                        self.socks[conn].sendall(step.data)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                elif step.kind == "recv":
                    self.recorded[conn] += step.data
                    self._wait_covered(conn)
                elif step.kind == "close":
                    self._check_exact(conn, 0.3)
                    self.socks[conn].close()
                    self.closed[conn] = True
                elif step.kind == "eof":
                    deadline = time.monotonic() + self.step_timeout
                    while not self.closed[conn]:
                        if not self._read(conn, deadline) and not self.closed[conn]:
                            self._fail(conn, "server did not close the connection")
                    self._check_exact(conn, 0.0)
            time.sleep(0.3)
            compared = 0
            for conn in self.socks:
                self._check_exact(conn, 0.02)
                received, _ = self._streams(conn)
                compared += len(received.replies) + sum(len(items) for items in received.events.values())
            return compared
        finally:
            for sock in self.socks.values():
                sock.close()
