"""Challenge: hand out this session's MD5 challenge (B-5.3, A-3.6)."""

from ami_server import Action, Response, ascii_lower, hookimpl


def challenge(ctx):
    if ascii_lower(ctx.request.get("AuthType") or "") != "md5":
        return Response.error("Must specify AuthType")
    return Response.success(headers=[("Challenge", ctx.control.challenge())])


@hookimpl
def register_actions():
    return [Action("Challenge", challenge, "Generate Challenge for MD5 Auth.", (), control=True)]
