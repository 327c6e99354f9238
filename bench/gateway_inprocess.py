"""The gateway's CPU cost per forwarded action, in process: no sockets, no second process.

A ``MemoryServer`` runs the gateway plugin; its upstream connection is an
in-memory double that answers Challenge, Login, ListCommands and Ping as
Asterisk does. Ten clients each pipeline 32 Pings per read (loadgen's
C=10 P=32) or send one Ping per read (P=1); every client request goes
through the gateway's whole path: parse, policy, forwarding, the upstream
session, the reply and its ordering, the client's output.

    .venv-test/bin/python bench/gateway_inprocess.py [--actions 200000] [--rounds 5] [--profile]

Prints CPU microseconds per forwarded action (thread CPU time; the double's
own work is measured and left out), best and median of the rounds: on a
shared machine the best is the steadier estimate. Asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

_ACTION_ID = re.compile(rb"ActionID: ([^\r\n]*)\r\n")


class _Outbound:
    """The upstream end of the gateway's connection: queues what the double answers."""

    def __init__(self, double: "_Double", protocol: Any) -> None:
        self.double = double
        self.protocol = protocol
        self.closed = False

    def write(self, data: bytes) -> None:
        self.double.received(self, data)

    def close(self) -> None:
        self.closed = True


class _Double:
    """An upstream that answers each request at once (Ping: ``Pong``); its CPU time is kept apart."""

    def __init__(self) -> None:
        self.replies: List[tuple] = []
        self.cpu_ns = 0
        self.banner_sent = False

    def received(self, outbound: _Outbound, data: bytes) -> None:
        started = time.thread_time_ns()
        out = []
        for request in data.split(b"\r\n\r\n"):
            if not request:
                continue
            match = _ACTION_ID.search(request + b"\r\n")
            action_id = match.group(1) if match else b""
            low = request.lower()
            if low.startswith(b"action: ping"):
                out.append(b"Response: Success\r\nActionID: " + action_id
                           + b"\r\nPing: Pong\r\nTimestamp: 1700000000.000000\r\n\r\n")
            elif low.startswith(b"action: challenge"):
                out.append(b"Response: Success\r\nActionID: " + action_id + b"\r\nChallenge: 123456789\r\n\r\n")
            elif low.startswith(b"action: login"):
                out.append(b"Response: Success\r\nActionID: " + action_id
                           + b"\r\nMessage: Authentication accepted\r\n\r\n"
                           + b"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 5\r\nLastReload: 5\r\n"
                           + b"Status: Fully Booted\r\n\r\n")
            elif low.startswith(b"action: listcommands"):
                out.append(b"Response: Success\r\nActionID: " + action_id
                           + b"\r\nPing: Keepalive command.  (Priv: <none>)\r\n\r\n")
        self.replies.append((outbound, b"".join(out)))
        self.cpu_ns += time.thread_time_ns() - started

    def deliver(self) -> bool:
        replies, self.replies = self.replies, []
        for outbound, data in replies:
            if data and not outbound.closed:
                outbound.protocol.data_received(data)
        return bool(replies)


def _setup(double: _Double) -> Any:
    from ami_server.testing import MemoryServer, make_config
    from ami_server_gateway import GatewayPlugin
    from ami_server_gateway import upstream as upstream_module

    def open_link(link: Any) -> None:
        outbound = _Outbound(double, link)
        link.outbound = outbound
        link.data_received(b"Asterisk Call Manager/9.0.0\r\n")
        link.connection_made(outbound)

    upstream_module.Link.open = open_link  # type: ignore[method-assign]
    config = make_config({
        "users": {"admin": {"secret": "adminpass", "read": "all", "write": "all"}},
        "plugins": {"disable": ["ping", "userevent", "command", "core"],
                    "gateway": {"upstreams": {"pbx": {"host": "127.0.0.1", "port": 5038, "username": "gw",
                                                      "secret": "gw-secret", "action_timeout": 30.0}}}},
    })
    memory = MemoryServer(config, extra_plugins=[("gateway", GatewayPlugin())])
    _settle(memory, double)
    return memory


def _settle(memory: Any, double: _Double) -> None:
    for _ in range(100):
        memory.run()
        if not double.deliver():
            memory.run()
            if not double.replies:
                return


def measure(actions: int, inflight: int, clients: int = 10, profile: Optional[str] = None) -> Dict[str, float]:
    """CPU microseconds per forwarded action at ``clients`` x ``inflight``."""
    double = _Double()
    memory = _setup(double)
    peers = []
    for _ in range(clients):
        peer = memory.connect()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        peer.read()
        peers.append(peer)
    batch = b"".join(b"Action: Ping\r\nActionID: %d\r\n\r\n" % i for i in range(inflight))
    rounds = max(1, actions // (clients * inflight))
    core = memory.core

    def one_round() -> None:
        for peer in peers:
            core.receive(peer.session, batch)
        memory.turn()
        while double.deliver():
            memory.turn()
        for peer in peers:
            del peer.session.out[:]

    for _ in range(max(1, rounds // 10)):  # warm up
        one_round()
    check = peers[0]
    core.receive(check.session, batch)
    memory.turn()
    while double.deliver():
        memory.turn()
    if check.session.out.count(b"Ping: Pong") != inflight:
        raise RuntimeError("the gateway did not answer every Ping")
    del check.session.out[:]
    double.cpu_ns = 0
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    started = time.thread_time_ns()
    for _ in range(rounds):
        one_round()
    elapsed = time.thread_time_ns() - started - double.cpu_ns
    if profiler is not None:
        profiler.disable()
        import pstats
        pstats.Stats(profiler).sort_stats(profile).print_stats(35)
    memory.close()
    return {"us_per_action": elapsed / 1000 / (rounds * clients * inflight),
            "double_us": double.cpu_ns / 1000 / (rounds * clients * inflight)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", nargs="?", const="tottime", default=None,
                        help="print a cProfile of one P=32 run, sorted by this key (tottime)")
    args = parser.parse_args()
    if args.profile:
        measure(args.actions, 32, profile=args.profile)
        return 0
    for inflight in (1, 32):
        figures = [measure(args.actions, inflight) for _ in range(args.rounds)]
        per = [f["us_per_action"] for f in figures]
        print(f"C=10 P={inflight:<3} gateway CPU per forwarded action: best {min(per):6.1f} us, "
              f"median {statistics.median(per):6.1f} us (upstream double {figures[0]['double_us']:.1f} us, "
              f"not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
