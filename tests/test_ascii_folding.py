"""Case-insensitive names fold ASCII only, as Asterisk's strcasecmp does (P-1.12, P-1.15, A-3.3, C-4.5).

Python's ``str.lower`` and ``casefold`` map some non-ASCII code points onto
ASCII letters (U+212A KELVIN SIGN -> ``k``, U+017F LONG S -> ``s``, U+0130
-> ``i`` + a combining dot, ligatures -> ``ff``, ``fi``...). None of them may
name an action, a header, a user, a class or a CLI command.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import List, Tuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ami_server import Action, AuthRequest, CliCommand, Response
from ami_server.builtin.config_auth import ConfigBackend
from ami_server.plugins import ActionRegistry, RegisteredAction, RegisteredCli
from ami_server.privileges import CLASSES, ClassListError, parse_class_list, parse_event_mask
from ami_server.protocol import Message, ascii_lower
from ami_server.testing import make_config, running_server

from helpers import USERS

KELVIN = "\u212a"


@lru_cache(maxsize=None)
def look_alikes() -> Tuple[str, ...]:
    """Every non-ASCII code point whose lower() or casefold() holds an ASCII letter."""
    found = []
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        folded = char.lower() + char.casefold()
        if any(c.isascii() and c.isalpha() for c in folded):
            found.append(char)
    return tuple(found)


def test_the_look_alikes_include_the_known_traps():
    found = look_alikes()
    assert {"\u212a", "\u0130", "\u017f", "\u00df", "\ufb01"} <= set(found)
    assert all(not c.isascii() for c in found)


@st.composite
def spoofs(draw, names: List[str]) -> Tuple[str, str]:
    """An ASCII ``name`` and the same name with a look-alike put in, where it imitates letters if it can."""
    name = draw(st.sampled_from(names))
    char = draw(st.sampled_from(look_alikes()))
    imitated = {f for f in (char.lower(), char.casefold()) if f.isascii()}
    spots = [(i, len(f)) for f in sorted(imitated) for i in range(len(name)) if name.lower().startswith(f, i)]
    if spots:
        index, length = draw(st.sampled_from(spots))
    else:
        index, length = draw(st.integers(0, len(name) - 1)), 1
    return name, name[:index] + char + name[index + length:]


def test_ascii_lower_folds_a_to_z_only():
    assert ascii_lower("SessionKICK") == "sessionkick"
    assert ascii_lower("SessionKic" + KELVIN) == "sessionkic" + KELVIN
    assert ascii_lower("\u0130\u017f\u00dfAZ[@\u00c4") == "\u0130\u017f\u00dfaz[@\u00c4"
    # Surrogate-escaped wire bytes (P-1.22) survive.
    raw = b"X-\xff\xfeAB".decode("utf-8", "surrogateescape")
    assert ascii_lower(raw) == b"x-\xff\xfeab".decode("utf-8", "surrogateescape")


ACTION_NAMES = [
    "Login", "Logoff", "Challenge", "Ping", "Events", "ListCommands", "UserEvent", "WaitEvent",
    "CoreSettings", "CoreStatus", "Filter", "Command", "ServerStatus", "SessionList", "SessionKick",
    "ServerReload",
]


def registry() -> ActionRegistry:
    reg = ActionRegistry()
    entries = [RegisteredAction(Action(n, lambda ctx: Response.success(), "Test.", ()), "test") for n in ACTION_NAMES]
    clis = [RegisteredCli(CliCommand(c, lambda ctx, args: []), "test")
            for c in ("core show version", "kick all", "sip show peers", "module reload")]
    reg.add_all(entries, builtin=True, clis=clis)
    return reg


REGISTRY = registry()


@settings(max_examples=300, deadline=None)
@given(spoofs(ACTION_NAMES))
@example(("SessionKick", "SessionKic" + KELVIN))
def test_no_look_alike_names_an_action_p_1_15(pair):
    name, spoof = pair
    assert REGISTRY.get(name).action.name == name
    assert REGISTRY.get(name.upper()).action.name == name
    assert REGISTRY.get(spoof) is None


@settings(max_examples=200, deadline=None)
@given(spoofs(["core show version", "kick all", "sip show peers", "module reload"]))
@example(("kick all", KELVIN + "ick all"))
def test_no_look_alike_names_a_cli_command_b_5_16(pair):
    name, spoof = pair
    found = REGISTRY.find_cli(name.upper() + " extra")
    assert found is not None and found[1] == ("extra",)
    assert REGISTRY.find_cli(spoof) is None


def test_cli_words_split_at_ascii_blanks_only():
    assert REGISTRY.find_cli("core\tshow  version")[0].command.command == "core show version"
    assert REGISTRY.find_cli("core\u00a0show version") is None
    assert REGISTRY.find_cli("core show\u2003version") is None


HEADER_NAMES = [
    "Action", "ActionID", "Username", "Secret", "Key", "AuthType", "Events", "EventMask", "Timeout",
    "Filter", "Operation", "SessionID", "Command", "UserEvent",
]


@settings(max_examples=300, deadline=None)
@given(spoofs(HEADER_NAMES))
@example(("Key", KELVIN + "ey"))
@example(("Action", "Acti\u0130n"))
def test_no_look_alike_header_name_matches_p_1_12(pair):
    name, spoof = pair
    message = Message([f"{spoof}: forged", "Action: Ping", f"{name.upper()}: real"])
    assert message.action == "Ping"
    assert message.get(name) == ("Ping" if name == "Action" else "real")
    assert message.get_all(name) == (["Ping", "real"] if name == "Action" else ["real"])
    assert message.get(spoof) == "forged"
    if name == "ActionID":
        assert message.action_id == "real"
    alone = Message([f"{spoof}: forged"])
    assert alone.get(name) is None and alone.action == "" and alone.action_id == ""


USER_NAMES = ["kate", "ksmith", "sysop", "office", "finance", "admin", "hank", "jim"]
USER_CONFIG = make_config({"users": {n: {"secret": f"{n}-pass", "read": "all"} for n in USER_NAMES}})
BACKEND = ConfigBackend()
BACKEND.use_users(USER_CONFIG.users)


@settings(max_examples=300, deadline=None)
@given(spoofs(USER_NAMES))
@example(("kate", KELVIN + "ate"))
def test_no_look_alike_names_a_user_a_3_3(pair):
    name, spoof = pair
    assert USER_CONFIG.user(name.upper()).name == name
    assert USER_CONFIG.user(spoof) is None
    assert BACKEND.authenticate(AuthRequest(username=name.upper(), auth_type="plain", secret=f"{name}-pass")).accepted
    assert BACKEND.authenticate(AuthRequest(username=spoof, auth_type="plain", secret=f"{name}-pass")) is None


WORDS = sorted(CLASSES) + ["all", "none", "on", "off", "yes", "no", "true", "false"]


@settings(max_examples=300, deadline=None)
@given(spoofs(WORDS))
@example(("off", "o\ufb00"))
def test_no_look_alike_names_a_class_or_mask_word_c_4_2_c_4_5(pair):
    name, spoof = pair
    assert parse_event_mask(spoof) == 0
    with pytest.raises(ClassListError) as caught:
        parse_class_list(spoof)
    assert caught.value.reason == "unknown class"


def test_login_with_a_look_alike_username_is_refused_a_3_3():
    users = {**USERS, "kate": {"secret": "katepass", "read": "all", "write": "all"}}
    with running_server(make_config({"users": users}), entry_points=()) as srv:
        with srv.client() as c:
            assert c.login("KATE", "katepass")["Message"] == "Authentication accepted"
        with srv.client() as c:
            c.send_raw(f"Action: Login\r\nUsername: {KELVIN}ate\r\nSecret: katepass\r\n\r\n".encode())
            reply = c.read_response()
            assert (reply["Response"], reply["Message"]) == ("Error", "Authentication failed")


def test_look_alike_action_name_is_unknown_end_to_end_p_1_15():
    with running_server(make_config({"users": USERS}), entry_points=()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        c.send_raw(f"Action: SessionKic{KELVIN}\r\nActionID: k1\r\nSessionID: 0x1\r\n\r\n".encode())
        reply = c.read_response()
        assert reply.lines == [
            ("Response", "Error"), ("ActionID", "k1"),
            ("Message", f"Invalid/unknown command: SessionKic{KELVIN}. "
                        "Use Action: ListCommands to show available commands."),
        ]
