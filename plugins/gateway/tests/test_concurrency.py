"""A client's pipelined requests through the gateway: in flight together, replies in order.

The forwarding action is ``concurrent``: requests of one client that go to
the upstream's main session are all sent at once, and the server writes the
replies in request order whatever order they come back in. A request for a
pool session (a synchronous Originate) waits until the client's earlier
requests are answered, and holds the later ones, so the upstream runs a
client's requests in the order sent.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import List

from gateway_helpers import gateway_config, gateway_of, upstream_table, wait_until, double, gateway  # noqa: F401

from ami_server.testing import running_server


def delayed(log: List[str], name: str, delays: dict):
    """A double handler answering after ``delays[Tag]`` seconds, logging arrival and reply by ``Tag``."""

    def handler(conn, pairs, action_id):
        tag = dict(pairs).get("Tag", "")
        log.append(f"arrive {tag}")

        def answer():
            log.append(f"reply {tag}")
            conn.send(f"Response: Success\r\nActionID: {action_id}\r\nMessage: {name} {tag}\r\n\r\n".encode())

        threading.Timer(delays.get(tag, 0.0), answer).start()
        return None

    return handler


def read_replies(client, count, timeout=5.0):
    return [client.read_response(timeout=timeout) for _ in range(count)]


def test_pipelined_requests_are_in_flight_together_and_answered_in_order(gateway, double) -> None:
    log: List[str] = []
    delays = {f"r{i}": 0.5 - 0.1 * i for i in range(5)}  # the upstream answers the last first
    double.handlers["coresettings"] = delayed(log, "settings", delays)
    with gateway.client() as client:
        client.login("admin", "adminpass", events="off")
        started = time.monotonic()
        client.send_raw(b"".join(f"Action: CoreSettings\r\nActionID: r{i}\r\nTag: r{i}\r\n\r\n".encode() for i in range(5)))
        replies = read_replies(client, 5)
        elapsed = time.monotonic() - started
    assert [r["ActionID"] for r in replies] == [f"r{i}" for i in range(5)]
    assert [r["Message"] for r in replies] == [f"settings r{i}" for i in range(5)]
    assert log[:5] == [f"arrive r{i}" for i in range(5)]  # all sent before any reply came
    assert elapsed < 1.2, f"the requests did not overlap ({elapsed:.2f} s)"


def test_a_pool_request_waits_for_the_clients_earlier_requests_and_holds_later_ones(double) -> None:
    log: List[str] = []
    delays = {"before": 0.3, "sync": 0.3, "after": 0.0}
    double.handlers["coresettings"] = delayed(log, "settings", delays)
    double.handlers["originate"] = delayed(log, "originate", delays)
    table = upstream_table(double.port, pool_size=1, blocking_timeout=5.0)
    with running_server(gateway_config({"pbx1": table})) as server:
        wait_until(lambda: gateway_of(server).upstreams["pbx1"].state == "up", what="upstream up")
        with server.client() as client:
            client.login("admin", "adminpass", events="off")
            client.send_raw(
                b"Action: CoreSettings\r\nActionID: before\r\nTag: before\r\n\r\n"
                b"Action: Originate\r\nActionID: sync\r\nTag: sync\r\nChannel: Local/1@default\r\nContext: default\r\n"
                b"Exten: 100\r\nPriority: 1\r\n\r\n"
                b"Action: CoreSettings\r\nActionID: after\r\nTag: after\r\n\r\n"
            )
            replies = read_replies(client, 3)
    assert [r["ActionID"] for r in replies] == ["before", "sync", "after"]
    assert log == ["arrive before", "reply before", "arrive sync", "reply sync", "arrive after", "reply after"]


def test_a_client_that_leaves_with_requests_waiting_leaves_nothing_behind(double) -> None:
    log: List[str] = []
    delays = {"before": 0.3, "sync": 0.3}
    double.handlers["coresettings"] = delayed(log, "settings", delays)
    double.handlers["originate"] = delayed(log, "originate", delays)
    table = upstream_table(double.port, pool_size=1, blocking_timeout=5.0)
    with running_server(gateway_config({"pbx1": table})) as server:
        wait_until(lambda: gateway_of(server).upstreams["pbx1"].state == "up", what="upstream up")
        plugin = gateway_of(server)
        with server.client() as client:
            client.login("admin", "adminpass", events="off")
            client.send_raw(
                b"Action: CoreSettings\r\nActionID: before\r\nTag: before\r\n\r\n"
                b"Action: Originate\r\nActionID: sync\r\nTag: sync\r\nChannel: Local/1@default\r\nContext: default\r\n"
                b"Exten: 100\r\nPriority: 1\r\n\r\n"
            )
            wait_until(lambda: "arrive before" in log, what="first request upstream")
            # A reset, not an end of input (which would still have both answered, P-1.17).
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: "reply before" in log, what="first reply")
        wait_until(lambda: not server.call(lambda: plugin._lines), what="the client's line dropped")
        time.sleep(0.2)
    assert "arrive sync" not in log  # never sent for a client that left
