"""R2 actions, admin actions, graceful shutdown and reload (B-5.13 to B-5.16, Q-7.8, D-8.9)."""

from __future__ import annotations

import re
import signal
import time

import pytest

from ami_server import ActionError, CliCommand, CommandOutput, hookimpl
from ami_server.testing import AMIClient, make_config, running_server

from helpers import USERS, process_config, start_server_process, wait_for


# -- Command and CLI commands ------------------------------------------------


class Cli:
    @hookimpl
    def register_actions(self):
        def channels(ctx, args):
            verbose = args[:1] == ("verbose",)
            return CommandOutput(
                [f"Channels ({ctx.config.get('site', 'none')})", "verbose" if verbose else "brief"]
            )

        def refuse(ctx, args):
            raise ActionError("Command blacklisted")

        def broken(ctx, args):
            return CommandOutput(["Unable to reach the switch"], success=False)

        return [
            CliCommand("core show channels", channels),
            CliCommand("module load", refuse),
            CliCommand("switch status", broken),
        ]


def test_command_runs_plugin_cli_commands_b_5_16():
    cfg = make_config({"users": USERS, "plugins": {"cli": {"site": "lab"}}})
    with running_server(cfg, extra_plugins=[("cli", Cli())], entry_points=()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        reply = c.action("Command", {"ActionID": "1", "Command": "CORE show   channels verbose"})
        assert reply.lines == [
            ("Response", "Success"), ("ActionID", "1"), ("Message", "Command output follows"),
            ("Output", "Channels (lab)"), ("Output", "verbose"),
        ]
        assert c.action("Command", {"Command": "module load chan_pjsip.so"})["Message"] == "Command blacklisted"
        failed = c.action("Command", {"Command": "switch status"})
        assert failed.lines == [
            ("Response", "Error"), ("Message", "Command output follows"), ("Output", "Unable to reach the switch"),
        ]
        version = c.action("Command", {"Command": "core show version"})
        assert re.fullmatch(r"Asterisk 22\.10\.1 built by ami-server @ \S+ on a \S+ running \S+ on "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", version["Output"])
        assert c.action("Command", {"Command": "   "})["Message"] == "No command provided"
        with srv.client() as limited:
            limited.login("limited", "limitedpass")
            assert limited.action("Command", {"Command": "core show version"})["Message"] == "Permission denied"


def test_a_cli_command_clash_stops_start_up():
    from ami_server.audit import MemorySink
    from ami_server.server import Server, ServerError

    class Clash:
        @hookimpl
        def register_actions(self):
            return [CliCommand("core show  version", lambda ctx, args: [])]

    server = Server(make_config({"users": USERS}), log_sink=MemorySink(), entry_points=(),
                    extra_plugins=[("clash", Clash())])
    with pytest.raises(ServerError, match="CLI command 'core show version' from plugin 'clash' duplicates"):
        server.load()
    server.loop.close()


# -- Filter --------------------------------------------------------------------


def test_filters_apply_to_published_events_only_b_5_13():
    with running_server(make_config({"users": USERS}), entry_points=()) as srv:
        with srv.client() as watcher, srv.client() as sender:
            watcher.login("admin", "adminpass", events="user")
            sender.login("admin", "adminpass", events="off")
            assert watcher.action("Filter", {"Operation": "add", "Filter": "UserEvent: (a|b)"})["Message"] == "Success"
            assert watcher.action("Filter", {"Operation": "Add", "Filter": "!Data: secret"})["Message"] == "Success"
            for name, data in [("a", "x"), ("c", "x"), ("b", "secret"), ("b", "public")]:
                sender.action("UserEvent", {"UserEvent": name, "Data": data})
            sender.action("UserEvent", {"UserEvent": "done"})
            # Responses are never filtered, even though none matches.
            assert watcher.action("Ping")["Ping"] == "Pong"
            got = [(e["UserEvent"], e["Data"]) for e in watcher.events]
            deadline = time.monotonic() + 2
            while len(got) < 2 and time.monotonic() < deadline:
                block = watcher.read_block(timeout=2)
                got.append((block["UserEvent"], block["Data"]))
            assert got == [("a", "x"), ("b", "public")]
            bad = watcher.action("Filter", {"Operation": "Add", "Filter": "("})
            assert bad["Message"] == "Filter did not compile.  Check the syntax of the filter given."
            for n in range(98):
                watcher.action("Filter", {"Operation": "Add", "Filter": f"n{n}"})
            assert watcher.action("Filter", {"Operation": "Add", "Filter": "x"})["Message"].startswith("Too many filters")


# -- CoreSettings / CoreStatus / admin actions ---------------------------------


def test_core_settings_follow_the_configuration_b_5_14():
    cfg = make_config({"users": USERS}, system_name="pbx-7", asterisk_version="20.5.0")
    with running_server(cfg, entry_points=()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        settings = c.action("CoreSettings")
        assert settings["AsteriskVersion"] == "20.5.0" and settings["SystemName"] == "pbx-7"
        status = c.action("CoreStatus")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", status["CoreStartupDate"])
        assert status["CoreProcessedCalls"] == "0"


def test_admin_actions_list_kick_and_count():
    with running_server(make_config({"users": USERS}), entry_points=()) as srv:
        with srv.client() as admin, srv.client() as victim, srv.client() as stranger:
            admin.login("admin", "adminpass", events="off")
            victim.login("reader", "readerpass", events="off")
            admin.send("SessionList", {"ActionID": "l"})
            start = admin.read_response()
            assert start["EventList"] == "start" and start["Message"] == "Sessions will follow"
            entries = [admin.read_block() for _ in range(3)]
            complete = admin.read_block()
            assert complete["Event"] == "SessionListComplete" and complete["ListItems"] == "3"
            by_user = {e["Username"]: e for e in entries}
            assert by_user[""]["State"] == "PREAUTH"  # the stranger never logged in
            assert by_user["reader"]["State"] == "AUTHENTICATED" and by_user["reader"]["WriteClasses"] == "<none>"
            target = by_user["reader"]["SessionID"]
            status = admin.action("ServerStatus")
            assert (status["Sessions"], status["Authenticated"], status["Unauthenticated"]) == ("3", "2", "1")
            assert admin.action("SessionKick", {"SessionID": target})["Message"] == "Session kicked"
            assert victim.read_until_closed() == b""
            assert admin.action("SessionKick", {"SessionID": target})["Message"] == "No such session"
            assert stranger.action("ServerStatus")["Message"] == "Permission denied"
            with srv.client() as reader:
                reader.login("reader", "readerpass")
                assert reader.action("SessionKick", {"SessionID": "x"})["Message"] == "Permission denied"
    (revoked,) = srv.log.records("SessionRevoked")
    assert revoked["username"] == "reader" and revoked["reason"] == "kicked by admin"
    closed = [r for r in srv.log.records("SessionClosed") if r["username"] == "reader"]
    assert closed[0]["reason"] == "revoked"


# -- graceful shutdown ----------------------------------------------------------


class CloseRecorder:
    def __init__(self):
        self.closed = []

    @hookimpl
    def on_session_close(self, session, reason):
        self.closed.append(reason)


def test_graceful_shutdown_q_7_8():
    from ami_server.testing import ServerThread

    recorder = CloseRecorder()
    cfg = make_config({"users": USERS})
    thread = ServerThread(cfg, extra_plugins=[("recorder", recorder)], entry_points=()).start()
    try:
        watcher = thread.client()
        watcher.login("admin", "adminpass", events="system")
        assert watcher.read_block()["Event"] == "FullyBooted"
        late = thread.client()
        late.login("admin", "adminpass", events="off")
        thread.server.stop()
        event = watcher.read_block(timeout=5)
        assert event.lines == [("Event", "Shutdown"), ("Privilege", "system,all"),
                               ("Shutdown", "Cleanly"), ("Restart", "False")]
        assert watcher.read_until_closed(timeout=5) == b""
        assert late.read_until_closed(timeout=5) == b""
    finally:
        thread._thread.join(10)
    assert not thread._thread.is_alive()
    assert recorder.closed == ["shutdown", "shutdown"]
    with pytest.raises(OSError):
        AMIClient("127.0.0.1", thread.port, timeout=1)


def test_actions_during_shutdown_answer_e_6_16():
    """A client that keeps the loop busy while the server drains gets E-6.16."""
    from ami_server import Action, Response

    class Slow:
        @hookimpl
        def register_actions(self):
            def hold(ctx):
                deferred = ctx.defer()
                ctx.call_later(0.3, lambda: deferred.complete(Response.success("Held")))
                return deferred

            return [Action("Hold", hold, "Reply after 0.3 s.", ())]

    cfg = make_config({"users": USERS})
    with running_server(cfg, extra_plugins=[("slow", Slow())], entry_points=()) as thread:
        client = thread.client()
        client.login("admin", "adminpass", events="off")
        client.send("Hold", {"ActionID": "h"})
        client.send("Ping", {"ActionID": "p"})
        time.sleep(0.05)  # the Hold is running; the Ping waits behind it
        thread.server.stop()
        held = client.read_response(timeout=5)
        assert held.lines == [("Response", "Success"), ("ActionID", "h"), ("Message", "Held")]
        ping = client.read_response(timeout=5)
        assert ping.lines == [("Response", "Error"), ("ActionID", "p"), ("Message", "Asterisk is shutting down")]


# -- reload ---------------------------------------------------------------------


def test_reload_applies_users_and_revokes_per_d_8_9():
    users = {
        "admin": USERS["admin"],
        "stay": {"secret": "staypass", "read": "call", "write": []},
        "gone": {"secret": "gonepass", "read": "all", "write": "all"},
        "rekey": {"secret": "oldpass", "read": "all", "write": "all"},
        "fenced": {"secret": "fencedpass", "read": "all", "write": "all"},
        "paused": {"secret": "pausedpass", "read": "all", "write": "all"},
    }
    with running_server(make_config({"users": users}), entry_points=()) as srv:
        clients = {name: srv.client() for name in users}
        try:
            for name, client in clients.items():
                client.login(name, users[name]["secret"], events="off")
            new_users = dict(users)
            del new_users["gone"]
            new_users["stay"] = {"secret": "staypass", "read": "call,user", "write": "user"}
            new_users["rekey"] = {"secret": "newpass", "read": "all", "write": "all"}
            new_users["fenced"] = dict(users["fenced"], permit=["192.0.2.0/24"])
            new_users["paused"] = dict(users["paused"], enabled=False)
            new_users["fresh"] = {"secret": "freshpass", "read": "all", "write": "all"}
            ok, message = srv.call(lambda: srv.server.reload(make_config({"users": new_users})))
            assert ok, message
            assert message == "Configuration reloaded (1 sessions updated, 4 revoked)"
            for name in ("gone", "rekey", "fenced", "paused"):
                assert clients[name].read_until_closed() == b"", name
            # The survivor takes its new classes at once.
            assert clients["stay"].action("UserEvent", {"UserEvent": "now-allowed"})["Response"] == "Success"
            assert clients["admin"].action("Ping")["Ping"] == "Pong"
            with srv.client() as c:
                assert c.login("fresh", "freshpass")["Message"] == "Authentication accepted"
            with srv.client() as c:
                c.send("Login", {"Username": "paused", "Secret": "pausedpass"})
                assert c.read_until_closed() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
        finally:
            for client in clients.values():
                client.close()
    reasons = sorted((r["username"], r["reason"]) for r in srv.log.records("SessionRevoked"))
    assert reasons == [("fenced", "denied by ACL"), ("gone", "user removed"),
                       ("paused", "user disabled"), ("rekey", "secret changed")]


def test_a_failed_reload_changes_nothing(tmp_path):
    with running_server(make_config({"users": USERS}), entry_points=()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        bad = make_config({"users": USERS, "auth": {"backends": ["ldap"]}})
        ok, message = srv.call(lambda: srv.server.reload(bad))
        assert not ok and "auth.backends: no loaded plugin named 'ldap'" in message
        cert = tmp_path / "missing.crt"
        tls = make_config({"users": USERS, "server": {"tls": {"certificate": str(cert), "key": str(cert)}}})
        ok, message = srv.call(lambda: srv.server.reload(tls))
        assert not ok and "server.tls.certificate: cannot read" in message
        assert c.action("Ping")["Ping"] == "Pong"
        reply = c.action("ServerReload")  # the test config has no file behind it
        assert reply["Response"] == "Error" and reply["Message"].startswith("Reload failed: <test>")
    assert len(srv.log.records("ReloadFailed")) == 3 and not srv.log.records("ConfigReloaded")


def test_sighup_reloads_a_real_process(tmp_path):
    config = tmp_path / "config.toml"
    log_file = tmp_path / "audit.log"
    base = process_config(log_file) + """
[users.admin]
secret = "admin-secret"
read = "all"
write = "all"
"""
    config.write_text(base + '\n[users.ops]\nsecret = "ops-secret"\nread = "call"\n')
    process, port = start_server_process(config, log_file)
    try:
        with AMIClient("127.0.0.1", port) as admin, AMIClient("127.0.0.1", port) as ops:
            admin.login("admin", "admin-secret", events="off")
            ops.login("ops", "ops-secret", events="off")
            # An invalid file: the server keeps running on the old configuration.
            config.write_text(base + '\n[users.ops]\nsecret = "ops-secret"\nread = "sytem"\n')
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: "ReloadFailed" in log_file.read_text(), "ReloadFailed")
            assert "users.ops.read: unknown class: 'sytem'" in log_file.read_text()
            assert ops.action("Ping")["Ping"] == "Pong"
            # Remove ops: its session is revoked, admin's stays.
            config.write_text(base)
            process.send_signal(signal.SIGHUP)
            assert ops.read_until_closed(timeout=10) == b""
            assert admin.action("Ping")["Ping"] == "Pong"
            assert admin.action("ServerReload")["Message"] == "Configuration reloaded (0 sessions updated, 0 revoked)"
        # Audit lines reach the file from a writer thread, a moment later.
        wait_for(lambda: '"event":"SessionRevoked"' in log_file.read_text(), "SessionRevoked in the audit file")
        text = log_file.read_text()
        assert '"reason":"user removed"' in text
        assert "ops-secret" not in text and "admin-secret" not in text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    assert process.returncode == 0


def test_reload_moves_the_listener_before_closing_the_old_one():
    import socket

    with running_server(make_config({"users": USERS}), entry_points=()) as srv, srv.client() as c:
        c.login("admin", "adminpass", events="off")
        old_port = srv.port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        new_port = probe.getsockname()[1]
        probe.close()
        ok, message = srv.call(lambda: srv.server.reload(make_config({"users": USERS}, port=new_port)))
        assert ok, message
        assert c.action("Ping")["Ping"] == "Pong"  # the established session was not dropped
        with AMIClient("127.0.0.1", new_port) as moved:
            assert moved.login("admin", "adminpass")["Message"] == "Authentication accepted"
        with pytest.raises(OSError):
            AMIClient("127.0.0.1", old_port, timeout=1)
        # A port that is taken: the reload fails and the current listener stays.
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        try:
            taken = blocker.getsockname()[1]
            ok, message = srv.call(lambda: srv.server.reload(make_config({"users": USERS}, port=taken)))
            assert not ok and "cannot listen on 127.0.0.1" in message
        finally:
            blocker.close()
        with AMIClient("127.0.0.1", new_port) as again:
            assert again.banner == b"Asterisk Call Manager/11.0.0"
