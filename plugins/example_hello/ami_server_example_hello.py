"""An example ami-server plugin.

``Hello`` answers ``Message: <greeting>, <Name>!`` and publishes a ``Hello``
event (class ``user``) that other sessions with ``user`` read access receive.
``HelloNames`` answers with a list response: one ``HelloName`` item per name
configured in ``[plugins.example_hello] names``.
"""

from ami_server import Action, ActionError, Block, Event, Response, hookimpl

DEFAULT_GREETING = "Hello"


def hello(ctx):
    name = ctx.request.get("Name") or "World"
    greeting = ctx.config.get("greeting", DEFAULT_GREETING)
    if not isinstance(greeting, str):
        raise ActionError("greeting is misconfigured")
    ctx.publish(Event("Hello", "user", {"Name": name, "From": ctx.session.username}))
    ctx.log.info("greeted", name=name)
    return Response.success(f"{greeting}, {name}!")


def hello_names(ctx):
    names = ctx.config.get("names", ["World"])
    items = [Block("HelloName", {"Name": str(name)}) for name in names]
    return Response.list(items, "HelloNamesComplete", message="Names will follow")


@hookimpl
def register_actions():
    return [
        Action("Hello", hello, "Say hello to someone.", "user"),
        Action("HelloNames", hello_names, "List the configured names.", "user", read_only=True),
    ]
