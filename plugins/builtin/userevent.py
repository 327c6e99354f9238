"""UserEvent: publish an event of class ``user`` built from the request (B-5.9, B-5.10)."""

from ami_server import Action, Event, Response, ascii_lower, clean, hookimpl

_NOT_COPIED = ("action", "userevent")


def userevent(ctx):
    request = ctx.request
    headers = [("UserEvent", request.get("UserEvent") or "")]
    for name, value in request.headers():
        if (name.lower() if name.isascii() else ascii_lower(name)) in _NOT_COPIED:
            continue
        if "\r" in name or name != name.strip():
            # A name from the wire may hold a lone CR or outer blanks, which an
            # output name may not (P-1.20); it is cleaned, and a name left
            # empty is dropped like a colon-less line (D-8.5).
            name = clean(name).strip()
            if not name:
                continue
        headers.append((name, value))
    ctx.publish(Event("UserEvent", "user", headers))
    return Response.success("Event Sent")


@hookimpl
def register_actions():
    return [Action("UserEvent", userevent, "Send an arbitrary event.", "user")]
