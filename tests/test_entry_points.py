"""Loading third-party plugins from ``ami_server.actions`` entry points (real EntryPoint objects)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from ami_server.audit import MemorySink
from ami_server.server import Server, ServerError
from ami_server.testing import AMIClient, make_config, running_server

from helpers import plugin_module


def load(entry_points, **config):
    server = Server(make_config(config), log_sink=MemorySink(), entry_points=entry_points)
    try:
        server.load()
    finally:
        server.loop.close()
    return server


GOOD = """
    from ami_server import Action, Response, hookimpl

    @hookimpl
    def register_actions():
        return [Action("Greet", lambda ctx: Response.success("hi"), "Greet.", ())]
"""


def test_a_good_plugin_adds_its_action(plugin_dir):
    server = load([plugin_module(plugin_dir, "good_plugin", GOOD)])
    assert server.actions.get("greet").plugin == "good_plugin"


def test_import_failure_names_the_plugin(plugin_dir):
    ep = plugin_module(plugin_dir, "broken_plugin", "raise ImportError('missing dependency xyz')\n")
    with pytest.raises(ServerError, match=r"plugin 'broken_plugin'.*cannot load broken_plugin.*missing dependency xyz"):
        load([ep])


def test_disabled_plugin_is_never_imported(plugin_dir):
    ep = plugin_module(plugin_dir, "explodes_on_import", "raise RuntimeError('imported!')\n")
    server = load([ep], plugins={"disable": ["explodes_on_import"]})
    record = next(r for r in server.plugins if r.name == "explodes_on_import")
    assert record.status == "disabled"
    assert "explodes_on_import" not in sys.modules


def test_misspelled_hook_names_the_plugin(plugin_dir):
    ep = plugin_module(plugin_dir, "typo_plugin", """
        from ami_server import hookimpl

        @hookimpl
        def register_action():
            return []
    """)
    with pytest.raises(ServerError, match=r"plugin 'typo_plugin'.*register_action"):
        load([ep])


def one_action_plugin(plugin_dir, name, action_name):
    return plugin_module(plugin_dir, name, f"""
        from ami_server import Action, Response, hookimpl

        @hookimpl
        def register_actions():
            return [Action({action_name!r}, lambda ctx: Response.success(), "Mine.", ())]
    """)


def test_duplicate_action_names_both_plugins(plugin_dir):
    ep = one_action_plugin(plugin_dir, "ping_clash", "PING")
    with pytest.raises(ServerError, match=r"'PING' from plugin 'ping_clash' duplicates 'Ping' from plugin 'ping'"):
        load([ep])


def test_third_party_cannot_run_before_login(plugin_dir):
    # Its own action is refused before login and answered after it.
    greet = plugin_module(plugin_dir, "good_plugin", GOOD)
    users = {"admin": {"secret": "adminpass", "read": "all", "write": "all"}}
    with running_server(make_config({"users": users}), entry_points=[greet]) as srv, srv.client() as client:
        assert client.action("Greet")["Message"] == "Permission denied"
        client.login("admin", "adminpass", events="off")
        assert client.action("Greet")["Message"] == "hi"
    # Nor can it take over an action that runs before login: those are essential builtins,
    # so the claim is refused as a duplicate.
    for number, name in enumerate(("Login", "Challenge", "Logoff")):
        ep = one_action_plugin(plugin_dir, f"fake_login_{number}", name)
        with pytest.raises(ServerError, match=f"plugin 'fake_login_{number}'.*'{name}'"):
            load([ep])


def test_required_plugin_missing():
    with pytest.raises(ServerError, match="'ldap_auth' is required"):
        load([], plugins={"required": ["ldap_auth"]})


def test_essential_builtin_cannot_be_disabled():
    with pytest.raises(ServerError, match="'logoff' is essential"):
        load([], plugins={"disable": ["logoff"]})


def test_installed_example_plugin_in_a_real_process(tmp_path):
    """ami-server finds the pip-installed example_hello through its entry point."""
    pytest.importorskip("ami_server_example_hello")
    cfg = tmp_path / "ami.toml"
    cfg.write_text(
        '[server]\nport = 0\n[users.admin]\nsecret = "pw-1"\nread = "all"\nwrite = "all"\n'
        '[plugins.example_hello]\ngreeting = "Hello"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    found = {}

    def reader():
        for line in proc.stderr:
            if '"ServerStarted"' in line:
                found["address"] = json.loads(line)["address"]

    threading.Thread(target=reader, daemon=True).start()
    try:
        deadline = time.monotonic() + 15
        while "address" not in found and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        host, port = found["address"].rsplit(":", 1)
        with AMIClient(host, int(port)) as client:
            client.login("admin", "pw-1", events="off")
            assert "Hello" in client.action("ListCommands")
            assert client.action("Hello", {"Name": "World"})["Message"] == "Hello, World!"
    finally:
        proc.terminate()
        proc.wait(10)
