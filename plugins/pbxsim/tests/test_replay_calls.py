"""Byte-for-byte replays of Asterisk 22.10.1's call transcripts against ami-server with pbxsim.

The client bytes of each transcript are sent over real sockets to a server
running the transcripts' dialplan; what comes back must equal Asterisk's
bytes after masking the values that differ on every run: Uniqueids and
Linkedids, the Local channel counter, bridge UUIDs, durations, the "calls
processed" counter, and the order of list items (Asterisk lists channels in
hash-table order, which depends on those identifiers).
"""

from __future__ import annotations

import re
from typing import List

import pytest

from pbxconf import DIALPLAN, USERS  # also puts the repository's tests/ on sys.path

import transcripts
from ami_server.testing import make_config, running_server
from transcripts import Replayer, parse_transcript, reference_dir

REFERENCE = reference_dir()
pytestmark = pytest.mark.skipif(REFERENCE is None, reason="reference transcripts not found")

_BASE_MASK = transcripts.mask
_CALL_MASKS = [
    (re.compile(rb"\b1\d{9}\.\d+\b"), b"<UID>"),
    (re.compile(rb"(Local/[^\r\n!;@]+@[^\r\n!;-]+)-[0-9a-f]{8};"), rb"\1-<N>;"),
    (re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), b"<BRIDGE>"),
    (re.compile(rb"Duration: \d\d:\d\d:\d\d\r\n"), b"Duration: <D>\r\n"),
    (re.compile(rb"Seconds: \d+\r\n"), b"Seconds: <S>\r\n"),
    (re.compile(rb"(ANSWEREDTIME|DIALEDTIME)(_MS)?\r\nValue: \d+\r\n"), rb"\1\2\r\nValue: <T>\r\n"),
    (re.compile(rb"Output: \d+ calls? processed\r\n"), b"Output: <N> calls processed\r\n"),
]
_LIST_RE = re.compile(rb"(EventList: start\r\n(?:[^\r\n]+\r\n)*\r\n)((?:Event: [^\r\n]+\r\n(?:(?!EventList: Complete)[^\r\n]+\r\n)*\r\n)*)(Event: [^\r\n]+\r\n(?:[^\r\n]+\r\n)*EventList: Complete\r\n)")


def _sort_items(match: "re.Match[bytes]") -> bytes:
    items: List[bytes] = re.findall(rb"Event: [^\r\n]+\r\n(?:[^\r\n]+\r\n)*\r\n", match.group(2))
    return match.group(1) + b"".join(sorted(items)) + match.group(3)


def call_mask(data: bytes) -> bytes:
    data = _BASE_MASK(data)
    for pattern, replacement in _CALL_MASKS:
        data = pattern.sub(replacement, data)
    return _LIST_RE.sub(_sort_items, data)


# name: extra [plugins.pbxsim] settings. The client sends channel names it learned from
# Asterisk, so the simulator's counters start where Asterisk's were.
SCENARIOS = {
    "originate_async_local_lifecycle": {},
    "coreshowchannels": {"first_local": 0x0D, "first_uniqueid": 26},
    "status_action": {"first_local": 0x10, "first_uniqueid": 32},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_replay_call_transcript(name, monkeypatch):
    monkeypatch.setattr(transcripts, "mask", call_mask)
    plugin = {**DIALPLAN, **SCENARIOS[name]}
    config = make_config({"users": USERS, "plugins": {"pbxsim": plugin}}, login_failure_delay=0.2)
    transcript = parse_transcript(REFERENCE / f"{name}.txt")
    with running_server(config) as server:
        Replayer(server.host, server.port, step_timeout=6.0, max_gap=1.2).run(transcript)


def test_masks_keep_what_matters():
    """The masks hide per-run identifiers only: names, states and causes still differ."""
    one = b"Channel: Local/long@default-0000000d;1\r\nUniqueid: 1796224803.26\r\nCause: 16\r\n"
    two = b"Channel: Local/long@default-00000001;1\r\nUniqueid: 1700000000.3\r\nCause: 16\r\n"
    assert call_mask(one) == call_mask(two)
    assert call_mask(one) != call_mask(one.replace(b";1", b";2"))
    assert call_mask(one) != call_mask(one.replace(b"Cause: 16", b"Cause: 17"))
