"""Filter: per-session include and exclude filters on published events (B-5.13)."""

import re

from ami_server import Action, ActionError, Response, hookimpl


def filter_action(ctx):
    operation = ctx.request.get("Operation")
    if not operation or operation.lower() != "add":
        return Response.error("Unknown operation")
    text = ctx.request.get("Filter")
    if not text:
        return Response.error("Filter was formatted incorrectly.  Check the syntax of the filter given.")
    include = not text.startswith("!")
    try:
        pattern = re.compile(text if include else text[1:])
    except (re.error, RecursionError, OverflowError):
        return Response.error("Filter did not compile.  Check the syntax of the filter given.")
    try:
        ctx.control.add_event_filter(pattern, include)
    except ActionError as exc:
        return exc.response
    return Response.success("Success")


@hookimpl
def register_actions():
    return [
        Action("Filter", filter_action, "Dynamically add filters for the current manager session.", "system",
               control=True)
    ]
