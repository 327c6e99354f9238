"""The plugin host: one pluggy manager per server, builtins, entry points, actions.

Builtins are imported by module name; third-party plugins come from the
``ami_server.actions`` entry point group. A plugin named in
``[plugins] disable`` is never imported. Every load failure names the plugin,
its distribution and version, and the cause.

A plugin is a module or an object with hook implementations. A target that
is a class (``module:Class``) is instantiated once per server, so a plugin
that keeps state (the ``config`` backend's user table) keeps it per server.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

import pluggy

from . import hookspecs
from .hooks import plugin_callers
from .context import ServerHandle
from .records import Action, CliCommand
from .config import PluginSettings
from .protocol import ascii_lower

if sys.version_info >= (3, 10):
    from importlib.metadata import EntryPoint, entry_points as _entry_points
else:  # pragma: no cover
    from importlib_metadata import EntryPoint, entry_points as _entry_points

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTIN_PLUGINS",
    "ESSENTIAL_PLUGINS",
    "PluginLoadError",
    "PluginRecord",
    "RegisteredAction",
    "ActionRegistry",
    "create_plugin_manager",
    "load_plugins",
    "collect_actions",
    "discover_entry_points",
]

ENTRY_POINT_GROUP = "ami_server.actions"

#: Builtin plugin name -> module (or ``module:Class``). Order is registration order.
BUILTIN_PLUGINS: Tuple[Tuple[str, str], ...] = (
    ("config", "ami_server.builtin.config_auth:ConfigBackend"),
    ("login", "ami_server.builtin.login"),
    ("logoff", "ami_server.builtin.logoff"),
    ("challenge", "ami_server.builtin.challenge"),
    ("ping", "ami_server.builtin.ping"),
    ("events", "ami_server.builtin.events"),
    ("listcommands", "ami_server.builtin.listcommands"),
    ("userevent", "ami_server.builtin.userevent"),
    ("waitevent", "ami_server.builtin.waitevent"),
    ("core", "ami_server.builtin.core"),
    ("filter", "ami_server.builtin.filter"),
    ("command", "ami_server.builtin.command"),
    ("admin", "ami_server.builtin.admin"),
    ("logrotate", "ami_server.builtin.logrotate"),
)
#: Builtins that cannot be disabled: without them no client can log in or out.
ESSENTIAL_PLUGINS = frozenset({"config", "login", "logoff", "challenge"})
#: Actions that run before login (R-2.8 step 2); only builtins may provide them.
PRE_LOGIN_ACTIONS = frozenset({"login", "logoff", "challenge"})


class PluginLoadError(Exception):
    """A plugin could not be loaded or registered; the message names it."""


@dataclass(frozen=True)
class PluginRecord:
    """What the host knows about one plugin, loaded or not."""

    name: str
    group: str
    distribution: str = ""
    version: str = ""
    status: str = "loaded"  # loaded | disabled | failed | missing
    target: str = ""
    error: str = ""

    def describe(self) -> str:
        dist = f"{self.distribution} {self.version}".strip() or "builtin"
        return f"plugin {self.name!r} ({dist})"


@dataclass(frozen=True)
class RegisteredAction:
    """An action with the plugin that provided it."""

    action: Action
    plugin: str
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredCli:
    """A CLI command with the plugin that provided it."""

    command: CliCommand
    plugin: str
    config: Mapping[str, Any] = field(default_factory=dict)


def create_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with ami-server's hookspecs (one per server instance)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def discover_entry_points() -> List[EntryPoint]:
    """Installed entry points of the ``ami_server.actions`` group."""
    return list(_entry_points(group=ENTRY_POINT_GROUP))


def _dist_of(entry_point: EntryPoint) -> Tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or "", dist.version or ""


def load_plugins(
    manager: pluggy.PluginManager,
    settings: PluginSettings,
    extra: Sequence[Tuple[str, Any]] = (),
    entry_points: Optional[Iterable[EntryPoint]] = None,
    *,
    strict: bool = True,
) -> List[PluginRecord]:
    """Register builtins, ``extra`` objects and entry-point plugins on ``manager``.

    ``extra`` holds ``(name, plugin object)`` pairs registered as builtins
    (the server's own configured backends). Raises :class:`PluginLoadError`
    at the first failure; with ``strict=False`` (the plugin listing) every
    failure becomes a ``failed`` or ``missing`` record instead.
    """
    disabled = set(settings.disable)
    blocked_essential = disabled & ESSENTIAL_PLUGINS
    if blocked_essential and strict:
        raise PluginLoadError(
            f"plugin {sorted(blocked_essential)[0]!r} is essential and cannot be disabled"
        )
    disabled -= ESSENTIAL_PLUGINS
    records: List[PluginRecord] = []

    def fail(record: PluginRecord, message: str, cause: Optional[BaseException] = None) -> None:
        if strict:
            raise PluginLoadError(message) from cause
        records.append(replace(record, status="failed", error=message))

    def register(record: PluginRecord, plugin: Any) -> None:
        if manager.has_plugin(record.name):
            fail(record, f"{record.describe()}: another plugin is already named {record.name!r}")
            return
        try:
            manager.register(plugin, name=record.name)
        except pluggy.PluginValidationError as exc:
            fail(record, f"{record.describe()}: invalid hook implementation: {exc}")
            return
        records.append(record)

    for name, module_name in BUILTIN_PLUGINS:
        record = PluginRecord(name, "builtin", "ami-server", _own_version(), target=module_name)
        if name in disabled:
            records.append(PluginRecord(name, "builtin", "ami-server", _own_version(), "disabled", module_name))
            continue
        try:
            plugin = _instantiate(_import_target(module_name))
        except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
            fail(record, f"{record.describe()}: import of {module_name} failed: {exc!r}", exc)
            continue
        register(record, plugin)

    for name, plugin in extra:
        register(PluginRecord(name, "builtin", "ami-server", _own_version(), target=_target_of(plugin)), plugin)

    if entry_points is None:
        entry_points = discover_entry_points()
    for entry_point in entry_points:
        dist, version = _dist_of(entry_point)
        record = PluginRecord(entry_point.name, ENTRY_POINT_GROUP, dist, version, target=entry_point.value)
        if entry_point.name in disabled:
            records.append(PluginRecord(entry_point.name, ENTRY_POINT_GROUP, dist, version, "disabled", entry_point.value))
            continue
        try:
            plugin = _instantiate(entry_point.load())
        except Exception as exc:  # noqa: BLE001
            fail(record, f"{record.describe()}: cannot load {entry_point.value}: {exc!r}", exc)
            continue
        register(record, plugin)

    while True:
        try:
            manager.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            plugin_name = manager.get_name(exc.plugin) if exc.plugin is not None else "?"
            index = next((i for i, r in enumerate(records) if r.name == plugin_name), None)
            who = records[index].describe() if index is not None else f"plugin {plugin_name!r}"
            if strict or index is None:
                raise PluginLoadError(f"{who}: {exc}") from None
            manager.unregister(name=plugin_name)
            records[index] = replace(records[index], status="failed", error=f"{who}: {exc}")

    for index, record in enumerate(records):
        if record.name in blocked_essential:
            # Only reachable with strict=False: the server itself refuses to start.
            records[index] = replace(
                record, status="failed", error=f"plugin {record.name!r} is essential and cannot be disabled"
            )
    known = {r.name: r for r in records}
    for name in settings.required:
        record = known.get(name)
        if record is None or record.status != "loaded":
            message = f"plugin {name!r} is required by [plugins] required but is not installed"
            if record is not None and record.status == "failed":
                message = f"plugin {name!r} is required by [plugins] required but failed to load"
            if strict:
                raise PluginLoadError(message)
            if record is None:
                records.append(PluginRecord(name, ENTRY_POINT_GROUP, status="missing", error=message))
    return records


def _import_target(target: str) -> Any:
    """``module`` or ``module:attribute``, imported."""
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _instantiate(plugin: Any) -> Any:
    """A class is instantiated (one plugin object per server); anything else is the plugin."""
    return plugin() if isinstance(plugin, type) else plugin


def _own_version() -> str:
    from ._version import __version__

    return __version__


class ActionRegistry:
    """Actions by ASCII-lower-cased name (P-1.15), with the providing plugin.

    Names and CLI words fold ``A``-``Z`` only (:func:`~ami_server.protocol.ascii_lower`),
    as Asterisk's ``strcasecmp`` does: a look-alike such as U+212A never names an action.
    """

    def __init__(self) -> None:
        #: ASCII-lower-cased action name -> entry; read by the dispatcher, changed only through add/add_all.
        self.by_name: dict[str, RegisteredAction] = {}
        #: The same entries under the names as the plugins spell them: a request
        #: spelled that way (nearly all) is found without lower-casing it.
        self.by_spelling: dict[str, RegisteredAction] = {}
        self._cli: dict[Tuple[str, ...], RegisteredCli] = {}

    def add(self, entry: RegisteredAction, builtin: bool) -> None:
        self.add_all([entry], builtin)

    def add_all(
        self, entries: Sequence[RegisteredAction], builtin: bool, clis: Sequence[RegisteredCli] = ()
    ) -> None:
        """Add one plugin's actions and CLI commands: all of them, or none if any is refused."""
        staged_cli: dict[Tuple[str, ...], RegisteredCli] = {}
        for cli in clis:
            words = tuple(ascii_lower(w) for w in _ascii_words(cli.command.command))
            other = staged_cli.get(words) or self._cli.get(words)
            if other is not None:
                raise PluginLoadError(
                    f"CLI command {cli.command.command!r} from plugin {cli.plugin!r} duplicates "
                    f"{other.command.command!r} from plugin {other.plugin!r}"
                )
            staged_cli[words] = cli
        staged: dict[str, RegisteredAction] = {}
        for entry in entries:
            key = ascii_lower(entry.action.name)
            other = staged.get(key) or self.by_name.get(key)
            if other is not None:
                raise PluginLoadError(
                    f"action {entry.action.name!r} from plugin {entry.plugin!r} duplicates "
                    f"{other.action.name!r} from plugin {other.plugin!r} (names are case-insensitive)"
                )
            if key in PRE_LOGIN_ACTIONS and not builtin:
                raise PluginLoadError(
                    f"plugin {entry.plugin!r} may not provide {entry.action.name!r}: only builtins run before login"
                )
            staged[key] = entry
        self.by_name.update(staged)
        self.by_spelling.update((entry.action.name, entry) for entry in staged.values())
        self._cli.update(staged_cli)

    def find_cli(self, text: str) -> Optional[Tuple[RegisteredCli, Tuple[str, ...]]]:
        """The command with the most leading words of ``text``, and the words after it.

        Words are split at ASCII blanks and compared ASCII-case-insensitively, as
        Asterisk's CLI does.
        """
        words = _ascii_words(text)
        lowered = tuple(ascii_lower(w) for w in words)
        for length in range(len(words), 0, -1):
            entry = self._cli.get(lowered[:length])
            if entry is not None:
                return entry, tuple(words[length:])
        return None

    def all_cli(self) -> List[RegisteredCli]:
        return sorted(self._cli.values(), key=lambda e: e.command.words)

    def cli_of_plugin(self, plugin: str) -> List[RegisteredCli]:
        return [e for e in self.all_cli() if e.plugin == plugin]

    def with_tables(self, tables: Mapping[str, Mapping[str, Any]]) -> "ActionRegistry":
        """A copy whose entries carry new ``[plugins.<name>]`` tables (on reload)."""
        copy = ActionRegistry()
        copy.by_name = {k: replace(e, config=tables.get(e.plugin, {})) for k, e in self.by_name.items()}
        copy.by_spelling = {e.action.name: e for e in copy.by_name.values()}
        copy._cli = {k: replace(e, config=tables.get(e.plugin, {})) for k, e in self._cli.items()}
        return copy

    def of_plugin(self, plugin: str) -> List[RegisteredAction]:
        return [e for e in self.all() if e.plugin == plugin]

    def get(self, name: str) -> Optional[RegisteredAction]:
        """The action ``name`` names, ASCII-case-insensitively (P-1.15); the plugin's spelling first."""
        entry = self.by_spelling.get(name)
        if entry is None:
            entry = self.by_name.get(ascii_lower(name))
        return entry

    def all(self) -> List[RegisteredAction]:
        return sorted(self.by_name.values(), key=lambda e: ascii_lower(e.action.name))

    def __len__(self) -> int:
        return len(self.by_name)


_ASCII_BLANKS = re.compile(r"[ \t\n\r\f\v]+")


def _ascii_words(text: str) -> List[str]:
    """``str.split()``, but at ASCII blanks only (U+00A0 and the like are part of a word)."""
    if text.isascii():
        return text.split()
    return [word for word in _ASCII_BLANKS.split(text) if word]


def collect_actions(
    manager: pluggy.PluginManager,
    records: Sequence[PluginRecord],
    handle: ServerHandle,
    tables: Mapping[str, Mapping[str, Any]],
    failures: Optional[dict] = None,
) -> ActionRegistry:
    """Call every ``register_actions`` implementation and build the registry.

    Raises :class:`PluginLoadError`; when a ``failures`` dict is given, a
    failing plugin is recorded there (name -> message) and its actions are
    left out instead.
    """
    by_name = {r.name: r for r in records}
    registry = ActionRegistry()
    # Registration order (builtins first), so a clash names the newcomer.
    order = [impl.plugin_name for impl in manager.hook.register_actions.get_hookimpls()]
    for plugin, caller in plugin_callers(manager, "register_actions", order):
        record = by_name.get(plugin)
        who = record.describe() if record else f"plugin {plugin!r}"
        try:
            entries, clis = _actions_of(caller, handle._for(plugin), plugin, tables.get(plugin, {}))
            registry.add_all(entries, builtin=record is not None and record.group == "builtin", clis=clis)
        except PluginLoadError as exc:
            if failures is None:
                raise PluginLoadError(f"{who}: {exc}") from exc.__cause__
            failures[plugin] = f"{who}: {exc}"
    return registry


def _actions_of(
    caller: Callable[..., Any],
    handle: ServerHandle,
    plugin: str,
    table: Mapping[str, Any],
) -> Tuple[List[RegisteredAction], List[RegisteredCli]]:
    try:
        results = caller(server=handle)
        result = results[0] if results else None
    except Exception as exc:  # noqa: BLE001
        raise PluginLoadError(f"register_actions raised {type(exc).__name__}: {exc}") from exc
    if result is None:
        return [], []
    if isinstance(result, (Action, CliCommand)):
        result = [result]
    try:
        items = list(result)
    except TypeError:
        raise PluginLoadError(f"register_actions returned {result!r}, not a sequence of Actions") from None
    for item in items:
        if not isinstance(item, (Action, CliCommand)):
            raise PluginLoadError(f"register_actions returned {item!r}, not an Action or CliCommand")
    return (
        [RegisteredAction(item, plugin, table) for item in items if isinstance(item, Action)],
        [RegisteredCli(item, plugin, table) for item in items if isinstance(item, CliCommand)],
    )


def _target_of(plugin: Any) -> str:
    """``module:Class`` for a plugin object, ``module`` for a plugin module."""
    if isinstance(plugin, type(sys)):
        return plugin.__name__
    kind = type(plugin)
    return f"{kind.__module__}:{kind.__qualname__}"
