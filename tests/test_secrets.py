"""No secret, key or secret-derived value reaches any log line (A-3.16, D-8.8)."""

from __future__ import annotations

import copy
import decimal
import enum
import hashlib
import json

import pytest
from hypothesis import given, settings, strategies as st

from ami_server import Action, Response, hookimpl
from ami_server import audit
from ami_server.audit import TRUSTED_FIELDS_KEY, MemorySink, Redactor
from ami_server.config import load_config
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
    assert '"event":"ChallengeResponseFailed"' in text and '"event":"InvalidPassword"' in text
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
    # The two-letter secret appears in no value (it is scrubbed where it is one, never as a word).
    assert {"SessionOpened", "SuccessfulAuth", "ActionExecuted", "SessionClosed"} <= {r["event"] for r in records}
    assert not any(" xq " in line or '"xq"' in line for line in sink.lines)


# -- what counts as a secret's value (redaction.py) ----------------------------------------------

SHORT_SECRETS = ("is", "a", "the")
#: Text the server writes itself, or a client's prose: short secrets are words here, not values.
MESSAGES = [
    "/etc/ami/config.toml: users.broken.secret: is required (or secret_hash) and must not be empty",
    "Reload failed: <test>: users.ops.secret_hash: not a secret hash (expected $scrypt$ln=..,r=..,p=..$salt$hash)",
    "the server is stopping",
    "Filter was formatted incorrectly.  Check the syntax of the filter given.",
    "Permission denied: the user is not allowed to run a command",
    "this is a test of the redactor, a thing that is the last line of defence",
]


@pytest.mark.parametrize("secret", SHORT_SECRETS)
@pytest.mark.parametrize("message", MESSAGES)
def test_short_secrets_are_left_alone_as_words_of_a_message(secret, message):
    """A secret like "is" is scrubbed where it is a value, never as a word: the message reads as written."""
    redactor = Redactor(["adminpass", secret])
    assert redactor(None, "error", {"event": "ReloadFailed", "error": message})["error"] == message
    assert redactor._scrub([message]) == [message]


@pytest.mark.parametrize("secret", SHORT_SECRETS)
def test_short_secrets_are_scrubbed_where_they_are_values(secret):
    redactor = Redactor(["adminpass", secret])
    record = redactor(None, "info", {
        "field": secret, "padded": f" {secret} ", "items": ["x", secret], "pairs": [("Variable", secret)],
        "nested": {"Body": secret, secret: "as a key"},
        "header_text": f"Action: UserEvent\r\nVariable: {secret}\r\nBody: {secret} and more",
        "assignment": f"backend said (user=bob pw={secret}) and gave up",
        "query": f"user=bob&pw={secret}&x=1",
        "quoted": f"unknown value '{secret}' and \"{secret}\"",
        "json_text": json.dumps({"value": secret}),
    })
    assert record == {
        "field": "[redacted]", "padded": "[redacted]", "items": ["x", "[redacted]"],
        "pairs": [("Variable", "[redacted]")], "nested": {"Body": "[redacted]", "[redacted]": "as a key"},
        "header_text": f"Action: UserEvent\r\nVariable: [redacted]\r\nBody: {secret} and more",
        "assignment": "backend said (user=bob pw=[redacted]) and gave up",
        "query": "user=bob&pw=[redacted]&x=1",
        "quoted": "unknown value '[redacted]' and \"[redacted]\"",
        "json_text": '{"value": "[redacted]"}',
    }


@pytest.mark.parametrize("text, expected", [
    ("RuntimeError('backend rejected (secret=[redacted])')", "RuntimeError('backend rejected (secret=[redacted])')"),
    ("RuntimeError('backend rejected (secret=carol-secret)')", "RuntimeError('backend rejected (secret=[redacted])')"),
    ("key=[redacted]-and-more tail", "key=[redacted] tail"),
    ("Action: Login\nSecret: two words\nKey: k-123\nActionID: 5", "Action: Login\nSecret: [redacted]\nKey: [redacted]\nActionID: 5"),
    ("Action: Login Secret: hunter22 Events: off", "Action: Login Secret: [redacted]"),
    ("{'Secret': 'x y', 'Other': 'ok'}", "{'Secret': '[redacted]', 'Other': 'ok'}"),
    ('{"password": "a\\"b", "user": "u"}', '{"password": "[redacted]", "user": "u"}'),
    ("[('Key', 'x y'), ('Other', 'ok')]", "[('Key', '[redacted]'), ('Other', 'ok')]"),
    ("connect db.password=s3cr3t (retrying)", "connect db.password=[redacted] (retrying)"),
    ("X-Api-Key: abc def", "X-Api-Key: [redacted]"),
    ("monkey key=abc", "monkey key=[redacted]"),
    ("secret='never closed", "secret='[redacted]'"),
    ("users.ops.secret: must be a string, not int", "users.ops.secret: must be a string, not int"),
])
def test_credentials_named_in_text_lose_their_values_once(text, expected):
    """``name: value``, ``name=value`` and quoted forms lose the value; a value already scrubbed stays as it is."""
    redactor = Redactor(["hunter22"])
    assert redactor(None, "info", {"text": text})["text"] == expected
    assert redactor(None, "info", {"text": expected})["text"] == expected


def test_long_secrets_are_scrubbed_inside_longer_values_and_words():
    """A configured secret of SHORT_BELOW or more characters is scrubbed wherever it occurs."""
    redactor = Redactor(["hunter22", "is"])
    record = redactor(None, "info", {
        "header": "Variable: PW=xhunter22y", "word": "prefixhunter22suffix", "items": ["a hunter22 b"],
    })
    assert record == {"header": "Variable: PW=x[redacted]y", "word": "prefix[redacted]suffix", "items": ["a [redacted] b"]}


def test_objects_are_scrubbed_as_the_text_they_are_rendered_as():
    """An exception, bytes or any object is written as str(): that text, scrubbed, replaces it."""

    class Opaque:
        def __str__(self):
            return "Opaque(secret=s3cr3t-value, other=ok)"

    redactor = Redactor(["hunter22"])
    fine = decimal.Decimal("1.5")
    record = redactor(None, "info", {
        "error": ValueError("cannot use hunter22"), "raw": b"Secret: abc", "obj": Opaque(), "fine": fine,
    })
    assert record["error"] == "cannot use [redacted]"
    assert record["raw"] == "b'Secret: [redacted]"
    assert record["obj"] == "Opaque(secret=[redacted], other=ok)"
    assert record["fine"] == "1.5"  # nothing to scrub: its text, so the renderer writes what was checked


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from([
    "hunter22", "is", "a", "the", " ", "\r\n", ":", "=", "'", '"', ",", "(", ")", "[", "]", ".", "Secret", "key",
    "users.ops.secret", "password", "word", "[redacted]", "x-", "&",
]), max_size=14))
def test_scrubbing_is_idempotent_and_never_lets_a_long_secret_through(pieces):
    redactor = Redactor(["hunter22", "is", "a", "the"])
    text = "".join(pieces)
    once = redactor._scrub(text)
    assert "hunter22" not in once
    assert once.strip() not in SHORT_SECRETS
    assert redactor._scrub(once) == once


class EchoPlugin:
    """Logs the request it gets, at debug, as a plugin author might."""

    @hookimpl
    def register_actions(self):
        def echo(ctx):
            ctx.log.debug("request", text="\n".join(ctx.request.lines), headers=ctx.request.headers())
            return Response.success("Echoed")

        return [Action("Echo", echo, "Log the request.", ())]


class PlainQuotingBackend:
    """A backend whose error quotes the secret it was given as ``secret=...``."""

    @hookimpl
    def authenticate(self, request):
        raise RuntimeError(f"backend rejected (secret={request.secret})")


def _strings(value):
    """Every string inside a decoded JSON record."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_short_secrets_end_to_end_messages_intact_values_scrubbed(tmp_path):
    """Secrets "is", "a", "the": a failed reload's message reads as written, a backend's quoted
    credential is scrubbed once, and wherever one of them is a value it is gone (A-3.16)."""
    path = tmp_path / "config.toml"
    base = """
[server]
host = "127.0.0.1"
port = 0
login_failure_delay = 0

[logging]
level = "debug"

[auth]
backends = ["config", "quoting"]

[users.admin]
secret = "is"
read = "all"
write = "all"

[users.ann]
secret = "a"
read = "all"

[users.theo]
secret = "the"
read = "all"
"""
    path.write_text(base)
    expected = f"{path}: users.broken.secret: is required (or secret_hash) and must not be empty"
    sink = MemorySink()
    plugins = [("echo", EchoPlugin()), ("quoting", PlainQuotingBackend())]
    with running_server(load_config(path), log_sink=sink, extra_plugins=plugins) as srv:
        with srv.client() as c:
            assert c.login("admin", "is", events="off")["Message"] == "Authentication accepted"
            path.write_text(base + '\n[users.broken]\nread = "all"\n')
            assert c.action("ServerReload")["Message"] == f"Reload failed: {expected}"
            c.action("Echo", {"ActionID": "the", "Variable": "a", "Body": "the end is a beginning"})
        with srv.client() as c:
            c.send("Login", {"Username": "carol", "Secret": "carol-secret"})
            assert c.read_until_closed() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
        with srv.client() as c:
            c.send("Login", {"Username": "the", "Secret": "the"})
            c.read_until_closed()
    (reload_failed,) = sink.records("ReloadFailed")
    assert reload_failed["error"] == expected
    reload_executed = [r for r in sink.records("ActionExecuted") if r["action"] == "ServerReload"]
    assert [r["message"] for r in reload_executed] == [f"Reload failed: {expected}"]
    backend_errors = sink.records("AuthBackendError")
    assert [(r["username"], r["error"]) for r in backend_errors] == [
        ("carol", "RuntimeError('backend rejected (secret=[redacted])')"),
        ("[redacted]", "RuntimeError('backend rejected (secret=[redacted])')"),
    ]
    (request,) = sink.records("request")
    assert request["text"] == "Action: Echo\nActionID: [redacted]\nVariable: [redacted]\nBody: the end is a beginning"
    assert request["headers"] == [["Action", "Echo"], ["ActionID", "[redacted]"], ["Variable", "[redacted]"],
                                  ["Body", "the end is a beginning"]]
    echo_executed = [r for r in sink.records("ActionExecuted") if r["action"] == "Echo"]
    assert [r["action_id"] for r in echo_executed] == ["[redacted]"]
    assert [r["username"] for r in sink.records(login="LoginFailed")] == ["carol", "[redacted]"]
    for record in sink.records():
        for text in _strings(record):
            assert text.strip() not in SHORT_SECRETS, record
            for line in text.splitlines():
                assert line.partition(": ")[2].strip() not in SHORT_SECRETS, record


# -- the audit trail: records written from a cached head, against the processor chain ---------

_NOW = "2026-01-01T00:00:00.000+00:00"
_SECRETS = ("hunter2-secret", "s3cr3tpass", "ab")
_TRUSTED = frozenset({"session", "remote_address", "action", "result", "duration_ms", "event", "level", "timestamp", "audit"})


class _Color(str, enum.Enum):
    RED = "hunter2-secret red"


class _Level(enum.IntEnum):
    HIGH = 3


def _chain_line(processors, context, event, fields, about):
    """A record as the processor chain renders it: ``about`` scrubbed by its own trusted names, one dict."""
    redactor = processors[1]
    trusted = frozenset(fields.pop(TRUSTED_FIELDS_KEY, ()))
    shown = {}
    if about:
        shown = redactor(None, "info", {**about, TRUSTED_FIELDS_KEY: about.trusted})
        shown = {name: value for name, value in shown.items() if name not in fields and name != "event"}
    event_dict = {**context, **shown, **fields, "event": event, TRUSTED_FIELDS_KEY: trusted | shown.keys()}
    for processor in processors:
        event_dict = processor(None, "info", event_dict)
    return event_dict.decode()


def _lines(monkeypatch, records, secrets=_SECRETS, later_secrets=()):
    """Each record written by AuditLogger.record and rendered by the processor chain: the pairs of lines."""
    monkeypatch.setattr(audit._LevelTimeAndException, "timestamp", lambda self: _NOW)
    redactor = Redactor(secrets)
    sink = MemorySink()
    log = audit.make_audit_logger(sink, redactor=redactor)
    processors = audit._processors("json", redactor)
    chain = []
    for number, (event, fields, about) in enumerate(records):
        if later_secrets and number == len(records) // 2:
            redactor.add_secrets(later_secrets)
        log.record(event, copy.deepcopy(fields), about)
        chain.append(_chain_line(processors, log._context, event, copy.deepcopy(fields), about))
    return list(zip(sink.lines, chain))


def _who(username="alice"):
    return audit.AuditFields(
        {"session": "0x0123456789ab", "remote_address": "IPV4/TCP/127.0.0.1/5000", "username": username},
        ("session", "remote_address"),
    )


def test_audit_lines_equal_the_processor_chain_a_3_16(monkeypatch):
    """A-3.16: records written from a session's cached head are the chain's lines, scrubbing included."""
    who = _who()
    records = [
        ("ActionExecuted", {"action": "Ping", "action_id": "q1", "result": "Success", "message": None,
                            "duration_ms": 0.012, TRUSTED_FIELDS_KEY: _TRUSTED}, who),
        ("ActionExecuted", {"action": "Ping", "action_id": "id hunter2-secret", "result": "Success",
                            "message": "Secret: s3cr3tpass", "duration_ms": 1.5, TRUSTED_FIELDS_KEY: _TRUSTED}, who),
        ("LoginFailed", {"reason": "bad", "secret": "anything", "Key": "k", "password": 7,
                         TRUSTED_FIELDS_KEY: _TRUSTED}, _who("hunter2-secret")),
        ("Odd", {"n": 3, "big": 10 ** 30, "f": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
                 "yes": True, "no": False, "none": None, "enum": _Color.RED, "lvl": 1,
                 TRUSTED_FIELDS_KEY: _TRUSTED}, None),
        ("Nested", {"list": ["a", "hunter2-secret", ("Secret", "x")], "dict": {"key": "v", "x": "ab cd"},
                    "pair": ("Key", "v"), "bytes": b"raw", "int_enum": _Level.HIGH, "ok": "ab", "word": "lab",
                    TRUSTED_FIELDS_KEY: _TRUSTED}, who),
        ("Trusted", {"action": "hunter2-secret", "session": "x", TRUSTED_FIELDS_KEY: _TRUSTED}, None),
        ("NoTrust", {"a": "monkey key=abc", "b": "q\"uote\\ \u00e9 \u2603 100%s"}, None),
        ("ListTrusted", {"action": "x", "q": "s3cr3tpass", TRUSTED_FIELDS_KEY: ["action"]}, who),
        ("Empty", {}, None),
        ("EmptyAbout", {"x": 1}, audit.AuditFields()),
        ("UntrustedAbout", {"x": 1}, audit.AuditFields({"session": "hunter2-secret", "k": "Secret: s3cr3tpass"})),
        ("TrustedAbout", {"x": 1}, audit.AuditFields({"session": "key=kept", "u": "key=scrubbed"}, ("session",))),
        ("Overlap", {"username": "hunter2-secret", TRUSTED_FIELDS_KEY: _TRUSTED}, who),  # a field also in ``about``
        ("Reserved", {"timestamp": "mine", "event": "other", TRUSTED_FIELDS_KEY: _TRUSTED}, None),
        ("Nam%e \"q\"", {"na%sme": "v", "\u00fc": "w", TRUSTED_FIELDS_KEY: _TRUSTED}, who),
        ("hunter2-secret event", {"x": 1}, None),
        ("Fault", {"error": "x", "exc_info": ValueError("bad hunter2-secret"), TRUSTED_FIELDS_KEY: _TRUSTED}, who),
    ]
    pairs = _lines(monkeypatch, records * 2)  # the second round writes from the cached heads
    assert len(pairs) == len(records) * 2
    for fast_line, chain_line in pairs:
        assert fast_line == chain_line
        if json.loads(fast_line)["event"] != "Trusted":  # a trusted field is written as it is
            assert "hunter2-secret" not in fast_line and "s3cr3tpass" not in fast_line
    # A record field named like an ``about`` field replaces it, scrubbed by the record's trusted names.
    overlap = json.loads(pairs[12][0])
    assert overlap["username"] == "[redacted]" and list(overlap).count("username") == 1
    # ``about`` fields are scrubbed by the names ``about`` trusts, whatever the record trusts.
    trusted_about = json.loads(pairs[11][0])
    assert (trusted_about["session"], trusted_about["u"]) == ("key=kept", "key=[redacted]")
    # "key=..." in free text is scrubbed though the value is no configured secret.
    assert json.loads(pairs[6][0])["a"] == "monkey key=[redacted]"
    # Reserved names are kept as the chain keeps them (the chain's own values win).
    assert json.loads(pairs[13][0])["event"] == "Reserved"


def test_a_bound_audit_logger_scrubs_its_context_and_keeps_its_level():
    sink = MemorySink()
    log = audit.make_audit_logger(sink, level="warning", redactor=Redactor(["hunter2-secret"]))
    bound = log.bind(node="hunter2-secret")
    bound.record("Dropped", {"a": 1})  # info, below the level
    bound.record("Fault", {"error": "hunter2-secret"}, _who(), level="warning")
    (record,) = sink.records()
    assert (record["event"], record["node"], record["error"], record["username"]) == (
        "Fault", "[redacted]", "[redacted]", "alice")
    assert "hunter2-secret" not in sink.text()


def test_audit_lines_follow_new_secrets(monkeypatch):
    """A secret added by a reload is scrubbed from cached heads too (context, ``about``)."""
    who = _who("newpass-1234")
    records = [("ActionExecuted", {"action": "Ping", "action_id": "newpass-1234", TRUSTED_FIELDS_KEY: _TRUSTED}, who)] * 4
    records += [("newpass-1234", {"x": "newpass-1234"}, None)] * 2
    pairs = _lines(monkeypatch, records, later_secrets=("newpass-1234",))
    assert all(fast == chain for fast, chain in pairs)
    assert "newpass-1234" in pairs[0][0]  # not yet a secret
    assert all("newpass-1234" not in fast for fast, _ in pairs[3:])


def test_audit_lines_scrub_an_untrusted_timestamp(monkeypatch):
    """A record that trusts nothing gets even its timestamp scrubbed, on both paths (A-3.16)."""
    pairs = _lines(monkeypatch, [("NoTrust", {"a": 1}, None)] * 2, secrets=("2026-01",))
    for fast_line, chain_line in pairs:
        assert fast_line == chain_line
        assert json.loads(fast_line)["timestamp"] == "[redacted]-01T00:00:00.000+00:00"


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(
    st.sampled_from(["action", "action_id", "message", "secret", "Key", "user", "n", "x y", "%s"]),
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
        st.sampled_from(["hunter2-secret", "a hunter2-secret b", "Secret: zz", "ab", "ab!", "lab", "key=v"]),
        st.text(max_size=12), st.lists(st.sampled_from(["ab", "x", "hunter2-secret"]), max_size=3),
    ),
    max_size=6,
), trusted=st.sets(st.sampled_from(["action", "message", "n", "event", "level", "timestamp", "audit"])),
   with_about=st.booleans())
def test_audit_lines_equal_the_chain_for_any_fields(fields, trusted, with_about):
    fields = {**fields, TRUSTED_FIELDS_KEY: frozenset(trusted)}
    about = _who("ab") if with_about else None
    with pytest.MonkeyPatch.context() as monkeypatch:
        for fast_line, chain_line in _lines(monkeypatch, [("Rec", fields, about)] * 2):
            assert fast_line == chain_line


def test_many_secrets_are_found_with_one_scan():
    """Past FEW_SECRETS the redactor looks for all secrets with one regex; every one is still scrubbed."""
    secrets = [f"pw-number-{i:03d}" for i in range(Redactor.FEW_SECRETS * 3)]
    redactor = Redactor(secrets)
    for secret in secrets:
        assert redactor.suspicious(f"x {secret} y")
        assert secret not in redactor(None, "info", {"v": f"x {secret} y"})["v"]
    assert not redactor.suspicious("nothing to see")


def test_a_record_orjson_refuses_is_still_one_valid_json_line():
    """A lone surrogate (bytes a client sent that are not UTF-8, P-1.22) sends a record to the
    json module; a float that is not finite beside it is written null, as orjson writes it."""
    line = audit._dumps({"data": b"\xff".decode("utf-8", "surrogateescape"), "ratio": float("nan"),
                         "items": [float("inf"), 1.5]})
    assert b"\n" not in line
    parsed = json.loads(line, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert parsed == {"data": "\udcff", "ratio": None, "items": [None, 1.5]}
