"""WaitEvent: hold the reply until an event, new input or a timeout (B-5.11, B-5.12)."""

import re
from typing import Optional

from ami_server import Action, Block, Response, hookimpl

_TIMEOUT_RE = re.compile(r"[+-]?[0-9]+")

#: Asterisk reads ``Timeout`` into a C ``int``; a larger wait is refused rather
#: than handed to the timer heap, where 10**999 seconds overflows a float.
MAX_TIMEOUT = 2147483647
TIMEOUT_TOO_LARGE = f"Invalid timeout (at most {MAX_TIMEOUT} seconds)"


def parse_timeout(value: Optional[str]) -> Optional[int]:
    """Seconds to wait, or ``None`` for no limit (B-5.11; decimal only, D-8.18).

    Raises ``ValueError`` for a wait longer than :data:`MAX_TIMEOUT`; any
    negative value, however long, means no limit.
    """
    match = _TIMEOUT_RE.match(value or "")
    if match is None:
        return None
    text = match.group()
    negative = text.startswith("-")
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > len(str(MAX_TIMEOUT)):  # never int() a thousand digits
        if negative:
            return None
        raise ValueError(TIMEOUT_TOO_LARGE)
    seconds = -int(digits or "0") if negative else int(digits or "0")
    if seconds < 0:
        return None
    if seconds > MAX_TIMEOUT:
        raise ValueError(TIMEOUT_TOO_LARGE)
    return seconds


def waitevent(ctx):
    try:
        timeout = parse_timeout(ctx.request.get("Timeout"))
    except ValueError as exc:
        return Response.error(str(exc))
    reply = Response(
        "Success",
        "Waiting for Event completed.",
        completion=Block("WaitEventComplete"),
        events_before_completion=True,
    )
    return ctx.control.wait_for_event(timeout, reply)


@hookimpl
def register_actions():
    return [Action("WaitEvent", waitevent, "Wait for an event to occur.", (), control=True)]
