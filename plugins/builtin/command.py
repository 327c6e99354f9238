"""Command: run a CLI command that a plugin provides (B-5.16, D-8.14)."""

from ami_server import Action, Response, hookimpl


def command(ctx):
    text = ctx.request.get("Command")
    if not text or not text.split():
        return Response.error("No command provided")
    output = ctx.run_cli(text)
    if output is None:
        first = text.split()[0]
        line = f"No such command '{text}' (type 'core show help {first}' for other possible commands)"
        return Response("Error", "Command output follows", (("Output", line),))
    status = "Success" if output.success else "Error"
    return Response(status, "Command output follows", tuple(("Output", line) for line in output.lines))


@hookimpl
def register_actions():
    return [Action("Command", command, "Execute Asterisk CLI Command.", "command")]
