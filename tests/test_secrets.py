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


def test_redactor_scrubs_str_subclasses():
    """A value that is a str subclass (a str enum, say) is text like any other (A-3.16)."""

    class Note(str):
        pass

    record = Redactor(["hunter22"])(None, "info", {"note": Note("typed hunter22 here")})
    assert "hunter22" not in record["note"] and "[redacted]" in record["note"]


class QuotingBackend:
    """A careless backend: its exception quotes the credentials it was given."""

    @hookimpl
    def authenticate(self, request):
        raise ValueError(f"cannot check {request.username}/{request.secret}/{request.key}")


def test_hashes_backend_errors_and_short_secrets_leak_nothing():
    from ami_server.passwords import hash_secret

    hashed = hash_secret("h4shed-user-secret", log_n=10)
    users = {
        "hashed": {"secret_hash": hashed, "read": "all", "write": "all"},
        "tiny": {"secret": "xq", "read": "all", "write": "all"},
    }
    cfg = make_config({"users": users, "logging": {"level": "debug"},
                       "auth": {"backends": ["config", "quoting"]}})
    sink = MemorySink()
    with running_server(cfg, log_sink=sink, extra_plugins=[("quoting", QuotingBackend())]) as srv:
        with srv.client() as c:
            assert c.login("hashed", "h4shed-user-secret")["Message"] == "Authentication accepted"
        with srv.client() as c:
            assert c.login("tiny", "xq")["Message"] == "Authentication accepted"
        with srv.client() as c:
            c.send("Login", {"Username": "backend-user", "Secret": "only-the-backend-knows"})
            c.read_until_closed()
        with srv.client() as c:
            c.action("Challenge", {"AuthType": "MD5"})
            c.send("Login", {"Username": "backend-user", "AuthType": "MD5", "Key": "f" * 32})
            c.read_until_closed()
    text = sink.text()
    records = sink.records()
    errors = [r["error"] for r in records if r["event"] == "AuthBackendError"]
    assert len(errors) == 2 and all("cannot check backend-user/" in e for e in errors)
    for needle in ["h4shed-user-secret", hashed, hashed.split("$")[-1], "only-the-backend-knows", "f" * 32]:
        assert needle not in text, needle
    # The two-letter secret is removed where it stands alone but does not mangle other words.
    assert {"SessionOpened", "LoginSucceeded", "ActionExecuted", "SessionClosed"} <= {r["event"] for r in records}
    assert not any(" xq " in line or '"xq"' in line for line in sink.lines)
