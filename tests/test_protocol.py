"""The sans-IO protocol core, without sockets (spec §1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ami_server.protocol import (
    MAX_LINES,
    TOO_LONG,
    TOO_MANY,
    Message,
    Parser,
    ReplyRenderer,
    render_block,
    render_response,
)


def parse_all(*chunks: bytes) -> list[Message]:
    parser = Parser()
    out = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.messages())
    return out


def test_crlf_and_bare_lf_both_end_lines_p_1_4():
    [msg] = parse_all(b"Action: Ping\nActionID: a\r\n\n")
    assert msg.action == "Ping" and msg.action_id == "a"


def test_lone_cr_is_data_p_1_4():
    [msg] = parse_all(b"Action: Ping\r\r\n\r\n")
    assert msg.action == "Ping\r"
    [msg] = parse_all(b"Action: Ping\rActionID: x\r\n\r\n")
    assert msg.action == "Ping\rActionID: x" and msg.action_id == ""


def test_nul_cuts_the_line_p_1_5():
    [msg] = parse_all(b"Action: Ping\x00junk\r\nActionID: 7\r\n\r\n")
    assert msg.lines == ("Action: Ping", "ActionID: 7")
    # A line that is empty after the cut is an empty line: it ends the message.
    msgs = parse_all(b"Action: Ping\r\n\x00rest\r\n")
    assert [m.action for m in msgs] == ["Ping"]


def test_line_limits_match_asterisk_p_1_6():
    ok = parse_all(b"Action: Ping\r\nX: " + b"a" * (1022 - 3) + b"\r\n\r\n")
    assert [m.error for m in ok] == [None]
    # 1023 bytes + CRLF: too long, and the split CR|LF ends the message early.
    msgs = parse_all(b"Action: Ping\r\nX: " + b"a" * (1023 - 3) + b"\r\n\r\n")
    assert [m.error for m in msgs] == [TOO_LONG, None]
    assert msgs[1].empty
    for size in (1024, 1100, 3000):
        msgs = parse_all(b"Action: Ping\r\nActionID: L\r\nX: " + b"b" * (size - 3) + b"\r\n\r\n")
        assert [m.error for m in msgs] == [TOO_LONG]
        assert msgs[0].action_id == "L"


def test_bare_lf_line_of_1023_bytes_is_accepted_p_1_6():
    [msg] = parse_all(b"Action: Ping\nX: " + b"c" * (1023 - 3) + b"\n\n")
    assert msg.error is None


def test_long_line_holds_at_most_one_kibibyte():
    parser = Parser()
    parser.feed(b"Action: Ping\r\nX: ")
    for _ in range(1000):
        parser.feed(b"z" * 1000)
        assert parser.next_message() is None
        assert parser.buffered < 1024


def test_too_many_lines_p_1_9_and_marks_reset_d_8_13():
    lines = [b"Action: Ping", b"ActionID: m"] + [b"X-%d: v" % i for i in range(MAX_LINES - 2)]
    [msg] = parse_all(b"\r\n".join(lines) + b"\r\n\r\n")
    assert msg.error is None and len(msg.lines) == MAX_LINES
    long_and_many = lines + [b"Y: " + b"q" * 2000, b"Z: 1"]
    msgs = parse_all(b"\r\n".join(long_and_many) + b"\r\n\r\nAction: Ping\r\n\r\n")
    assert [m.error for m in msgs] == [TOO_MANY, None]
    assert msgs[0].action_id == "m"


def test_header_rules_p_1_11_to_p_1_13():
    [msg] = parse_all(
        b"action:\tPing   \r\nACTIONID:\r\nActionID: later\r\n Action: Nope\r\nAction : Nope\r\n"
        b"Variable: a=1\r\nnocolon\r\nVariable: b=2\r\nAction: Other\r\n\r\n"
    )
    assert msg.action == "Ping   "
    assert msg.action_id == ""  # the first ActionID wins even when empty
    assert msg.get_all("variable") == ["a=1", "b=2"]
    assert "nocolon" in msg.lines
    [msg] = parse_all(b"Action:\r\nAction: Ping\r\n\r\n")
    assert msg.action == "Ping"  # Action: the first non-empty one


def test_value_leading_control_bytes_are_stripped():
    [msg] = parse_all(b"Action: \x01\x02 \tPing\r\n\r\n")
    assert msg.action == "Ping"


def test_empty_message_p_1_8():
    msgs = parse_all(b"\r\n\n")
    assert len(msgs) == 2 and all(m.empty and m.error is None for m in msgs)


def test_invalid_utf8_roundtrips_p_1_22():
    raw = b"Action: UserEvent\r\nX: \xff\xfe caf\xc3\xa9\r\n\r\n"
    [msg] = parse_all(raw)
    out = render_block("UserEvent", msg.headers()[1:])
    assert b"X: \xff\xfe caf\xc3\xa9\r\n" in out


def test_render_response_order_and_cr_lf_cleaning_r_2_1_p_1_20():
    data = render_response("Error", "id\r1", "bad\nthing", [("Extra", "x\r\ny")])
    assert data == b"Response: Error\r\nActionID: id 1\r\nMessage: bad thing\r\nExtra: x  y\r\n\r\n"
    assert render_response("Success", "", None, [("Empty", "")]) == b"Response: Success\r\nEmpty: \r\n\r\n"
    assert render_response("Success", "a", "m", list_start=True).startswith(
        b"Response: Success\r\nActionID: a\r\nEventList: start\r\nMessage: m\r\n"
    )


_reply_text = st.text(st.sampled_from(["a", "7", " ", ":", "\r", "\n", "\u00e9", "\udcff"]), max_size=6)
_reply = st.tuples(
    st.sampled_from(["Success", "Error", "Goodbye"]),
    st.none() | _reply_text,
    st.lists(st.tuples(st.sampled_from(["Ping", "X-Y", "Timestamp"]), _reply_text), max_size=3).map(tuple),
    st.booleans(),
)


@given(replies=st.lists(_reply, min_size=1, max_size=3), answers=st.lists(st.tuples(st.integers(0, 2), _reply_text), max_size=12))
def test_reply_renderer_equals_the_reference_for_any_run_of_shared_responses_r_2_1_p_1_20(replies, answers):
    """Replies of one response object in a row reuse its rendered lines: the bytes are the reference's,
    whatever the ActionID holds (CR, LF, bytes that were not UTF-8)."""
    renderer = ReplyRenderer()
    keys = [object() for _ in replies]
    for index, action_id in answers:
        status, message, pairs, list_start = replies[index % len(replies)]
        got = renderer.render(keys[index % len(replies)], status, action_id, message, pairs, list_start)
        assert got == render_response(status, action_id, message, pairs, list_start)


def test_reply_renderer_splices_the_action_id_into_a_repeated_reply():
    renderer = ReplyRenderer()
    key, pairs = object(), (("Ping", "Pong"), ("Timestamp", "1795000000.000001"))
    for action_id in ("1", "2", "", "x\ry", "caf\u00e9", "\udcff"):
        assert renderer.render(key, "Success", action_id, None, pairs) == render_response("Success", action_id, None, pairs)
    assert renderer.render(key, "Success", "3", None, pairs) == (
        b"Response: Success\r\nActionID: 3\r\nPing: Pong\r\nTimestamp: 1795000000.000001\r\n\r\n"
    )


def test_has_input_counts_partial_data():
    parser = Parser()
    parser.feed(b"Action: Ping\r\n\r\nAct")
    assert parser.next_message().action == "Ping"
    assert parser.has_input
    parser.feed(b"ion: Ping\r\n")
    assert parser.next_message() is None and parser.has_input


# -- properties ---------------------------------------------------------------

_line = st.one_of(
    st.sampled_from([b"Action: Ping", b"ActionID: 1", b"", b"Action: Login", b"X:y", b"\r", b"\x00"]),
    st.binary(max_size=40),
    st.binary(min_size=1000, max_size=1100),
)
_stream = st.lists(_line, max_size=40).map(lambda ls: b"\n".join(ls) + b"\n")


def _summary(messages):
    return [(m.lines, m.error, m.empty) for m in messages]


def _split(data, cuts):
    """``data`` cut at the positions ``cuts`` (taken modulo its length), as the reads that carry it."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=4000), _stream), cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_any_split_gives_the_same_messages(data, cuts):
    whole = parse_all(data)
    chunks = _split(data, cuts)
    assert _summary(parse_all(*chunks)) == _summary(whole)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=6000), _stream))
def test_no_input_raises_and_memory_stays_bounded(data):
    parser = Parser()
    for i in range(0, len(data), 97):
        parser.feed(data[i : i + 97])
        for message in parser.messages():
            assert len(message.lines) <= MAX_LINES
            message.action, message.action_id, message.headers()
        assert parser.buffered < 1024 + 97


class _LineParser(Parser):
    """The reference: every message line by line, as spec P-1.4 to P-1.10 say."""

    __slots__ = ()

    def next_message(self):
        return self._next_by_lines()


_clean_line = st.sampled_from([b"Action: Ping", b"ActionID: 7", b"Action: UserEvent", b"X:y", b"a\rb", b"k: \xff"])
_odd = st.one_of(
    st.sampled_from([b"\r\n", b"\r\n\r\n", b"\n", b"Nul\x00x\r\n", b"\r\r\n", b"L" * 1019, b"L" * 1020]),
    st.sampled_from([b"L" * 1021, b"L" * 1022, b"L" * 1030]),
    st.sampled_from([b"\r\n".join([b"H: v"] * 127), b"\r\n".join([b"H: v"] * 128)]),
    st.binary(max_size=30),
)
_message = st.lists(_clean_line, min_size=1, max_size=4).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n")
# Mostly well-formed messages, the input the one-step path takes, with now
# and then an empty line, a bare LF, a NUL, a long line or many lines.
_crlf_stream = st.lists(st.one_of(_message, _message, _message, _odd), max_size=60).map(b"".join)


def _fed(parser, chunk):
    parser.feed(chunk)
    return []


def _taken(parser, chunk):
    whole = parser.take(chunk)
    if whole is None:
        return []
    assert not parser.has_input  # nothing was kept
    return [whole]


@pytest.mark.parametrize("hand_over", [_fed, _taken], ids=["feed", "take"])
@settings(max_examples=400, deadline=None)
@given(data=_crlf_stream, cuts=st.lists(st.integers(0, 20000), max_size=8))
def test_reads_give_the_line_by_line_messages(hand_over, data, cuts):
    """P-1.4 to P-1.10: the whole-run path, and take() on each read (as the server does), never change a
    message, however the bytes arrive."""
    chunks = _split(data, cuts)
    fast, reference = Parser(), _LineParser()
    got, expected = [], []
    for chunk in chunks:
        got.extend(hand_over(fast, chunk))
        got.extend(fast.messages())
        reference.feed(chunk)
        expected.extend(reference.messages())
        assert fast.has_input == reference.has_input
    assert _summary(got) == _summary(expected)


@pytest.mark.parametrize("message", [
    b"Action: Ping\r\nActionID: 1\r\n\r\n",
    b"\r\nAction: Ping\r\n\r\n",  # a blank line first: an empty message (P-1.8)
    b"Action: Ping\nActionID: 1\r\n\r\n",  # bare LF ends a line too (P-1.4)
    b"Action: Ping\r\nA\rB: x\r\n\r\n",  # lone CR kept in a line
    b"Action: P\x00ing\r\n\r\n",  # NUL
    # Lines about the line limit (P-1.6), the longest kept and the shortest cut:
    *[b"Action: Ping\r\nX: " + b"v" * (length - 3) + b"\r\n\r\n" for length in range(1019, 1025)],
    b"\r\n".join([b"H: v"] * 128) + b"\r\n\r\n",  # the most lines a message keeps
    b"\r\n".join([b"H: v"] * 129) + b"\r\n\r\n",  # one line too many (P-1.9)
])
def test_one_buffered_message_parses_as_line_by_line(message):
    """P-1.4 to P-1.10: a read holding exactly one message takes its own short path; same messages."""
    fast, reference = Parser(), _LineParser()
    fast.feed(message)
    reference.feed(message)
    expected = _summary(reference.messages())
    assert _summary(fast.messages()) == expected
    assert not fast.has_input
    taking = Parser()
    whole = taking.take(message)
    assert _summary(([whole] if whole is not None else []) + list(taking.messages())) == expected
    assert not taking.has_input


def test_take_answers_one_whole_message_and_buffers_anything_else():
    parser = Parser()
    message = parser.take(b"Action: Ping\r\nActionID: 1\r\n\r\n")
    assert (message.action, message.action_id) == ("Ping", "1") and not parser.has_input
    assert parser.take(b"Action: Ping\r\n") is None and parser.buffered == 14  # a part: kept
    assert parser.take(b"ActionID: 2\r\n\r\n") is None  # completes the buffered one: through next_message
    assert parser.next_message().action_id == "2" and not parser.has_input
    assert parser.take(b"Action: Ping\r\n\r\nAction: Ping\r\n\r\n") is None  # two: buffered
    assert len(list(parser.messages())) == 2
    for short in (b"Act", b"A", b"\r\n\r\n"):  # shorter than a blank line, or a bare one (P-1.8)
        parser = Parser()
        assert parser.take(short) is None and parser.buffered == len(short)


def test_pipelined_messages_stay_unconsumed_until_taken_p_1_18():
    parser = Parser()
    parser.feed(b"Action: Ping\r\nActionID: 1\r\n\r\n" * 3 + b"Action: Pi")
    first = parser.next_message()
    assert (first.action, first.action_id) == ("Ping", "1")
    # The run parsed in one step counts as buffered input until its last message is taken.
    assert parser.buffered == 3 * 29 + 10 and parser.has_input
    assert parser.next_message().action_id == "1" and parser.next_message().action_id == "1"
    assert parser.buffered == 10 and parser.next_message() is None
    parser.feed(b"ng\r\n\r\n")
    assert parser.next_message().action == "Ping" and not parser.has_input

