"""Logoff: say goodbye and close, in any state (B-5.2)."""

from ami_server import Action, Response, hookimpl


def logoff(ctx):
    return Response("Goodbye", "Thanks for all the fish.", close=True)


@hookimpl
def register_actions():
    return [Action("Logoff", logoff, "Logoff Manager.", ())]
