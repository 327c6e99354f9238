"""``ami-server plugins``: every plugin reported, broken ones included (real EntryPoint objects)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


from ami_server.listing import format_text, inspect_plugins
from ami_server.testing import make_config

from helpers import plugin_module

ROOT = Path(__file__).resolve().parent.parent


GOOD = """
    from ami_server import Action, Response, hookimpl

    @hookimpl
    def register_actions():
        return [
            Action("Lookup", lambda ctx: Response.success(), "Look a number up.", "call,reporting",
                   blocking=True),
        ]

    @hookimpl
    def on_session_close(session, reason):
        return None
"""
CLASHING = """
    from ami_server import Action, Response, hookimpl

    @hookimpl
    def register_actions():
        return [Action("lookup", lambda ctx: Response.success(), "Clash.", ())]
"""
MISSPELLED = """
    from ami_server import hookimpl

    @hookimpl
    def on_sesion_open(session):
        return None
"""


def plugins_command(cwd, *args):
    """``ami-server plugins ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "ami_server.cli", "plugins", *args], capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def by_name(reports):
    return {r.name: r for r in reports}


def test_loaded_broken_disabled_and_missing_plugins_are_all_reported(plugin_dir):
    entry_points = [
        plugin_module(plugin_dir, "lookup_plugin", GOOD),
        plugin_module(plugin_dir, "clashing_plugin", CLASHING),
        plugin_module(plugin_dir, "misspelled_plugin", MISSPELLED),
        plugin_module(plugin_dir, "broken_import", "import no_such_module_here\n"),
        plugin_module(plugin_dir, "switched_off", "raise RuntimeError('must not be imported')\n"),
    ]
    config = make_config({"plugins": {"disable": ["switched_off", "userevent"], "required": ["absent_plugin"]}})
    reports = by_name(inspect_plugins(config, entry_points))

    good = reports["lookup_plugin"]
    assert good.status == "loaded" and good.group == "ami_server.actions"
    assert good.target == "lookup_plugin"
    assert good.hooks == ("on_session_close", "register_actions")
    (lookup,) = good.actions
    assert lookup.name == "Lookup" and lookup.privileges == ("call", "reporting") and lookup.blocking

    assert reports["clashing_plugin"].status == "failed"
    assert "duplicates 'Lookup' from plugin 'lookup_plugin'" in reports["clashing_plugin"].error
    assert reports["clashing_plugin"].actions == ()
    assert reports["misspelled_plugin"].status == "failed"
    assert "on_sesion_open" in reports["misspelled_plugin"].error
    assert reports["broken_import"].status == "failed"
    assert "no_such_module_here" in reports["broken_import"].error
    assert reports["switched_off"].status == "disabled"
    assert reports["userevent"].status == "disabled" and reports["userevent"].group == "builtin"
    assert reports["absent_plugin"].status == "missing"
    assert reports["config"].hooks == ("authenticate", "register_actions")
    assert reports["config"].target == "ami_server.builtin.config_auth:ConfigBackend"
    assert [a.name for a in reports["ping"].actions] == ["Ping"]

    text = format_text(list(reports.values()))
    assert "lookup_plugin  [loaded]" in text
    assert "action Lookup  (privileges: call,reporting, blocking)  Look a number up." in text
    assert "broken_import  [failed]" in text and "switched_off  [disabled]" in text


def test_cli_lists_installed_plugins_as_json(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[plugins]\ndisable = ["waitevent"]\n')
    result = plugins_command(tmp_path, "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["waitevent"]["status"] == "disabled"
    assert plugins["listcommands"]["actions"][0]["name"] == "ListCommands"
    assert plugins["login"]["distribution"] == "ami-server"
    # CI installs the example plugin as its own distribution.
    hello = plugins["example_hello"]
    assert hello["distribution"] == "ami-server-example-hello" and hello["version"] == "0.1.0"
    assert hello["group"] == "ami_server.actions"
    assert {a["name"]: a["privileges"] for a in hello["actions"]} == {"Hello": ["user"], "HelloNames": ["user"]}


def test_cli_exits_1_when_a_plugin_fails(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[plugins]\nrequired = ["not_installed_anywhere"]\n')
    result = plugins_command(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert "not_installed_anywhere  [missing]" in result.stdout
    assert "ping  [loaded]  ami-server" in result.stdout


def test_cli_plugins_reports_config_errors(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[plugins]\ndisable = 3\n")
    result = plugins_command(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert f"{config}: plugins.disable: must be a list of non-empty strings" in result.stderr


def test_cli_commands_are_listed_with_their_plugin():
    reports = by_name(inspect_plugins(make_config(), entry_points=()))
    assert reports["core"].cli_commands == ("core show uptime", "core show version")
    assert [a.name for a in reports["core"].actions] == ["CoreSettings", "CoreStatus"]
    assert "CLI command 'core show version'  (through the Command action)" in format_text(list(reports.values()))


def test_disabling_an_essential_builtin_is_reported_as_a_failure():
    reports = by_name(inspect_plugins(make_config({"plugins": {"disable": ["logoff"]}}), entry_points=()))
    assert reports["logoff"].status == "failed"
    assert reports["logoff"].error == "plugin 'logoff' is essential and cannot be disabled"
