"""Replay of Asterisk 22.10.1 wire transcripts against a real ami-server (P-0.1).

Each R1 transcript's client bytes are sent over real sockets; the bytes that
come back must equal Asterisk's after masking per-run values. The only
adjustments made to Asterisk's bytes are the deliberate differences of spec
§8, each named where it is applied.
"""

from __future__ import annotations

import re

import pytest

from ami_server import Action, hookimpl
from ami_server.testing import make_config, running_server

from transcripts import USERS, Replayer, parse_transcript, reference_dir

REFERENCE = reference_dir()
pytestmark = pytest.mark.skipif(REFERENCE is None, reason="reference transcripts not found")

# spec B-5.7: ami-server lists its own R1 actions, not Asterisk's modules.
_R1_LIST = (
    b"Challenge: Generate Challenge for MD5 Auth.  (Priv: <none>)\r\n"
    b"Events: Control Event Flow.  (Priv: <none>)\r\n"
    b"ListCommands: List available manager commands.  (Priv: <none>)\r\n"
    b"Login: Login Manager.  (Priv: <none>)\r\n"
    b"Logoff: Logoff Manager.  (Priv: <none>)\r\n"
    b"Ping: Keepalive command.  (Priv: <none>)\r\n"
)
_R1_USEREVENT = b"UserEvent: Send an arbitrary event.  (Priv: user,all)\r\n"
_R1_WAITEVENT = b"WaitEvent: Wait for an event to occur.  (Priv: <none>)\r\n"


_LIST_RE = re.compile(
    rb"(Response: Success\r\n(?:ActionID: [^\r\n]*\r\n)?)((?:[^\r\n]*\(Priv: [^\r\n]*\)\r\n)+)(\r\n)?"
)


def _own_list(with_userevent: bool):
    body = _R1_LIST + (_R1_USEREVENT if with_userevent else b"") + _R1_WAITEVENT + b"\r\n"

    def transform(conn: int, data: bytes) -> bytes:
        out, pos = [], 0
        for match in _LIST_RE.finditer(data):
            out.append(data[pos : match.start()])
            if match.group(3) is None:
                # The recorded list is not complete yet: compare up to its head.
                out.append(match.group(1))
                pos = len(data)
                break
            out.append(match.group(1) + body)
            pos = match.end()
        out.append(data[pos:])
        return b"".join(out)

    return transform


def _lone_cr_to_space(conn: int, data: bytes) -> bytes:
    # D-8.4: a lone CR inside a value is written as a space.
    return re.sub(rb"\r(?!\n)", b" ", data)


def _challenge_failed(conn: int, data: bytes) -> bytes:
    # D-8.7: attempted Username as AccountID; Response and ExpectedResponse omitted.
    if b"Event: ChallengeResponseFailed" not in data:
        return data
    data = data.replace(b"AccountID: \r\n", b"AccountID: admin\r\n")
    data = re.sub(rb"(?<=\n)Response: [0-9a-f]{32}\r\n", b"", data)
    return re.sub(rb"ExpectedResponse: [0-9a-f]{32}\r\n", b"", data)


def _userevent_lines(conn: int, data: bytes) -> bytes:
    # D-8.5: copied lines are written as "Name: value".
    return data.replace(b"Header2:value2\r\n", b"Header2: value2\r\n")


class AsteriskStandIns:
    """Actions Asterisk has and R1 does not, declared with Asterisk's classes.

    permission_denied.txt only sends them to users who lack those classes, so
    their handlers never run; the replay checks the C-4.3 decision.
    """

    @hookimpl
    def register_actions(self):
        def unreachable(ctx):
            raise AssertionError("a denied action ran")

        return [
            Action("Originate", unreachable, "Originate a call.", "originate"),
            Action("Command", unreachable, "Execute Asterisk CLI Command.", "command"),
            Action("CoreStatus", unreachable, "Show PBX core status variables.", "system,reporting"),
            Action("Filter", unreachable, "Dynamically add filters for the current manager session.", "system"),
        ]


SCENARIOS = {
    # name: (extra server settings, expected transform, extra plugins)
    "banner": ({}, None, ()),
    "bare_lf_line_endings": ({}, _lone_cr_to_space, ()),
    "long_header_line": ({}, None, ()),
    "too_many_headers": ({}, None, ()),
    "too_many_headers_before_login": ({}, None, ()),
    "empty_action": ({}, None, ()),
    "missing_action_header": ({}, None, ()),
    "header_case": ({}, None, ()),
    "header_spacing": ({}, None, ()),
    "pipelining_and_fragmentation": ({}, None, ()),
    "ping": ({}, None, ()),
    "ping_before_login": ({}, None, ()),
    "unknown_action": ({}, None, ()),
    "listcommands_before_login": ({}, None, ()),
    "listcommands_admin": ({}, _own_list(True), ()),
    "listcommands_reader": ({}, _own_list(False), ()),
    "listcommands_limited": ({}, _own_list(False), ()),
    "permission_denied": ({}, None, (("asterisk-stand-ins", AsteriskStandIns()),)),
    "userevent_permission": ({}, None, ()),
    "login_plaintext_ok": ({}, None, ()),
    "login_plaintext_ok_actionid": ({}, None, ()),
    "login_reader_and_limited": ({}, None, ()),
    "login_events_off": ({}, None, ()),
    "login_events_mask_on_login": ({}, None, ()),
    "login_missing_fields": ({}, None, ()),
    "login_bad_secret": ({}, None, ()),
    "login_unknown_user": ({}, None, ()),
    "failed_login_then_retry_same_connection": ({}, None, ()),
    "failed_logins_repeated": ({}, None, ()),
    "login_md5_ok": ({}, None, ()),
    "login_md5_bad_key": ({}, _challenge_failed, ()),
    "challenge_bad_authtype": ({}, None, ()),
    "second_login": ({}, None, ()),
    "logoff": ({}, None, ()),
    "events_action": ({}, None, ()),
    "events_action_effect": ({}, None, ()),
    "userevent": ({}, _userevent_lines, ()),
    "waitevent": ({}, None, ()),
    # The transcript's server used authtimeout=30; the bytes are the same at 2 s.
    "authtimeout": ({"auth_timeout": 2}, None, ()),
    "authlimit": ({}, None, ()),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_replay(name):
    settings, transform, plugins = SCENARIOS[name]
    config = make_config({"users": USERS}, login_failure_delay=0.2, **settings)
    transcript = parse_transcript(REFERENCE / f"{name}.txt")
    # Only the builtin R1 actions: installed third-party plugins are left out.
    with running_server(config, extra_plugins=plugins, entry_points=()) as server:
        Replayer(server.host, server.port, expected_transform=transform).run(transcript)


def test_replay_tls_login(tmp_path):
    """P-1.1 over TLS: banner after the handshake, TLS in the A-3.14 addresses."""
    from tlsutil import client_context, make_certificate

    cert, key = make_certificate(tmp_path)
    config = make_config(
        {"users": USERS, "server": {"tls": {"host": "127.0.0.1", "port": 0, "certificate": str(cert), "key": str(key)}}},
        login_failure_delay=0.2,
    )
    transcript = parse_transcript(REFERENCE / "tls_login.txt")
    with running_server(config, entry_points=()) as server:
        Replayer(
            server.host, server.port, tls_port=server.server.tls_address[1], tls_context=client_context(cert),
        ).run(transcript)


def test_every_r1_transcript_is_replayed():
    """A new transcript in the reference set must be classified here, not silently skipped."""
    later = {"filter", "coresettings_corestatus", "command_action", "response_event_order"}
    names = {p.stem for p in REFERENCE.glob("*.txt")} - {"00-SUMMARY"}
    assert names - later - {"tls_login"} == set(SCENARIOS)
