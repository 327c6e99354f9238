"""panoramisk and pyst2 originate a call against a real ami-server process and follow its events."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pbxconf import SAMPLE_TABLE, start_server_process


@pytest.fixture
def server_port(tmp_path):
    process, port = start_server_process(tmp_path, SAMPLE_TABLE)
    try:
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()


def test_panoramisk_follows_a_call(server_port):
    panoramisk = pytest.importorskip("panoramisk")

    async def scenario():
        loop = asyncio.get_running_loop()
        manager = panoramisk.Manager(loop=loop, host="127.0.0.1", port=server_port, username="admin",
                                     secret="adminpass", ping_delay=3600, reconnect_timeout=3600, events="on")
        seen = []
        hung = loop.create_future()

        def on_event(mgr, event):
            seen.append(dict(event))
            if event.get("Event") == "Hangup" and sum(e.get("Event") == "Hangup" for e in seen) == 2:
                if not hung.done():
                    hung.set_result(True)

        manager.register_event("*", on_event)
        await asyncio.wait_for(manager.connect(), 5)
        for _ in range(100):
            if manager.authenticated:
                break
            await asyncio.sleep(0.02)
        reply = await asyncio.wait_for(manager.send_action({
            "Action": "Originate", "Channel": "Local/100@default", "Application": "Wait", "Data": "10",
            "Async": "true"}), 5)
        # panoramisk collects an async Originate's reply and its OriginateResponse event.
        replies = reply if isinstance(reply, list) else [reply]
        assert replies[0].success and replies[0].message == "Originate successfully queued"
        await asyncio.wait_for(hung, 10)
        names = [e.get("Event") for e in seen]
        assert names.index("Newchannel") < names.index("DialEnd") < names.index("UserEvent") < names.index("Hangup")
        if len(replies) > 1:
            assert replies[-1].event == "OriginateResponse" and replies[-1].reason == "4"
        user = [e for e in seen if e.get("Event") == "UserEvent"][0]
        assert user["UserEvent"] == "DialplanTest" and user["Source"] == "dialplan"
        manager.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_pyst2_follows_a_call(server_port):
    manager_module = pytest.importorskip("asterisk.manager")
    hangups = []
    done = threading.Event()
    manager = manager_module.Manager()
    try:
        manager.connect("127.0.0.1", server_port)

        def on_hangup(event, mgr):
            hangups.append((event.get_header("Channel"), event.get_header("Cause")))
            if len(hangups) == 2:
                done.set()

        manager.register_event("Hangup", on_hangup)
        manager.login("admin", "adminpass")
        reply = manager.send_action({
            "Action": "Originate", "Channel": "Local/100@default", "Context": "default", "Exten": "long",
            "Priority": "1", "CallerID": '"pyst2" <600>', "Async": "true"})
        assert reply.get_header("Message") == "Originate successfully queued"
        assert done.wait(10)
        channels = sorted(name for name, _ in hangups)
        assert channels[0].endswith(";1") and channels[1].endswith(";2")
        assert {cause for _, cause in hangups} == {"16"}
    finally:
        manager.close()
