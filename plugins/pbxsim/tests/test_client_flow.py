"""The issue's acceptance test: a client written against Asterisk, run against ami-server + pbxsim.

It originates to Local/100@default, follows the call by its events, lists
it with CoreShowChannels and Status while it is up, hangs it up, and sees
both halves go. A second client with ``read = call`` sees exactly the
call-class events.
"""

from __future__ import annotations

import pytest

from pbxconf import DIALPLAN, USERS

from ami_server.testing import make_config, running_server

CALL_EVENTS = {"Newchannel", "Newstate", "Hangup", "HangupRequest", "SoftHangupRequest", "LocalBridge",
               "DialBegin", "DialEnd", "DeviceStateChange", "OriginateResponse", "NewCallerid",
               "NewConnectedLine"}


@pytest.fixture
def server():
    with running_server(make_config({"users": USERS, "plugins": {"pbxsim": DIALPLAN}})) as srv:
        yield srv


def _events_until(client, name, seen, timeout=5.0):
    while True:
        block = client.read_block(timeout)
        if block.is_event:
            seen.append(block)
            if block["Event"] == name:
                return block


def test_originate_follow_list_hangup(server):
    with server.client() as admin, server.client() as limited:
        admin.login("admin", "adminpass")
        limited.login("limited", "limitedpass")
        reply = admin.action("Originate", {"ActionID": "o1", "Channel": "Local/100@default", "Context": "default",
                                           "Exten": "long", "Priority": "1", "CallerID": '"AMI Test" <5551000>',
                                           "Async": "true"})
        assert reply.lines == [("Response", "Success"), ("ActionID", "o1"),
                               ("Message", "Originate successfully queued")]
        seen = []
        response = _events_until(admin, "OriginateResponse", seen)
        assert response["Response"] == "Success" and response["Reason"] == "4" and response["ActionID"] == "o1"
        one = response["Channel"]
        assert one.startswith("Local/100@default-") and one.endswith(";1")
        two = one[:-1] + "2"
        user_event = _events_until(admin, "UserEvent", seen)
        assert user_event["UserEvent"] == "DialplanTest" and user_event["Source"] == "dialplan"
        assert user_event["Channel"] == two and user_event["Privilege"] == "user,all"
        names = [e["Event"] for e in seen]
        assert names[:3] == ["Newchannel", "Newchannel", "Newexten"]
        assert names.index("DialBegin") < names.index("DialEnd") < names.index("OriginateResponse")

        admin.send("CoreShowChannels", {"ActionID": "c1"})
        start = admin.read_response()
        assert start["EventList"] == "start" and start["Message"] == "Channels will follow"
        listed = []
        while True:
            block = admin.read_block()
            if block["Event"] == "CoreShowChannelsComplete":
                break
            if block["Event"] == "CoreShowChannel":
                listed.append(block)
        assert sorted(b["Channel"] for b in listed) == [one, two]
        assert all(b["ChannelStateDesc"] == "Up" for b in listed)
        assert block["ListItems"] == "2"

        admin.send("Status", {"ActionID": "s1", "Channel": two, "Variables": "CHANNEL(state)"})
        assert admin.read_response()["Message"] == "Channel status will follow"
        status = admin.read_block()
        while status["Event"] != "Status":
            status = admin.read_block()
        assert status["Channel"] == two and status["Uniqueid"] != status["Linkedid"]
        assert status.get("Variable") == "CHANNEL(state)=Up" and status.lines[-1] == ("ActionID", "s1")

        assert admin.action("Hangup", {"Channel": one, "Cause": "16"})["Message"] == "Channel Hungup"
        hung = []
        while len(hung) < 2:
            block = admin.read_block()
            if block.get("Event") == "Hangup":
                hung.append(block)
        assert {h["Channel"] for h in hung} == {one, two}
        assert all(h["Cause"] == "16" and h["Cause-txt"] == "Normal Clearing" for h in hung)
        assert admin.action("Status", {"Channel": one})["Message"] == "No such channel"

        # limited reads "call" only: call-class events, none of dialplan or user class.
        admin.action("Ping")
        received = []
        while True:
            try:
                received.append(limited.read_block(0.5))
            except TimeoutError:
                break
        names = {b["Event"] for b in received}
        assert names and names <= CALL_EVENTS
        assert {"Newchannel", "Hangup", "OriginateResponse", "DialBegin"} <= names
        assert all(b["Privilege"].startswith("call") for b in received)


def test_errors_as_asterisk_sends_them(server):
    with server.client() as admin:
        admin.login("admin", "adminpass", events="off")
        cases = [
            ("Originate", {"Application": "Wait"}, "Channel not specified"),
            ("Originate", {"Channel": "nochanslash", "Application": "Wait"}, "Invalid channel"),
            ("Originate", {"Channel": "Local/short@default", "Exten": "short", "Priority": "abc"}, "Invalid priority"),
            ("Originate", {"Channel": "Local/short@default", "Context": "nosuchcontext", "Exten": "100"},
             "Extension does not exist."),
            ("Originate", {"Channel": "Foo/bar", "Application": "Wait", "Data": "1"}, "Originate failed"),
            ("Hangup", {}, "No channel specified"),
            ("Hangup", {"Channel": "Local/nosuch@default-00000000;1"}, "No such channel"),
            ("Hangup", {"Channel": "/[/"}, "Regex compile failed on: /[/"),
            ("Status", {"Channel": "Local/nosuch@default-00000000;1"}, "No such channel"),
            ("Getvar", {}, "No variable specified"),
            ("Setvar", {"Channel": "Local/nosuch@default-00000000;1", "Variable": "X"}, "No such channel"),
            ("Redirect", {"Channel": "Local/x@default-00000000;1"}, "Exten not specified"),
            ("Redirect", {"Channel": "Local/x@default-00000000;1", "Exten": "1"},
             "Channel does not exist: Local/x@default-00000000;1"),
            ("BridgeInfo", {}, "BridgeUniqueid must be provided"),
            ("BridgeInfo", {"BridgeUniqueid": "nope"}, "Specified BridgeUniqueid not found"),
        ]
        for action, headers, message in cases:
            reply = admin.action(action, {"ActionID": "e", **headers})
            assert reply.lines == [("Response", "Error"), ("ActionID", "e"), ("Message", message)], (action, headers)


def test_synchronous_originate_answers_when_answered(server):
    with server.client() as admin:
        admin.login("admin", "adminpass", events="off")
        reply = admin.action("Originate", {"ActionID": "s", "Channel": "Local/short@default",
                                           "Application": "Wait", "Data": "1"}, timeout=5)
        assert reply.lines == [("Response", "Success"), ("ActionID", "s"), ("Message", "Originate successfully queued")]
        busy = admin.action("Originate", {"ActionID": "b", "Channel": "Local/busy@default",
                                          "Application": "Wait", "Data": "1"}, timeout=5)
        assert busy.lines == [("Response", "Error"), ("ActionID", "b"), ("Message", "Originate failed")]


def test_permissions():
    with running_server(make_config({"users": USERS, "plugins": {"pbxsim": DIALPLAN}})) as srv:
        with srv.client() as limited:
            limited.login("limited", "limitedpass", events="off")
            assert limited.action("Originate", {"Channel": "Local/100@default", "Application": "Wait"})[
                "Message"] == "Permission denied"
            assert limited.action("CoreShowChannels")["Message"] == "Permission denied"


def test_a_bad_table_stops_start_up_naming_the_plugin_and_key():
    """The table is validated in register_actions: the server does not start with a broken dialplan."""
    import pytest

    from ami_server.server import Server, ServerError
    from ami_server.audit import MemorySink

    bad = make_config({"plugins": {"pbxsim": {"extensions": {"100@default": ["Wiat(3)"]}}}})
    server = Server(bad, log_sink=MemorySink())
    try:
        with pytest.raises(ServerError, match=r"plugin 'pbxsim'.*extensions.*unknown application 'Wiat'"):
            server.load()
    finally:
        server.loop.close()
