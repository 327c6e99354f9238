"""A second ami-server process as the upstream (UserEvent flows), and AMI client libraries
(panoramisk, pyst2) running Originate, Status and CoreShowChannels through the gateway."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from asterisk_double import Recording
from gateway_helpers import gateway_config, gateway_of, upstream_table, wait_until, double, gateway  # noqa: F401 - fixtures

from ami_server.testing import AMIClient, running_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def upstream_process(tmp_path: Path):
    port = free_port()
    config = tmp_path / "upstream.toml"
    config.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
login_failure_delay = 0.0

[logging]
file = "{tmp_path / 'upstream.log'}"

[users.gateway]
secret = "gw-secret"
read = "all"
write = "all"

[users.direct]
secret = "directpass"
read = "all"
write = "all"
""")
    process = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def accepting() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(accepting, timeout=10, what="upstream ami-server listening")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_userevent_through_an_ami_server_upstream(upstream_process) -> None:
    port = upstream_process
    with running_server(gateway_config({"pbx1": upstream_table(port)})) as gateway:
        wait_until(lambda: gateway_of(gateway).upstreams["pbx1"].state == "up", what="upstream up")
        with gateway.client() as sender, gateway.client() as watcher, AMIClient("127.0.0.1", port) as direct:
            sender.login("admin", "adminpass", events="off")
            watcher.login("reader", "readerpass", events="user")
            direct.login("direct", "directpass", events="user")
            reply = sender.action("UserEvent", {"UserEvent": "Deploy", "ActionID": "u1", "Version": "7"})
            assert reply.lines == [("Response", "Success"), ("ActionID", "u1"), ("Message", "Event Sent")]
            seen = watcher.wait_event("UserEvent")
            at_upstream = direct.wait_event("UserEvent")
            # Through the gateway, the event is what a direct client of the upstream sees, with the
            # sender's own ActionID instead of the gateway's.
            assert seen["ActionID"] == "u1" and seen["Version"] == "7"
            assert at_upstream["ActionID"].startswith("gw")
            assert seen.raw == at_upstream.raw.replace(f"ActionID: {at_upstream['ActionID']}".encode(), b"ActionID: u1")
            # No ActionID from the client: none in the event either.
            sender.action("UserEvent", {"UserEvent": "Bare"})
            assert "ActionID" not in watcher.wait_event("UserEvent")


def test_panoramisk_through_the_gateway(gateway, double) -> None:
    panoramisk = pytest.importorskip("panoramisk")

    def originate(conn, pairs, action_id):
        aid = f"ActionID: {action_id}\r\n"
        conn.send(f"Response: Success\r\n{aid}Message: Originate successfully queued\r\n\r\n".encode())
        conn.send(f"Event: OriginateResponse\r\nPrivilege: call,all\r\n{aid}Response: Success\r\n"
                  "Channel: Local/100@default-00000000;1\r\nReason: 4\r\n\r\n".encode())

    double.handlers["originate"] = originate

    async def scenario():
        loop = asyncio.get_running_loop()
        manager = panoramisk.Manager(loop=loop, host=gateway.host, port=gateway.port, username="admin",
                                     secret="adminpass", ping_delay=3600, reconnect_timeout=3600, events="on")
        await asyncio.wait_for(manager.connect(), 5)
        for _ in range(100):
            if manager.authenticated:
                break
            await asyncio.sleep(0.02)
        assert manager.authenticated
        channels = await asyncio.wait_for(manager.send_action({"Action": "CoreShowChannels"}), 5)
        names = [m.get("Event") for m in channels]
        assert names.count("CoreShowChannel") == 6 and names[-1] == "CoreShowChannelsComplete"
        status = await asyncio.wait_for(manager.send_action({"Action": "Status"}), 5)
        assert [m.get("Event") for m in status][-1] == "StatusComplete"
        reply = await asyncio.wait_for(manager.send_action({
            "Action": "Originate", "Channel": "Local/100@default", "Context": "default", "Exten": "100",
            "Priority": "1", "Async": "true"}), 5)
        messages = reply if isinstance(reply, list) else [reply]
        assert messages[0].get("Message") == "Originate successfully queued"
        assert any(m.get("Event") == "OriginateResponse" and m.get("Response") == "Success" for m in messages)
        manager.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_pyst2_through_the_gateway(gateway, double) -> None:
    manager_module = pytest.importorskip("asterisk.manager")
    result = {}

    def run():
        manager = manager_module.Manager()
        try:
            manager.connect(gateway.host, gateway.port)
            result["login"] = manager.login("admin", "adminpass").get_header("Message")
            result["status"] = manager.status().get_header("Message")
            result["channels"] = manager.send_action({"Action": "CoreShowChannels"}).get_header("Message")
            result["command"] = manager.command("core show version").get_header("Message")
            result["originate"] = manager.originate("Local/100@default", "100", context="default", priority="1",
                                                    run_async=False).get_header("Message")  # on the pool
        finally:
            manager.close()

    double.handlers["originate"] = lambda conn, pairs, aid: (
        f"Response: Success\r\nActionID: {aid}\r\nMessage: Originate successfully queued\r\n\r\n".encode())
    recorded = Recording.load("status_action").exchange(1, "st-1").reply
    double.handlers["status"] = lambda conn, pairs, aid: recorded.replace(b"ActionID: st-1", f"ActionID: {aid}".encode())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert result == {"login": "Authentication accepted", "status": "Channel status will follow",
                      "channels": "Channels will follow", "command": "Command output follows",
                      "originate": "Originate successfully queued"}
