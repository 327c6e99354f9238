"""Per-user gateway policy from ``SessionInfo.attributes["gateway"]``.

What a user may run beyond Asterisk's classes: allow and deny lists of
action names (shell patterns, case-insensitive), header constraints per
action, event name allow and deny lists, an action rate limit (token bucket
per user) and the upstreams the user may use. Compiled once per attributes
mapping; a malformed policy refuses everything (fail closed) rather than
letting a typo open the door.
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = ["Policy", "PolicyError", "RateLimiter", "compile_policy"]

#: Never refused by the policy: a client must always be able to log in and out.
ALWAYS_ALLOWED = frozenset({"login", "logoff", "challenge"})

_KEYS = {"actions", "deny_actions", "constraints", "events", "deny_events", "rate", "burst", "upstream",
         "upstreams"}


class PolicyError(ValueError):
    """A malformed ``attributes.gateway`` table."""


def _patterns(value: Any, key: str) -> Optional["re.Pattern[str]"]:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{key}: must be a list of patterns")
    return re.compile("|".join(f"(?:{fnmatch.translate(v.lower())})" for v in value) or "(?!)")


@dataclass(frozen=True)
class Policy:
    """A compiled per-user policy; ``invalid`` set when the table was malformed."""

    allow: Optional["re.Pattern[str]"] = None
    deny: Optional["re.Pattern[str]"] = None
    constraints: Mapping[str, Tuple[Tuple[str, "re.Pattern[str]"], ...]] = field(default_factory=dict)
    events: Optional["re.Pattern[str]"] = None
    deny_events: Optional["re.Pattern[str]"] = None
    rate: float = 0.0
    burst: float = 0.0
    upstream: Optional[str] = None
    upstreams: Optional[frozenset] = None
    invalid: str = ""

    def check_name(self, action: str) -> Optional[str]:
        """The rule refusing ``action`` by name, or ``None``."""
        if self.invalid:
            return "invalid_policy"
        key = action.lower()
        if self.deny is not None and self.deny.match(key):
            return "deny_actions"
        if self.allow is not None and not self.allow.match(key):
            return "actions"
        return None

    def check_headers(self, action: str, get: Callable[[str], Optional[str]]) -> Optional[str]:
        """The constraint refusing this request (``constraints.Originate.Context``), or ``None``."""
        for header, pattern in self.constraints.get(action.lower(), ()):
            value = get(header)
            if value is None or not pattern.match(value.lower()):
                return f"constraints.{action}.{header}"
        return None

    def event_predicate(self) -> Optional[Callable[[str], bool]]:
        """A predicate on event names, or ``None`` when the policy filters no event."""
        if self.invalid:
            return lambda name: False
        allow, deny = self.events, self.deny_events
        if allow is None and deny is None:
            return None
        cache: Dict[str, bool] = {}

        def accepts(name: str) -> bool:
            verdict = cache.get(name)
            if verdict is None:
                key = name.lower()
                verdict = (allow is None or bool(allow.match(key))) and not (deny is not None and deny.match(key))
                if len(cache) < 4096:
                    cache[name] = verdict
            return verdict

        return accepts


def compile_policy(table: Any) -> Policy:
    """Compile ``attributes.gateway``; errors give a policy that refuses everything."""
    try:
        return _compile(table)
    except PolicyError as exc:
        return Policy(invalid=str(exc))


def _compile(table: Any) -> Policy:
    if table is None:
        return Policy()
    if not isinstance(table, Mapping):
        raise PolicyError("attributes.gateway must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise PolicyError(f"unknown key {unknown[0]!r}")
    constraints: Dict[str, Tuple[Tuple[str, "re.Pattern[str]"], ...]] = {}
    raw = table.get("constraints") or {}
    if not isinstance(raw, Mapping):
        raise PolicyError("constraints: must be a table of action -> header -> patterns")
    for action, headers in raw.items():
        if not isinstance(headers, Mapping):
            raise PolicyError(f"constraints.{action}: must be a table of header -> patterns")
        compiled = []
        for header, patterns in headers.items():
            pattern = _patterns(patterns, f"constraints.{action}.{header}")
            assert pattern is not None
            compiled.append((str(header), pattern))
        constraints[str(action).lower()] = tuple(compiled)
    rate = table.get("rate", 0)
    burst = table.get("burst", None)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
        raise PolicyError("rate: must be a number of actions per second (0: no limit)")
    if burst is None:
        burst = max(1.0, float(rate))
    if isinstance(burst, bool) or not isinstance(burst, (int, float)) or burst < 1:
        raise PolicyError("burst: must be a number >= 1")
    upstream = table.get("upstream")
    if upstream is not None and not isinstance(upstream, str):
        raise PolicyError("upstream: must be an upstream name")
    upstreams = table.get("upstreams")
    if upstreams is not None:
        if not isinstance(upstreams, list) or not all(isinstance(u, str) for u in upstreams):
            raise PolicyError("upstreams: must be a list of upstream names")
        upstreams = frozenset(upstreams)
    return Policy(
        allow=_patterns(table.get("actions"), "actions"),
        deny=_patterns(table.get("deny_actions"), "deny_actions"),
        constraints=constraints,
        events=_patterns(table.get("events"), "events"),
        deny_events=_patterns(table.get("deny_events"), "deny_events"),
        rate=float(rate), burst=float(burst), upstream=upstream, upstreams=upstreams,
    )


class RateLimiter:
    """Token buckets per user: ``rate`` actions a second, up to ``burst`` at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: Dict[str, Tuple[float, float]] = {}

    def take(self, user: str, rate: float, burst: float) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(user, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            return False
        self._buckets[user] = (tokens - 1.0, now)
        return True
