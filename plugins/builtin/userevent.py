"""UserEvent: publish an event of class ``user`` built from the request (B-5.9, B-5.10)."""

from ami_server import Action, Event, Response, hookimpl
from ami_server.protocol import clean

_NOT_COPIED = ("action", "userevent")


def userevent(ctx):
    request = ctx.request
    headers = [("UserEvent", request.get("UserEvent") or "")]
    headers.extend(
        (name, value) for name, value in request.headers() if name.lower() not in _NOT_COPIED
    )
    ctx.publish(Event("UserEvent", "user", _tokens_only(headers)))
    return Response.success("Event Sent")


def _tokens_only(headers):
    # Names from the wire may hold a lone CR or outer blanks, which an output
    # name may not (P-1.20); they are cleaned, and a name left empty is
    # dropped like a colon-less line (D-8.5).
    out = []
    for name, value in headers:
        name = clean(name).strip()
        if name:
            out.append((name, value))
    return out


@hookimpl
def register_actions():
    return [Action("UserEvent", userevent, "Send an arbitrary event.", "user")]
