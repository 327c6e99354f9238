"""Response.verbatim / Block.verbatim: replies written as another server wrote them."""

from __future__ import annotations

import time

import pytest

from ami_server import Action, Block, Response, hookimpl
from ami_server.dispatch import LIST_SLICE
from ami_server.testing import MemoryServer, make_config

from helpers import USERS

LOGIN = b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n"

HEAD = (("Response", " Follows"), ("Privilege", " Command"), ("ActionID", " gw-7"), ("Message", "Command output"),
        ("Output", " line one"), ("Output", ""))
ITEM = (("Event", " StatusItem"), ("Channel", " PJSIP/1"), ("ActionID", " gw-7"))
DONE = (("Event", " StatusComplete"), ("Items", " 1"), ("ActionID", " gw-7"))


class Verbatim:
    @hookimpl
    def register_actions(self, server):
        def plain(ctx):
            return Response.verbatim(HEAD)

        def listing(ctx):
            count = int(ctx.request.get("Count") or 1)
            return Response.verbatim(HEAD, [Block.verbatim(ITEM)] * count, Block.verbatim(DONE))

        def later(ctx):
            deferred = ctx.defer()
            ctx.call_later(1.0, lambda: deferred.complete(Response.verbatim(HEAD)))
            return deferred

        return [Action("Plain", plain, "verbatim", ()), Action("Listing", listing, "verbatim list", ()),
                Action("Later", later, "verbatim, later", (), concurrent=True)]


def logged_in(memory):
    peer = memory.connect()
    peer.send(LOGIN)
    assert b"Authentication accepted\r\n\r\n" in peer.read()
    return peer


def harness():
    return MemoryServer(make_config({"users": USERS}), extra_plugins=[("verbatim", Verbatim())])


def test_a_verbatim_response_keeps_status_spacing_and_the_actionid_place():
    with harness() as memory:
        peer = logged_in(memory)
        peer.send(b"Action: Plain\r\nActionID: mine\r\n\r\n")
        assert peer.read() == (b"Response: Follows\r\nPrivilege: Command\r\nActionID: mine\r\nMessage:Command output\r\n"
                               b"Output: line one\r\nOutput:\r\n\r\n")
        peer.send(b"Action: Plain\r\n\r\n")  # no ActionID: the line goes
        assert peer.read() == (b"Response: Follows\r\nPrivilege: Command\r\nMessage:Command output\r\n"
                               b"Output: line one\r\nOutput:\r\n\r\n")


def test_verbatim_blocks_carry_the_clients_actionid_where_the_upstream_had_it():
    with harness() as memory:
        peer = logged_in(memory)
        peer.send(b"Action: Listing\r\nActionID: L1\r\n\r\n")
        data = peer.read()
        assert data.endswith(b"Event: StatusItem\r\nChannel: PJSIP/1\r\nActionID: L1\r\n\r\n"
                             b"Event: StatusComplete\r\nItems: 1\r\nActionID: L1\r\n\r\n")


def test_a_long_verbatim_list_is_written_a_slice_at_a_time_unchanged():
    with harness() as memory:
        peer = logged_in(memory)
        count = LIST_SLICE * 2 + 3
        peer.send(b"Action: Listing\r\nActionID: L2\r\nCount: %d\r\n\r\n" % count)
        data = peer.read()
        assert data.count(b"Event: StatusItem\r\nChannel: PJSIP/1\r\nActionID: L2\r\n\r\n") == count
        assert data.startswith(b"Response: Follows\r\n") and data.endswith(b"Items: 1\r\nActionID: L2\r\n\r\n")


def test_a_deferred_concurrent_verbatim_reply():
    with harness() as memory:
        peer = logged_in(memory)
        peer.send(b"Action: Later\r\nActionID: a\r\n\r\nAction: Later\r\nActionID: b\r\n\r\n")
        memory.advance(1.0)
        data = peer.read()
        assert data.count(b"Response: Follows\r\n") == 2
        assert data.index(b"ActionID: a\r\n") < data.index(b"ActionID: b\r\n")


def test_a_response_without_actionid_gets_one_second_and_values_cannot_forge_lines():
    reply = Response.verbatim([("Response", " Success"), ("Note", " a\r\nEvent: forged")])
    assert reply.render_head("x") == b"Response: Success\r\nActionID: x\r\nNote: a  Event: forged\r\n\r\n"
    assert reply.status == "Success" and reply.message is None
    assert Response.verbatim(HEAD).status == "Follows" and Response.verbatim(HEAD).message == "Command output"


@pytest.mark.parametrize("lines", [
    [],
    [("Event", " x")],
    [("Response", "  ")],
    [("Response", " Success"), ("Bad: name", " x")],
    [("Response", " Success"), ("", " x")],
])
def test_invalid_verbatim_lines_are_refused(lines):
    with pytest.raises(ValueError):
        Response.verbatim(lines)


def test_invalid_verbatim_block_is_refused():
    with pytest.raises(ValueError):
        Block.verbatim([("Response", " Success")])
    with pytest.raises(TypeError):
        Block.verbatim([("Event", 3)])


RAW = b"Response: Follows\r\nActionID: gw-7\r\nMessage:Command output\r\nOutput: line one\r\nOutput:\r\n\r\n"


class VerbatimBytes:
    @hookimpl
    def register_actions(self, server):
        def raw(ctx):
            data = RAW if ctx.request.get("Variant") != "none" else RAW.replace(b"ActionID: gw-7\r\n", b"")
            return Response.verbatim_bytes(data)

        return [Action("Raw", raw, "verbatim bytes", ())]


def test_verbatim_bytes_are_written_as_received_with_the_clients_actionid():
    with MemoryServer(make_config({"users": USERS}), extra_plugins=[("raw", VerbatimBytes())]) as memory:
        peer = logged_in(memory)
        peer.send(b"Action: Raw\r\nActionID: mine\r\n\r\n")
        assert peer.read() == RAW.replace(b"gw-7", b"mine")
        peer.send(b"Action: Raw\r\n\r\n")  # no ActionID: the line goes
        assert peer.read() == RAW.replace(b"ActionID: gw-7\r\n", b"")
        peer.send(b"Action: Raw\r\nVariant: none\r\nActionID: x\r\n\r\n")  # none in the reply: one second
        assert peer.read() == b"Response: Follows\r\nActionID: x\r\n" + RAW.split(b"\r\n", 2)[2]
        (record,) = [r for r in memory.log.records("ActionExecuted") if r["action_id"] == "mine"]
        assert record["result"] == "Follows" and record["message"] == "Command output"


def test_verbatim_bytes_render_like_the_line_form():
    lines = (("Response", " Success"), ("actionid", "gw-1"), ("Message", " Pong "), ("X", ""))
    data = b"Response: Success\r\nactionid:gw-1\r\nMessage: Pong \r\nX:\r\n\r\n"
    for action_id in ("", "7", "a\rb"):
        assert Response.verbatim_bytes(data).render_head(action_id) == Response.verbatim(lines).render_head(action_id)
    raw = Response.verbatim_bytes(data)
    assert (raw.status, raw.message, raw.blocks, raw.completion) == ("Success", "Pong", (), None)


@pytest.mark.parametrize("data", [
    b"Event: X\r\n\r\n",                          # not a response
    b"Response: Success\r\nActionID: 1\r\n",      # no blank line
    b"Response: Success\nActionID: 1\r\n\r\n",    # a bare LF
    b"Response: Success\r\nA: b\rc\r\n\r\n",       # a CR inside a value
    b"Response: Success\r\nno colon\r\n\r\n",     # a line that is not a header
    b"Response: Success\r\n Name: x\r\n\r\n",     # a name with an outer blank
    b"Response:  \r\n\r\n",                       # an empty status
    b"Response: Success\r\n\r\nResponse: Success\r\n\r\n",  # two messages
])
def test_verbatim_bytes_refuse_what_the_line_form_would_change(data):
    with pytest.raises(ValueError):
        Response.verbatim_bytes(data)
    with pytest.raises(TypeError):
        Response.verbatim_bytes(data.decode())  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [
    b"Response: " + b"a" * 100_000 + b"\rb\r\n\r\n",   # a bare CR late in a long status line
    b"Response:" + b" a" * 50_000 + b"\r\r\n\r\n",
    b"Response: Success\r\n" + b"a " * 50_000 + b"\r\n\r\n",  # a long line without a colon
    b"Response: Success\r\n" + b"A: b\r\n" * 20_000 + b"c\r\n\r\n",
])
def test_verbatim_bytes_check_is_linear_in_the_bytes(data):
    """A reply the check refuses costs one pass, not one per position (the event loop runs it)."""
    started = time.process_time()
    with pytest.raises(ValueError):
        Response.verbatim_bytes(data)
    assert time.process_time() - started < 1.0  # linear: milliseconds; quadratic: tens of seconds
