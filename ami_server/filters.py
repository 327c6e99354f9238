"""Session event filters (B-5.13) on a linear-time regex engine (RE2, D-8.18).

A ``Filter:`` pattern comes from a client and is searched on the event loop
in every event the session could receive, including text other clients
control (a rejected action's name in a security event, a UserEvent's
headers). With a backtracking engine, ``(a+)+$`` against 55 ``a`` would
stop the whole server for hours; RE2 matches in time linear in the text.
There is no fallback: what RE2 cannot compile (backreferences, look-around,
possessive quantifiers) is refused.

Bounds, so that one session's filters cannot take unbounded memory or time:

- a pattern is at most :data:`MAX_PATTERN_LENGTH` (1024) characters; a
  ``Filter:`` header from the wire is shorter anyway (P-1.6);
- each compiled pattern may use :data:`MAX_PATTERN_MEMORY` (1 MiB) for its
  program and match cache; a pattern whose program does not fit is refused;
- a session holds at most :attr:`EventFilters.LIMIT` (100) filters.

Patterns and texts are matched as UTF-8 bytes; text that came from the wire
as invalid UTF-8 (surrogate-escaped, P-1.22) is matched as the original bytes.

Besides the client's filters, a plugin may install name predicates for a
session (``ServerHandle.add_event_guard``: a gateway's event policy); they
are not counted against the limit. A predicate wrapped in :class:`OnText`
is given the event as written (bytes) instead of its name: a gateway's
filter by the header naming an event's upstream.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Union

import re2

__all__ = [
    "MAX_PATTERN_LENGTH",
    "MAX_PATTERN_MEMORY",
    "EventFilters",
    "FilterPattern",
    "OnText",
    "compile_filter",
]

#: Longest pattern accepted, in characters.
MAX_PATTERN_LENGTH = 1024
#: RE2's ``max_mem`` per pattern, in bytes: program plus lazily built match cache.
MAX_PATTERN_MEMORY = 1 << 20


def _options() -> "re2.Options":
    options = re2.Options()
    options.max_mem = MAX_PATTERN_MEMORY
    # A refused pattern is the client's mistake: answered, not logged to stderr.
    options.log_errors = False
    # Filters only ask "does it match"; no capture groups to track.
    options.never_capture = True
    return options


_OPTIONS = _options()


def _to_bytes(text: Union[str, bytes]) -> bytes:
    if isinstance(text, bytes):
        return text
    return text.encode("utf-8", "surrogateescape")


def _matcher(regexp: Any) -> Callable[[bytes], bool]:
    """``data -> bool``: does the pattern occur in ``data``?

    google-re2's ``search`` builds a match object through Python code (about
    3.9 us an event); its compiled program's ``Match`` answers the same
    question in about 1.5 us, which matters when every event is searched
    for every filtered session. Used when this google-re2 has it, else
    ``search``.
    """
    program = getattr(regexp, "_regexp", None)
    anchor = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
    unanchored = getattr(anchor, "UNANCHORED", None)
    if program is None or unanchored is None or not hasattr(program, "Match"):
        search = regexp.search
        return lambda data: search(data) is not None
    match = program.Match
    return lambda data: match(unanchored, data, 0, len(data))[0][0] != -1


class FilterPattern:
    """A compiled filter: ``search`` takes ``str`` or ``bytes`` and never backtracks."""

    __slots__ = ("pattern", "_search", "matches")

    def __init__(self, pattern: str, regexp: Any) -> None:
        #: The pattern as given (without the ``!`` of an exclude filter).
        self.pattern = pattern
        self._search = regexp.search
        #: ``data -> bool`` on the rendered event's bytes (the delivery path).
        self.matches = _matcher(regexp)

    def search(self, text: Union[str, bytes]) -> Optional[Any]:
        """A match object if the pattern occurs anywhere in ``text``, else ``None``."""
        return self._search(_to_bytes(text))

    def __repr__(self) -> str:
        return f"FilterPattern({self.pattern!r})"


#: Patterns compiled lately, by text: sessions that set the same filter (a fleet of dashboards)
#: share one compiled pattern, so one search per event answers for all of them (see passes).
_COMPILED: "OrderedDict[str, FilterPattern]" = OrderedDict()
_COMPILED_LIMIT = 1024


def compile_filter(text: str) -> FilterPattern:
    """Compile a client's filter pattern with RE2; ``ValueError`` says why one is refused."""
    if not isinstance(text, str):
        raise TypeError(f"a filter pattern is a str, not {type(text).__name__}")
    if len(text) > MAX_PATTERN_LENGTH:
        raise ValueError(f"filter pattern is longer than {MAX_PATTERN_LENGTH} characters")
    known = _COMPILED.get(text)
    if known is not None:
        _COMPILED.move_to_end(text)
        return known
    try:
        regexp = re2.compile(_to_bytes(text), _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "does not compile"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"filter pattern does not compile: {reason}") from None
    pattern = _COMPILED[text] = FilterPattern(text, regexp)
    if len(_COMPILED) > _COMPILED_LIMIT:
        _COMPILED.popitem(last=False)
    return pattern


class OnText:
    """A plugin's event predicate that reads the event as written (bytes), not only its name."""

    __slots__ = ("accepts",)

    def __init__(self, accepts: Callable[[bytes], bool]) -> None:
        self.accepts = accepts


class EventFilters:
    """A session's include and exclude filters (B-5.13), searched in an event's text."""

    __slots__ = ("include", "exclude", "names")

    #: More filters than this on one session are refused.
    LIMIT = 100

    def __init__(self) -> None:
        self.include: List[FilterPattern] = []
        self.exclude: List[FilterPattern] = []
        #: Each must accept the event's name (installed by plugins, not the client).
        self.names: List[Callable[[str], bool]] = []

    def __len__(self) -> int:
        return len(self.include) + len(self.exclude)

    def add(self, pattern: Union[str, FilterPattern], include: bool) -> None:
        """Add one filter; a ``str`` is compiled here. ``ValueError`` if it cannot be (or over :attr:`LIMIT`)."""
        if not isinstance(pattern, FilterPattern):
            pattern = compile_filter(pattern)
        if len(self) >= self.LIMIT:
            raise ValueError(f"Too many filters (at most {self.LIMIT} per session)")
        (self.include if include else self.exclude).append(pattern)

    def passes(self, text: Union[str, bytes], memo: Optional[Dict[FilterPattern, bool]] = None) -> bool:
        """Name predicates: all must accept; includes: one must match; excludes: none may match.

        ``text`` may be the rendered event's bytes, which saves decoding it.
        ``memo`` holds the answers of patterns already searched in this same
        event (for other sessions): a pattern is searched once per event.
        """
        data = _to_bytes(text)
        if self.names:
            name = data[7:data.find(b"\r\n")].decode("utf-8", "surrogateescape")  # "Event: <name>\r\n"
            for accepts in self.names:
                if not (accepts.accepts(data) if accepts.__class__ is OnText else accepts(name)):  # type: ignore
                    return False
        if memo is None:
            memo = {}
        if self.include and not any(_matches(p, data, memo) for p in self.include):
            return False
        return not any(_matches(p, data, memo) for p in self.exclude)


def _matches(pattern: FilterPattern, data: bytes, memo: Dict[FilterPattern, bool]) -> bool:
    found = memo.get(pattern)
    if found is None:
        found = memo[pattern] = pattern.matches(data)
    return found
