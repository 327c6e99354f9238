"""ListCommands: the actions this session may run (B-5.7)."""

from ami_server import Action, Response, format_privilege, hookimpl


def listcommands(ctx):
    lines = [
        (a.name, f"{a.synopsis.rstrip()}  (Priv: {format_privilege(a.privileges)})")
        for a in ctx.control.permitted_actions()
    ]
    return Response.success(headers=lines)


@hookimpl
def register_actions():
    return [
        Action("ListCommands", listcommands, "List available manager commands.", (), read_only=True,
               control=True)
    ]
