"""Calling the observer hooks and the authentication chain through pluggy.

pluggy stops a hook call at the first exception, but one plugin's failure
must not keep the others from seeing an event or a session (Q-7.5, Q-7.9),
and an authentication backend's failure must be attributed to it (A-3.15).
So each implementation is called through its own pluggy subset caller, in
pluggy's order (or, for ``authenticate``, the ``[auth] backends`` order):
every call still goes through the plugin manager, so pluggy's tracing and
``add_hookcall_monitoring`` see each one.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import pluggy

__all__ = ["ContainedHook", "plugin_callers"]


def plugin_callers(manager: pluggy.PluginManager, hook: str, plugins: Sequence[str]) -> List[Tuple[str, Any]]:
    """``(plugin name, caller)`` pairs: each caller runs ``hook`` of that one plugin only."""
    implementers = {impl.plugin_name for impl in getattr(manager.hook, hook).get_hookimpls()}
    callers = []
    for name in plugins:
        if name not in implementers:
            continue
        others = [plugin for other, plugin in manager.list_name_plugin() if other != name]
        callers.append((name, manager.subset_hook_caller(hook, others)))
    return callers


class ContainedHook:
    """An observer hook (``on_event``, ``on_session_open``, ``on_session_close``).

    Every implementation is called in pluggy's order (last registered
    first); an exception is reported through ``on_error(plugin, exc)`` and
    the next implementation is still called. Falsy when no plugin
    implements the hook, so callers skip building its arguments.
    """

    __slots__ = ("name", "callers", "on_error")

    def __init__(self, manager: pluggy.PluginManager, name: str, on_error: Callable[[str, str, BaseException], None]) -> None:
        self.name = name
        order = [impl.plugin_name for impl in reversed(getattr(manager.hook, name).get_hookimpls())]
        self.callers = plugin_callers(manager, name, order)
        self.on_error = on_error

    def __bool__(self) -> bool:
        return bool(self.callers)

    def __call__(self, **kwargs: Any) -> None:
        for plugin, caller in self.callers:
            try:
                caller(**kwargs)
            except Exception as exc:  # noqa: BLE001 - contained per plugin
                self.on_error(self.name, plugin, exc)
