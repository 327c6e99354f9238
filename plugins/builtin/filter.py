"""Filter: per-session include and exclude filters on published events (B-5.13).

Patterns are compiled with RE2 (:func:`ami_server.compile_filter`): a client's
regex is searched on the event loop, so it must never backtrack (D-8.18).
"""

from ami_server import Action, ActionError, Response, ascii_lower, compile_filter, hookimpl

DID_NOT_COMPILE = "Filter did not compile.  Check the syntax of the filter given."


def filter_action(ctx):
    operation = ctx.request.get("Operation")
    if not operation or ascii_lower(operation) != "add":
        return Response.error("Unknown operation")
    text = ctx.request.get("Filter")
    if not text:
        return Response.error("Filter was formatted incorrectly.  Check the syntax of the filter given.")
    include = not text.startswith("!")
    try:
        pattern = compile_filter(text if include else text[1:])
    except ValueError:
        return Response.error(DID_NOT_COMPILE)
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
