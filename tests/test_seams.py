"""The seams later capabilities plug into: the event bus and outbound connections."""

from __future__ import annotations

import random
import socket
import threading

import pytest

from ami_server import Backoff, Event, StreamProtocol, hookimpl
from ami_server.testing import MemoryServer, make_config, parse_blocks, running_server

from helpers import USERS


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


def test_an_outbound_connection_to_a_host_name_resolves_off_the_loop():
    keeper = Keeper()
    config = make_config({"users": USERS})
    with running_server(config) as upstream, running_server(config, extra_plugins=[("keeper", keeper)]):
        protocol, unknown = Recording(), Recording()
        keeper.server.call_soon_threadsafe(lambda: keeper.server.connect("localhost", upstream.port, protocol))
        keeper.server.call_soon_threadsafe(lambda: keeper.server.connect("no-such-host.invalid", 5038, unknown))
        assert protocol.done.wait(5) and unknown.done.wait(10)
    assert protocol.events == ["made", "closing", ("lost", None)]
    (lost,) = unknown.events
    assert lost[1].startswith("cannot resolve 'no-such-host.invalid'")


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


class Policy:
    """A plugin that uses every policy seam: guards, an event guard, a lister and the unknown-action route."""

    @hookimpl
    def register_actions(self, server):
        from ami_server import Action, ActionError, Response

        def guard(session, action, request):
            allowed = session.attributes.get("actions")
            if allowed is not None and action.lower() not in allowed:
                return "actions list"
            if action == "Originate" and request is not None and request.get("Context") != "crm":
                raise ActionError("Context not allowed", {"Rule": "context"})
            return None

        def events(session):
            hidden = session.attributes.get("hide_events")
            return None if hidden is None else (lambda name: name not in hidden)

        def forward(ctx):
            return Response.success("Forwarded", {"Name": ctx.request.action})

        def texts(session):
            marked = session.attributes.get("hide_marked")
            return None if marked is None else (lambda data: not data.endswith(marked.encode() + b"\r\n\r\n"))

        server.add_action_guard(guard)
        server.add_event_guard(events)
        server.add_event_guard(texts, on_text=True)
        server.add_action_lister(lambda session: [Action("Originate", forward, "Originate a call.", "originate")])
        server.route_unknown(Action("Forward", forward, "Forward to the upstream.", ()),
                             read_only=lambda name: name.lower() == "getvar")


def policy_server():
    users = {
        **USERS,
        "crm": {"secret": "crmpass", "read": "system,call,user", "write": "all",
                "attributes": {"actions": ["ping", "originate", "listcommands", "userevent"],
                               "hide_events": ["Hidden"], "hide_marked": "Mark: b"}},
    }
    return MemoryServer(make_config({"users": users}), extra_plugins=[("policy", Policy())])


def crm_login(memory):
    peer = memory.connect()
    peer.send(b"Action: Login\r\nUsername: crm\r\nSecret: crmpass\r\n\r\n")
    peer.read()
    return peer


def test_guards_refuse_with_the_rule_audited_or_answer_their_own_error():
    with policy_server() as memory:
        peer = crm_login(memory)
        assert peer.session.info().attributes["actions"][0] == "ping"  # [users.crm.attributes]
        peer.send(b"Action: CoreStatus\r\nActionID: c\r\n\r\n")
        assert peer.read() == b"Response: Error\r\nActionID: c\r\nMessage: Permission denied\r\n\r\n"
        assert memory.log.records("ActionDenied")[-1]["rule"] == "actions list"
        peer.send(b"Action: Originate\r\nActionID: o\r\nContext: other\r\n\r\n")
        assert peer.read() == b"Response: Error\r\nActionID: o\r\nMessage: Context not allowed\r\nRule: context\r\n\r\n"
        assert memory.log.records("ActionDenied")[-1]["rule"] == "Context not allowed"
        peer.send(b"Action: Originate\r\nActionID: o2\r\nContext: crm\r\n\r\n")
        assert peer.read() == b"Response: Success\r\nActionID: o2\r\nMessage: Forwarded\r\nName: Originate\r\n\r\n"
        assert memory.log.records("ActionExecuted")[-1]["action"] == "Originate"


@pytest.mark.parametrize("audit_read_only", [False, True])
def test_routed_actions_the_router_calls_read_only_are_audited_as_read_only_actions(audit_read_only):
    config = make_config({"users": USERS, "logging": {"audit_read_only_actions": audit_read_only}})
    with MemoryServer(config, extra_plugins=[("policy", Policy())]) as memory:
        peer = memory.connect()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        peer.send(b"Action: GetVar\r\nActionID: g\r\n\r\nAction: Setvar\r\nActionID: s\r\n\r\n")
        assert peer.read().count(b"Message: Forwarded") == 2
        audited = [r["action_id"] for r in memory.log.records("ActionExecuted") if r["action_id"] in ("g", "s")]
        assert audited == (["g", "s"] if audit_read_only else ["s"])


def test_a_routed_action_is_audited_under_the_name_sent_scrubbed_like_any_input():
    """A-3.16: the router's action names are the client's text: a secret typed as one never reaches the log."""
    with MemoryServer(make_config({"users": USERS}), extra_plugins=[("policy", Policy())]) as memory:
        peer = memory.connect()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        peer.send(b"Action: adminpass\r\nActionID: r1\r\n\r\nAction: Setvar\r\nActionID: r2\r\n\r\n")
        assert peer.read().count(b"Message: Forwarded") == 2
        executed = {r["action_id"]: r["action"] for r in memory.log.records("ActionExecuted")}
        assert executed == {"r1": "[redacted]", "r2": "Setvar"}
        assert "adminpass" not in memory.log.text()


def test_list_commands_shows_listed_actions_that_classes_and_guards_allow_b_5_7():
    with policy_server() as memory:
        peer = crm_login(memory)
        peer.send(b"Action: ListCommands\r\n\r\n")
        (reply,) = parse_blocks(peer.read())
        assert [name for name, _ in reply.lines[1:]] == ["ListCommands", "Originate", "Ping", "UserEvent"]
        admin = memory.connect()
        admin.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        admin.read()
        admin.send(b"Action: ListCommands\r\n\r\n")
        (reply,) = parse_blocks(admin.read())
        assert "Originate" in reply and "SessionKick" in reply


def test_an_event_guard_hides_event_names_from_a_session():
    with policy_server() as memory:
        peer = crm_login(memory)
        peer.send(b"Action: UserEvent\r\nUserEvent: X\r\n\r\n")
        memory.server.publish(Event("Hidden", "user", {}))
        memory.server.publish(Event("Shown", "user", {}))
        memory.run()
        names = [b.get("Event") or b.get("Response") for b in parse_blocks(peer.read())]
        assert names == ["Success", "UserEvent", "Shown"]


def test_an_event_guard_on_text_reads_the_event_as_written():
    with policy_server() as memory:
        peer = crm_login(memory)
        admin = memory.connect()
        admin.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\n\r\n")
        admin.read()
        for mark in ("a", "b", "c"):
            memory.server.publish(Event("Shown", "user", {"Mark": mark}))
        memory.run()
        assert [b.get("Mark") for b in parse_blocks(peer.read())] == ["a", "c"]
        assert [b.get("Mark") for b in parse_blocks(admin.read())] == ["a", "b", "c"]


def test_only_one_plugin_may_route_unknown_actions():
    class Second(Policy):
        pass

    config = make_config({"users": USERS})
    with pytest.raises(Exception, match="cannot route unknown actions: plugin 'one' already does"):
        MemoryServer(config, extra_plugins=[("one", Policy()), ("two", Second())])


def test_unknown_actions_before_login_are_never_routed():
    with policy_server() as memory:
        peer = memory.connect()
        peer.read()
        peer.send(b"Action: Originate\r\n\r\n")
        assert peer.read() == b"Response: Error\r\nMessage: Permission denied\r\n\r\n"


class Slow:
    """A deferred action with its own timeout, and a plugin that reads its table at start-up."""

    @hookimpl
    def register_actions(self, server):
        from ami_server import Action

        self.table = dict(server.plugin_config)

        def slow(ctx):
            return ctx.defer()  # never answered

        return [Action("Slow", slow, "Never answers.", (), timeout=5.0)]


def test_an_action_timeout_replaces_the_server_setting_and_plugin_config_is_read_at_start():
    slow = Slow()
    config = make_config({"users": USERS, "plugins": {"slow": {"depth": 3}}}, action_timeout=1.0)
    with MemoryServer(config, extra_plugins=[("slow", slow)]) as memory:
        assert slow.table == {"depth": 3}
        peer = memory.connect()
        peer.send(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
        peer.read()
        peer.send(b"Action: Slow\r\nActionID: s\r\n\r\n")
        memory.advance(4.9)
        assert peer.read() == b""
        memory.advance(0.2)
        assert peer.read() == b"Response: Error\r\nActionID: s\r\nMessage: Action timed out\r\n\r\n"


def test_an_outbound_connection_over_tls_verifies_and_logs_in(tmp_path):
    """The outbound seam's TLS: the handshake runs on the loop, the server's certificate is verified."""
    from tlsutil import client_context, make_certificate

    cert, key = make_certificate(tmp_path)
    keeper = Keeper()
    tls = {"host": "127.0.0.1", "port": 0, "certificate": str(cert), "key": str(key)}
    upstream_config = make_config({"users": USERS, "server": {"tls": tls}})
    with running_server(upstream_config) as upstream, \
            running_server(make_config({"users": USERS}), extra_plugins=[("keeper", keeper)]):
        protocol = Recording()
        port = upstream.server.tls_address[1]
        context = client_context(cert)
        keeper.server.call_soon_threadsafe(lambda: keeper.server.connect(
            "127.0.0.1", port, protocol, tls=context, server_hostname="localhost", timeout=5))
        assert protocol.done.wait(5)
        assert protocol.events == ["made", "closing", ("lost", None)]
        # A client that does not trust the certificate fails the handshake and is told why.
        distrusting = Recording()
        import ssl

        strict = ssl.create_default_context()
        keeper.server.call_soon_threadsafe(lambda: keeper.server.connect(
            "127.0.0.1", port, distrusting, tls=strict, server_hostname="localhost", timeout=5))
        assert distrusting.done.wait(5)
    assert protocol.data.endswith(b"Response: Goodbye\r\nMessage: Thanks for all the fish.\r\n\r\n")
    (lost,) = distrusting.events
    assert lost[0] == "lost" and lost[1].startswith("TLS handshake failed") and "CERTIFICATE_VERIFY_FAILED" in lost[1]


class Lifecycle:
    """Logs outside a request, declares its own secret, and is told when the server stops."""

    def __init__(self):
        self.stopped = []

    @hookimpl
    def register_actions(self, server):
        server.add_secret("tok-9f8e7d6c5b")
        server.log.info("UpstreamConfigured", detail="password tok-9f8e7d6c5b for the upstream")
        server.on_stop(lambda: self.stopped.append(server.status().shutting_down))


def test_plugins_log_outside_requests_hide_their_secrets_and_hear_the_stop():
    plugin = Lifecycle()
    with running_server(make_config({"users": USERS}), extra_plugins=[("lifecycle", plugin)]) as srv:
        pass
    assert plugin.stopped == [True]
    (record,) = srv.log.records("UpstreamConfigured")
    assert record["plugin"] == "lifecycle"
    assert "tok-9f8e7d6c5b" not in srv.log.text()
