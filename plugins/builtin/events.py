"""Events: set the session's event mask (B-5.6, C-4.5)."""

from ami_server import Action, Response, hookimpl, parse_event_mask


def events(ctx):
    mask = parse_event_mask(ctx.request.get("EventMask"))
    if mask is None:
        return Response.error("Invalid event mask")
    ctx.control.set_event_mask(mask)
    return Response.success(headers=[("Events", "On" if mask else "Off")])


@hookimpl
def register_actions():
    return [Action("Events", events, "Control Event Flow.", (), control=True)]
