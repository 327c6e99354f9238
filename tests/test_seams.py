"""The seams later capabilities plug into: the event bus and outbound connections."""

from __future__ import annotations

import random
import socket
import threading

import pytest

from ami_server import Backoff, Event, StreamProtocol, hookimpl
from ami_server.testing import MemoryServer, make_config, parse_blocks, running_server

from conftest import USERS


class Keeper:
    """Keeps the server handle (and the bus) a plugin receives."""

    @hookimpl
    def register_actions(self, server):
        self.server = server


def test_the_bus_tells_subscribers_and_delivers_injected_events():
    keeper = Keeper()
    with MemoryServer(make_config({"users": USERS}), extra_plugins=[("keeper", keeper)]) as memory:
        seen = []
        keeper.server.bus.subscribe(lambda event, local: seen.append((event.name, local)))
        peer = memory.connect()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: user\r\n\r\n")
        peer.read()
        keeper.server.bus.inject(Event("FromElsewhere", "user", {"Node": "b"}))
        memory.run()
        assert peer.read() == b"Event: FromElsewhere\r\nPrivilege: user,all\r\nNode: b\r\n\r\n"
        keeper.server.publish(Event("FromHere", "user", {"Node": "a"}))
        memory.run()
        assert [b["Event"] for b in parse_blocks(peer.read())] == ["FromHere"]
    assert ("SuccessfulAuth", True) in seen
    assert ("FromElsewhere", False) in seen and ("FromHere", True) in seen


class Recording(StreamProtocol):
    def __init__(self):
        self.events = []
        self.data = b""
        self.done = threading.Event()
        self.connection = None

    def connection_made(self, connection):
        self.connection = connection
        self.events.append("made")
        connection.write(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")

    def data_received(self, data):
        self.data += data
        if b"Authentication accepted\r\n\r\n" in self.data and "closing" not in self.events:
            self.events.append("closing")
            self.connection.write(b"Action: Logoff\r\n\r\n")

    def connection_lost(self, error):
        self.events.append(("lost", error))
        self.done.set()


def test_an_outbound_connection_runs_on_the_loop_to_another_server():
    """A plugin logs in to a second ami-server process over an outbound connection owned by the loop."""
    keeper = Keeper()
    config = make_config({"users": USERS})
    with running_server(config) as upstream, running_server(config, extra_plugins=[("keeper", keeper)]):
        protocol = Recording()
        keeper.server.call_soon_threadsafe(
            lambda: keeper.server.connect(upstream.host, upstream.port, protocol, timeout=5)
        )
        assert protocol.done.wait(5)
    assert protocol.events == ["made", "closing", ("lost", None)]
    assert protocol.data.startswith(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\n")
    assert protocol.data.endswith(b"Response: Goodbye\r\nMessage: Thanks for all the fish.\r\n\r\n")


def test_an_outbound_connect_that_fails_ends_in_connection_lost():
    keeper = Keeper()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: the connect is refused
        with running_server(make_config({"users": USERS}), extra_plugins=[("keeper", keeper)]):
            protocol = Recording()
            keeper.server.call_soon_threadsafe(lambda: keeper.server.connect("127.0.0.1", port, protocol))
            assert protocol.done.wait(5)
    assert protocol.events == [("lost", "connect: ECONNREFUSED")]


def test_connect_is_refused_off_the_loop():
    keeper = Keeper()
    with running_server(make_config({"users": USERS}), extra_plugins=[("keeper", keeper)]):
        with pytest.raises(RuntimeError, match="only be called on the event loop"):
            keeper.server.connect("127.0.0.1", 1, Recording())


def test_backoff_doubles_to_its_cap_with_jitter_below_the_nominal_delay():
    backoff = Backoff(initial=0.5, cap=4.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next() for _ in range(7)]
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0.8 * n <= d <= n for d, n in zip(delays, nominal))
    backoff.reset()
    assert 0.4 <= backoff.next() <= 0.5
    with pytest.raises(ValueError):
        Backoff(initial=0, cap=1)
