"""Session event filters on RE2 (B-5.13, D-8.18): linear time, no fallback, bounded."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ami_server
from ami_server.filters import MAX_PATTERN_LENGTH, EventFilters, FilterPattern, compile_filter
from ami_server.testing import AMIClient, make_config, running_server

from helpers import USERS, process_config, start_server_process

DID_NOT_COMPILE = "Filter did not compile.  Check the syntax of the filter given."
#: Generous: only a frozen loop misses it (a backtracking engine would take hours).
LIVENESS = 2.0


def test_compile_filter_is_public_api():
    assert ami_server.compile_filter is compile_filter
    assert isinstance(compile_filter("Event: X"), FilterPattern)


@pytest.mark.parametrize("pattern", [
    r"(a)\1",            # backreference
    r"(?P<n>a)(?P=n)",   # named backreference
    r"(?=a)b",           # lookahead
    r"(?!a)b",           # negative lookahead
    r"(?<=a)b",          # lookbehind
    r"a++",              # possessive quantifier
    r"(",                # plain syntax error
    r"a{1001}",          # repetition beyond RE2's bound
])
def test_patterns_re2_cannot_compile_are_refused_not_run_by_python_re_d_8_18(pattern):
    with pytest.raises(ValueError, match="filter pattern does not compile"):
        compile_filter(pattern)


def test_pattern_length_is_bounded():
    assert compile_filter("a" * MAX_PATTERN_LENGTH).search("x" + "a" * MAX_PATTERN_LENGTH)
    with pytest.raises(ValueError, match=f"longer than {MAX_PATTERN_LENGTH} characters"):
        compile_filter("a" * (MAX_PATTERN_LENGTH + 1))


def test_a_pattern_too_large_for_its_memory_bound_is_refused():
    with pytest.raises(ValueError, match="pattern too large"):
        compile_filter(r"\pL{500}")


def test_search_takes_text_or_bytes_including_invalid_utf8_from_the_wire_p_1_22():
    pattern = compile_filter("Data: caf\u00e9")
    assert pattern.search("Data: caf\u00e9\r\n")
    assert pattern.search("Data: caf\u00e9\r\n".encode())
    # Wire bytes that are not UTF-8 reach filters surrogate-escaped (P-1.22).
    odd = b"Data: \xff\xfe\r\n".decode("utf-8", "surrogateescape")
    assert compile_filter("Data: ").search(odd)
    assert not pattern.search(odd)
    # A pattern that is not valid UTF-8 cannot be compiled.
    with pytest.raises(ValueError):
        compile_filter(b"\xff".decode("utf-8", "surrogateescape"))


def test_event_filters_include_exclude_and_limit_b_5_13():
    filters = EventFilters()
    assert filters.passes("anything") and len(filters) == 0
    filters.add("UserEvent: (a|b)", include=True)
    filters.add(compile_filter("Data: secret"), include=False)
    assert filters.passes("Event: UserEvent\r\nUserEvent: a\r\nData: x\r\n\r\n")
    assert filters.passes(b"Event: UserEvent\r\nUserEvent: b\r\nData: y\r\n\r\n")
    assert not filters.passes("Event: UserEvent\r\nUserEvent: c\r\nData: x\r\n\r\n")
    assert not filters.passes("Event: UserEvent\r\nUserEvent: a\r\nData: secret\r\n\r\n")
    with pytest.raises(ValueError):
        filters.add(r"(a)\1", include=True)
    while len(filters) < EventFilters.LIMIT:
        filters.add("x", include=False)
    with pytest.raises(ValueError, match="Too many filters"):
        filters.add("y", include=True)
    assert len(filters.include) == 1 and len(filters) == EventFilters.LIMIT


def test_filter_action_refuses_what_re2_cannot_compile_b_5_13_d_8_18():
    with running_server(make_config({"users": USERS}), entry_points=()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        for pattern in (r"(Event)\1", r"!(?=x)y", "a" * 1000 + "{2000}"):
            reply = c.action("Filter", {"Operation": "Add", "Filter": pattern})
            assert (reply["Response"], reply["Message"]) == ("Error", DID_NOT_COMPILE)
        assert c.action("Filter", {"Operation": "Add", "Filter": "(a+)+$"})["Message"] == "Success"


def test_filtered_session_gets_events_with_invalid_utf8_p_1_22():
    """Event text that came from the wire as invalid UTF-8 is searched as bytes, not an error."""
    with running_server(make_config({"users": USERS}), entry_points=()) as srv, \
            srv.client() as watcher, srv.client() as sender:
        watcher.login("admin", "adminpass", events="user")
        sender.login("admin", "adminpass", events="off")
        assert watcher.action("Filter", {"Operation": "Add", "Filter": "UserEvent: odd"})["Message"] == "Success"
        sender.send_raw(b"Action: UserEvent\r\nUserEvent: odd\r\nData: \xff\xfe\r\n\r\n")
        assert sender.read_response()["Message"] == "Event Sent"
        event = watcher.wait_event("UserEvent", timeout=LIVENESS)
        assert event.raw.endswith(b"Data: \xff\xfe\r\n\r\n")
        assert watcher.action("Ping", timeout=LIVENESS)["Ping"] == "Pong"


def test_catastrophic_pattern_does_not_freeze_the_server_b_5_13_d_8_18(tmp_path):
    """``(a+)+$`` against a pre-login action name of 55 ``a`` (the RequestNotAllowed event's text).

    With a backtracking engine this takes hours on the loop; every session would
    wait. The server runs as its own process so that a frozen loop fails this
    test instead of freezing the test run.
    """
    log_file = tmp_path / "ami.log"
    config = tmp_path / "config.toml"
    config.write_text(process_config(log_file) + """
[users.admin]
secret = "adminpass"
read = "all"
write = "all"

[users.reader]
secret = "readerpass"
read = "call"
write = []
""")
    process, port = start_server_process(config, log_file)
    try:
        with AMIClient("127.0.0.1", port, timeout=LIVENESS) as admin, \
                AMIClient("127.0.0.1", port, timeout=LIVENESS) as bystander, \
                AMIClient("127.0.0.1", port, timeout=LIVENESS) as stranger:
            assert bystander.login("reader", "readerpass")["Response"] == "Success"
            assert admin.login("admin", "adminpass")["Response"] == "Success"
            assert admin.action("Filter", {"Operation": "Add", "Filter": "(a+)+$"})["Message"] == "Success"
            stranger.send_raw(b"Action: " + b"a" * 55 + b"!\r\n\r\n")
            started = time.monotonic()
            pong = bystander.action("Ping", {"ActionID": "alive"})
            assert time.monotonic() - started < LIVENESS
            assert (pong["ActionID"], pong["Ping"]) == ("alive", "Pong")
            assert stranger.read_response()["Message"] == "Permission denied"
            # The filter was evaluated, and it does not match: the event is not delivered.
            assert admin.action("Ping")["Ping"] == "Pong"
            assert not [e for e in admin.events if e.get("Event") == "RequestNotAllowed"]
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def test_identical_filters_share_one_pattern_searched_once_per_event_d_8_18():
    """A fleet of sessions with the same Filter costs one search per event, not one per session."""
    from ami_server.filters import EventFilters

    first, second = compile_filter("UserEvent: ben[c]h"), compile_filter("UserEvent: ben[c]h")
    assert first is second
    calls = []
    original = first.matches
    object.__setattr__(first, "matches", lambda data: calls.append(data) or original(data))
    try:
        sessions = []
        for _ in range(5):
            filters = EventFilters()
            filters.add(first, include=True)
            sessions.append(filters)
        event = b"Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: bench\r\n\r\n"
        memo: dict = {}
        assert all(f.passes(event, memo) for f in sessions)
        assert len(calls) == 1
        assert sessions[0].passes(b"Event: UserEvent\r\nUserEvent: other\r\n\r\n") is False
    finally:
        object.__setattr__(first, "matches", original)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["a+b", "^Event: [A-Z]", "x$", "(foo|bar)baz", "\\d{2,3}", "[^\\r]*Z"]),
       st.binary(max_size=200))
def test_the_delivery_matcher_agrees_with_search(pattern, data):
    compiled = compile_filter(pattern)
    assert compiled.matches(data) == (compiled.search(data) is not None)
