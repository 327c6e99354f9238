"""WaitEvent: hold the reply until an event, new input or a timeout (B-5.11, B-5.12)."""

import re

from ami_server import Action, Block, Response, hookimpl

_TIMEOUT_RE = re.compile(r"[+-]?[0-9]+")


def parse_timeout(value):
    """Seconds to wait, or ``None`` for no limit (B-5.11; decimal only, D-8.18)."""
    match = _TIMEOUT_RE.match(value or "")
    if match is None:
        return None
    seconds = int(match.group())
    return None if seconds < 0 else seconds


def waitevent(ctx):
    reply = Response(
        "Success",
        "Waiting for Event completed.",
        completion=Block("WaitEventComplete"),
        events_before_completion=True,
    )
    return ctx.control.wait_for_event(parse_timeout(ctx.request.get("Timeout")), reply)


@hookimpl
def register_actions():
    return [Action("WaitEvent", waitevent, "Wait for an event to occur.", (), control=True)]
