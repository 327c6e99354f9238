"""Per-session event filters: include and exclude patterns over an event's text (B-5.13),
and name predicates a plugin installed for the session's user (a gateway's event policy)."""

from __future__ import annotations

import re
from typing import Callable, List

__all__ = ["EventFilters"]


class EventFilters:
    """A session's include and exclude filters, searched in an event's text."""

    __slots__ = ("include", "exclude", "names")

    #: More filters than this on one session are refused.
    LIMIT = 100

    def __init__(self) -> None:
        self.include: List["re.Pattern[str]"] = []
        self.exclude: List["re.Pattern[str]"] = []
        #: Each must accept the event's name (not counted against LIMIT: the server installs them).
        self.names: List[Callable[[str], bool]] = []

    def __len__(self) -> int:
        return len(self.include) + len(self.exclude)

    def passes(self, text: str) -> bool:
        """Name predicates: all must accept; includes: one must match; excludes: none may match."""
        if self.names:
            name = text[7:text.find("\r\n")]  # the text starts "Event: <name>\r\n"
            if not all(accepts(name) for accepts in self.names):
                return False
        if self.include and not any(p.search(text) for p in self.include):
            return False
        return not any(p.search(text) for p in self.exclude)
