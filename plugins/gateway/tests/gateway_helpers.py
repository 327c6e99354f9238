"""Helpers and fixtures of the gateway tests: users, config builders, waits, the double, a gateway.

Test modules import the fixtures they use from here (a conftest.py would
clash with the root test suite's ``conftest`` module).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, Optional

import pytest
from asterisk_double import AsteriskDouble, Recording, listcommands_handler

from ami_server.testing import ServerThread, make_config, running_server

RECORDINGS = ("coreshowchannels", "status_action", "command_outputs", "list_actions_misc",
              "originate_async_local_lifecycle")

#: Builtins a gateway deployment disables so that these actions reach Asterisk, and the
#: PBX simulator, which answers the call actions locally where it is installed too.
FORWARDED_BUILTINS = ["command", "userevent", "core", "pbxsim"]

USERS: Dict[str, Any] = {
    "admin": {"secret": "adminpass", "read": "all", "write": "all"},
    "reader": {"secret": "readerpass", "read": "system,call,user", "write": []},
    "dashboard": {
        "secret": "dashpass", "read": "call", "write": "reporting",
        "attributes": {"gateway": {"events": ["Newchannel", "Hangup", "Newstate", "Dial*"],
                                   "actions": ["Ping", "Status", "CoreShowChannels", "ListCommands"]}},
    },
    "ops": {
        "secret": "opspass", "read": "all", "write": "all",
        "attributes": {"gateway": {
            "deny_actions": ["Redirect", "Module*"],
            "constraints": {"Originate": {"Context": ["default"]}, "Command": {"Command": ["core show *"]}},
            "deny_events": ["VarSet"],
        }},
    },
    "limited": {"secret": "limitedpass", "read": "all", "write": "all",
                "attributes": {"gateway": {"rate": 2, "burst": 3}}},
}


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"{what} not reached in {timeout} s")


def upstream_table(port: int, **extra: Any) -> Dict[str, Any]:
    table = {"host": "127.0.0.1", "port": port, "username": "gateway", "secret": "gw-secret",
             "backoff_initial": 0.05, "backoff_cap": 0.5, "action_timeout": 3.0}
    table.update(extra)
    return table


def gateway_config(upstreams: Dict[str, Dict[str, Any]], users: Optional[Dict[str, Any]] = None,
                   disable: Optional[list] = None, **options: Any) -> Any:
    return make_config({
        "users": users or USERS,
        "plugins": {"disable": FORWARDED_BUILTINS if disable is None else disable,
                    "gateway": {"upstreams": upstreams, **options}},
    })


def upstream_up(gateway: ServerThread, name: str = "pbx1") -> bool:
    plugin = gateway_of(gateway)
    return plugin.upstreams[name].state == "up"


def gateway_of(thread: ServerThread) -> Any:
    """The Gateway object of a running server (for white-box waits in tests only)."""
    plugin = thread.server.manager.get_plugin("gateway")
    if plugin is not None and plugin.gateway is not None:
        return plugin.gateway
    raise LookupError("no gateway plugin loaded")


@pytest.fixture
def double() -> Iterator[AsteriskDouble]:
    recordings = tuple(Recording.load(name) for name in RECORDINGS)
    server = AsteriskDouble(recordings)
    server.handlers["listcommands"] = listcommands_handler
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway(double: AsteriskDouble) -> Iterator[ServerThread]:
    with running_server(gateway_config({"pbx1": upstream_table(double.port)})) as thread:
        wait_until(lambda: upstream_up(thread), what="upstream up")
        yield thread
