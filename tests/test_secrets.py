"""No secret, key or secret-derived value reaches any log line (A-3.16, D-8.8)."""

from __future__ import annotations

import hashlib

from ami_server import Action, Response, hookimpl
from ami_server.audit import MemorySink, Redactor
from ami_server.testing import make_config, running_server

SECRET = "s3cret-Adm1n-pass"
OTHER = "r3ader-pass-Word"


class ChattyPlugin:
    """Logs its whole request, as careless plugins do."""

    @hookimpl
    def register_actions(self):
        def echo(ctx):
            ctx.log.debug("request", lines=list(ctx.request.lines), headers=ctx.request.headers(),
                          as_dict=dict(ctx.request.headers()), text="\n".join(ctx.request.lines))
            ctx.log.error("oops", exc_info=ValueError(f"bad value {ctx.request.get('Secret')}"))
            return Response.success("Echoed")

        return [Action("Echo", echo, "Log the request.", ())]


def test_full_session_at_debug_leaks_nothing():
    users = {
        "admin": {"secret": SECRET, "read": "all", "write": "all"},
        "reader": {"secret": OTHER, "read": "all", "write": []},
    }
    cfg = make_config({"users": users, "logging": {"level": "debug"}})
    sink = MemorySink()
    derived = []
    with running_server(cfg, log_sink=sink, extra_plugins=[("chatty", ChattyPlugin())]) as srv:
        with srv.client() as c:
            c.login("admin", SECRET)
            c.action("Echo", {"Secret": SECRET, "Key": "k-" + OTHER})
        with srv.client() as c:
            challenge = c.action("Challenge", {"AuthType": "MD5"})["Challenge"]
            key = hashlib.md5((challenge + OTHER).encode()).hexdigest()
            derived.append(key)
            assert c.action("Login", {"AuthType": "MD5", "Username": "reader", "Key": key})["Response"] == "Success"
        with srv.client() as c:
            challenge = c.action("Challenge", {"AuthType": "MD5"})["Challenge"]
            wrong = hashlib.md5((challenge + "guess").encode()).hexdigest()
            derived.append(wrong)
            derived.append(hashlib.md5((challenge + SECRET).encode()).hexdigest())
            c.send("Login", {"AuthType": "MD5", "Username": "admin", "Key": wrong})
            c.read_until_closed()
        with srv.client() as c:
            c.send("Login", {"Username": "admin", "Secret": "typo-" + SECRET[:-1]})
            c.read_until_closed()
    text = sink.text()
    assert '"event": "ChallengeResponseFailed"' in text and '"event": "InvalidPassword"' in text
    assert "ValueError" in text  # the exception was logged, scrubbed
    for needle in [SECRET, OTHER, SECRET[:-1], *derived]:
        assert needle not in text, needle


def test_redactor_handles_pairs_dicts_and_inline_text():
    redact = Redactor(["hunter22"])
    record = redact(None, "info", {
        "secret": "a", "pairs": [("Key", "b"), ("Other", "ok")], "d": {"Secret": "c"},
        "line": "Action: Login Secret: hunter22 key=zzz",
    })
    flat = repr(record)
    for needle in ("'a'", "'b'", "'c'", "hunter22", "zzz"):
        assert needle not in flat
    assert "ok" in flat
