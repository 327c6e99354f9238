"""Per-session event filters (B-5.13): include and exclude patterns over an event's text."""

from __future__ import annotations

import re
from typing import List

__all__ = ["EventFilters"]


class EventFilters:
    """A session's include and exclude filters, searched in an event's text."""

    __slots__ = ("include", "exclude")

    #: More filters than this on one session are refused.
    LIMIT = 100

    def __init__(self) -> None:
        self.include: List["re.Pattern[str]"] = []
        self.exclude: List["re.Pattern[str]"] = []

    def __len__(self) -> int:
        return len(self.include) + len(self.exclude)

    def passes(self, text: str) -> bool:
        """No filters: all; includes: one must match; excludes: none may match."""
        if self.include and not any(p.search(text) for p in self.include):
            return False
        return not any(p.search(text) for p in self.exclude)
