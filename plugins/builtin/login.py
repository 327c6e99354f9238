"""Login: authenticate the session (spec §3, B-5.1)."""

from ami_server import Action, hookimpl


def login(ctx):
    return ctx.control.login()


@hookimpl
def register_actions():
    return [Action("Login", login, "Login Manager.", (), control=True)]
