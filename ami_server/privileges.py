"""AMI privilege classes: names, bits, strict config parsing, event masks (spec §4).

Class sets are plain ``int`` bit masks so that the delivery check of C-4.5 is
two ``&`` operations per recipient.
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional, Union

from .protocol import ascii_lower

__all__ = [
    "CLASSES",
    "ALL",
    "NONE",
    "ClassListError",
    "parse_class_list",
    "parse_event_mask",
    "format_privilege",
    "class_names",
    "mask_of",
]

#: Class name -> bit, in canonical order (by bit value, C-4.1).
CLASSES: dict[str, int] = {
    "system": 1 << 0,
    "call": 1 << 1,
    "log": 1 << 2,
    "verbose": 1 << 3,
    "command": 1 << 4,
    "agent": 1 << 5,
    "user": 1 << 6,
    "config": 1 << 7,
    "dtmf": 1 << 8,
    "reporting": 1 << 9,
    "cdr": 1 << 10,
    "dialplan": 1 << 11,
    "originate": 1 << 12,
    "agi": 1 << 13,
    "cc": 1 << 15,
    "aoc": 1 << 16,
    "test": 1 << 17,
    "security": 1 << 18,
    "message": 1 << 30,
}

ALL = 0
for _bit in CLASSES.values():
    ALL |= _bit
del _bit
NONE = 0

_MAX_NUMERIC_MASK = 2147483647
_OFF_WORDS = frozenset({"no", "false", "n", "f", "off"})
_ON_WORDS = frozenset({"yes", "true", "y", "t", "on"})


class ClassListError(ValueError):
    """A class list in configuration or an action declaration is malformed (C-4.2)."""

    def __init__(self, token: str, reason: str) -> None:
        super().__init__(f"{reason}: {token!r}")
        self.token = token
        self.reason = reason


def parse_class_list(value: Union[str, Iterable[str]]) -> int:
    """Parse a strict class list: a list of names or one comma-separated string.

    Names are trimmed, must be lower-case members of :data:`CLASSES`, or
    ``all``; ``none`` is allowed only alone. Raises :class:`ClassListError`
    naming the bad token for anything else (D-8.2).
    """
    if isinstance(value, str):
        tokens = value.split(",") if value.strip() else []
    else:
        tokens = list(value)
    mask = 0
    names = []
    for raw in tokens:
        if not isinstance(raw, str):
            raise ClassListError(str(raw), "class names must be strings")
        token = raw.strip()
        names.append(token)
        if not token:
            raise ClassListError(raw, "empty class name")
        if token == "all":
            mask |= ALL
        elif token == "none":
            continue
        elif token in CLASSES:
            mask |= CLASSES[token]
        elif ascii_lower(token) in CLASSES or ascii_lower(token) in ("all", "none"):
            raise ClassListError(token, "class names are lower-case")
        else:
            raise ClassListError(token, "unknown class")
    if "none" in names and len(names) > 1:
        raise ClassListError("none", "'none' must stand alone")
    return mask


def parse_event_mask(value: Optional[str]) -> Optional[int]:
    """Parse an ``EventMask``/``Events`` value per C-4.5; ``None`` means invalid.

    The on/off words fold ``A``-``Z`` only; class names are exact (C-4.5).
    """
    if not value:
        return None
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0")
        if len(digits) > len(str(_MAX_NUMERIC_MASK)):
            return None  # out of range; and int() refuses over 4300 digits
        number = int(digits or "0")
        if number > _MAX_NUMERIC_MASK:
            return None
        return number & ALL
    lowered = ascii_lower(value)
    if lowered in _OFF_WORDS:
        return 0
    if lowered in _ON_WORDS:
        return ALL
    mask = 0
    for token in value.split(","):
        if token == "all":
            mask |= ALL
        else:
            mask |= CLASSES.get(token, 0)
    return mask


def class_names(mask: int) -> list[str]:
    """Names of the classes in ``mask``, in canonical order."""
    return [name for name, bit in CLASSES.items() if mask & bit]


def format_privilege(mask: int) -> str:
    """``Privilege:`` form: canonical names then ``all`` (C-4.6); ``<none>`` when empty."""
    if not mask:
        return "<none>"
    return ",".join(class_names(mask)) + ",all"


def mask_of(classes: Union[int, str, Iterable[str]]) -> int:
    """Accept a bit mask, a class name, or names; raise :class:`ClassListError` if unknown."""
    if isinstance(classes, int) and not isinstance(classes, bool):
        if classes & ~ALL:
            raise ClassListError(hex(classes), "unknown class bits")
        return classes
    if isinstance(classes, str):
        return _mask_of_text(classes)
    return parse_class_list(classes)


@functools.lru_cache(maxsize=256)
def _mask_of_text(classes: str) -> int:
    """Memoised: events and actions name the same few class lists over and over."""
    return parse_class_list(classes)
