"""``ami-server plugins``: what would be loaded, from where, and what it adds.

Unlike start-up, the listing does not stop at the first broken plugin: every
plugin is reported, loaded or not, so that an operator sees all problems at
once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, List, Optional, Tuple

from .context import ServerHandle
from .records import TimerHandle
from .config import Config
from .plugins import (
    collect_actions,
    create_plugin_manager,
    load_plugins,
)
from .privileges import class_names

__all__ = ["ActionReport", "PluginReport", "inspect_plugins", "format_text", "format_json"]


@dataclass(frozen=True)
class ActionReport:
    """One action as the listing shows it."""

    name: str
    privileges: Tuple[str, ...]
    synopsis: str
    blocking: bool
    read_only: bool


@dataclass(frozen=True)
class PluginReport:
    """One plugin: where it comes from, whether it loaded, what it implements."""

    name: str
    group: str
    distribution: str
    version: str
    status: str
    target: str
    error: str
    hooks: Tuple[str, ...]
    actions: Tuple[ActionReport, ...]
    cli_commands: Tuple[str, ...] = ()


class _InertHost:
    """What a :class:`ServerHandle` reaches while listing: no server runs, so nothing is delivered."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def publish(self, event: Any) -> None:
        pass

    def add_reload_listener(self, listener: Any) -> None:
        pass

    @property
    def bus(self) -> Any:
        raise RuntimeError("no server is running")

    def status(self) -> Any:
        raise RuntimeError("no server is running")

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no server is running")

    def route_unknown(self, action: Any, plugin: str, read_only: Any = None) -> None:
        pass

    def add_stop_listener(self, listener: Any) -> None:
        pass

    class redactor:  # noqa: N801
        @staticmethod
        def add_secrets(secrets: Any) -> None:
            pass

    @property
    def log(self) -> Any:
        import structlog

        return structlog.get_logger("ami-server.plugins")

    class dispatcher:  # noqa: N801 - guards are collected and never asked while listing
        guards: list = []

    class login:  # noqa: N801
        event_guards: list = []

    class control:  # noqa: N801
        listers: list = []

    class loop:  # noqa: N801 - stands in for the loop's two scheduling calls
        @staticmethod
        def call_soon_threadsafe(callback: Any) -> None:
            pass

        @staticmethod
        def call_later(delay: float, callback: Any) -> TimerHandle:
            return TimerHandle(float("inf"), callback)


def inspect_plugins(config: Config, entry_points: Optional[Iterable[Any]] = None) -> List[PluginReport]:
    """Load every plugin as the server would (without stopping at failures) and report on each."""
    manager = create_plugin_manager()
    records = load_plugins(manager, config.plugins, (), entry_points, strict=False)
    failures: dict = {}
    registry = collect_actions(manager, records, ServerHandle(_InertHost(config)), config.plugins.tables, failures)
    reports = []
    for record in records:
        status, error = record.status, record.error
        if record.name in failures:
            status, error = "failed", failures[record.name]
        hooks: Tuple[str, ...] = ()
        plugin = manager.get_plugin(record.name) if record.status == "loaded" else None
        if plugin is not None:
            hooks = tuple(sorted(caller.name for caller in manager.get_hookcallers(plugin) or ()))
        actions = tuple(
            ActionReport(
                entry.action.name,
                tuple(class_names(entry.action.privileges)),
                entry.action.synopsis,
                entry.action.blocking,
                entry.action.read_only,
            )
            for entry in registry.of_plugin(record.name)
        )
        cli = tuple(entry.command.command for entry in registry.cli_of_plugin(record.name))
        reports.append(
            PluginReport(
                record.name, record.group, record.distribution, record.version, status,
                record.target, error, hooks, actions, cli,
            )
        )
    return reports


def format_json(reports: List[PluginReport]) -> str:
    return json.dumps({"plugins": [asdict(r) for r in reports]}, indent=2)


def format_text(reports: List[PluginReport]) -> str:
    lines = []
    for report in reports:
        source = f"{report.distribution} {report.version}".strip() or "unknown distribution"
        lines.append(f"{report.name}  [{report.status}]  {source}  ({report.group}: {report.target})")
        if report.error:
            lines.append(f"    error: {report.error}")
        if report.hooks:
            lines.append(f"    hooks: {', '.join(report.hooks)}")
        for action in report.actions:
            privileges = ",".join(action.privileges) or "<none>"
            flags = "".join(
                f", {flag}" for flag, on in (("blocking", action.blocking), ("read-only", action.read_only)) if on
            )
            lines.append(f"    action {action.name}  (privileges: {privileges}{flags})  {action.synopsis}")
        for command in report.cli_commands:
            lines.append(f"    CLI command '{command}'  (through the Command action)")
    return "\n".join(lines) + "\n"
