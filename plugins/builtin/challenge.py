"""Challenge: hand out this session's MD5 challenge (B-5.3, A-3.6)."""

from ami_server import Action, Response, hookimpl


def challenge(ctx):
    if (ctx.request.get("AuthType") or "").lower() != "md5":
        return Response.error("Must specify AuthType")
    return Response.success(headers=[("Challenge", ctx.control.challenge())])


@hookimpl
def register_actions():
    return [Action("Challenge", challenge, "Generate Challenge for MD5 Auth.", (), control=True)]
