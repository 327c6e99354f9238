"""Numeric headers out of range get a clear error, never ``Internal error`` (B-5.11, C-4.5)."""

from __future__ import annotations

import pytest

from ami_server.builtin.waitevent import MAX_TIMEOUT, TIMEOUT_TOO_LARGE, parse_timeout
from ami_server.privileges import ALL, CLASSES, parse_event_mask
from ami_server.testing import make_config, running_server

from helpers import USERS

HUGE = "9" * 1000


@pytest.mark.parametrize("value, seconds", [
    (None, None), ("", None), ("soon", None), ("-1", None), ("-7", None), ("-" + HUGE, None),
    ("0", 0), ("-0", 0), ("+5", 5), ("010", 10), ("12abc", 12), (str(MAX_TIMEOUT), MAX_TIMEOUT),
    ("000000000000000000042", 42),
])
def test_parse_timeout_b_5_11(value, seconds):
    assert parse_timeout(value) == seconds


@pytest.mark.parametrize("value", [str(MAX_TIMEOUT + 1), HUGE, "+" + HUGE, "9" * 5000])
def test_parse_timeout_refuses_a_wait_out_of_range_b_5_11(value):
    with pytest.raises(ValueError, match="Invalid timeout"):
        parse_timeout(value)


def test_numeric_event_mask_of_any_length_is_parsed_or_invalid_c_4_5():
    assert parse_event_mask("0" * 2000 + "16") == CLASSES["command"]
    assert parse_event_mask("2147483647") == ALL
    assert parse_event_mask("2147483648") is None
    assert parse_event_mask("1" * 5000) is None  # int() itself refuses over 4300 digits


def test_waitevent_with_a_huge_timeout_answers_a_clear_error_b_5_11():
    with running_server(make_config({"users": USERS}), entry_points=()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        for value in (HUGE, str(MAX_TIMEOUT + 1)):
            reply = c.action("WaitEvent", {"ActionID": "w1", "Timeout": value}, timeout=2)
            assert reply.lines == [("Response", "Error"), ("ActionID", "w1"), ("Message", TIMEOUT_TOO_LARGE)]
        # A huge negative value means no limit: the wait ends with the next input (B-5.11).
        c.send("WaitEvent", {"ActionID": "w2", "Timeout": "-" + HUGE})
        c.send("Ping", {"ActionID": "p"})
        done = c.read_block(timeout=2)
        assert (done["Response"], done["ActionID"]) == ("Success", "w2")
        assert c.read_block(timeout=2).lines == [("Event", "WaitEventComplete"), ("ActionID", "w2")]
        assert c.read_response(timeout=2)["Ping"] == "Pong"


def test_huge_event_masks_are_invalid_not_internal_errors_c_4_5():
    with running_server(make_config({"users": USERS}), entry_points=()) as srv, srv.client() as c:
        reply = c.login("admin", "adminpass", events=HUGE)
        assert reply["Message"] == "Authentication accepted"
        reply = c.action("Events", {"EventMask": HUGE}, timeout=2)
        assert (reply["Response"], reply["Message"]) == ("Error", "Invalid event mask")
