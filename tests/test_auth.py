"""Authentication: the backend chain off the loop, secret_hash, address ACLs, plaintext policy (§3)."""

from __future__ import annotations

import threading
import time

import pytest

from ami_server import AuthDecision, hookimpl
from ami_server.acl import AddressACL
from ami_server.config import ConfigError
from ami_server.passwords import hash_secret, parse_secret_hash, verify_secret
from ami_server.testing import make_config, running_server

from helpers import USERS, non_loopback_ipv4

FAILED = b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
FAST_HASH = {"log_n": 10, "r": 8, "p": 1}  # keeps tests quick; the default is ln=14


class SlowBackend:
    """Takes ``delay`` seconds per login (a slow directory), then accepts ``user``."""

    def __init__(self, delay, user="slow", secret="slowpass"):
        self.delay, self.user, self.secret = delay, user, secret
        self.entered = threading.Event()
        self.finished = threading.Event()
        self.threads = []
        self.configs = []

    @hookimpl
    def authenticate(self, request, config):
        self.threads.append(threading.current_thread().name)
        self.configs.append(dict(config))
        self.entered.set()
        time.sleep(self.delay)
        self.finished.set()
        if request.username != self.user:
            return None
        if request.secret == self.secret:
            return AuthDecision.accept(read="user", write="user")
        return AuthDecision.reject("invalid_password")


def test_a_backend_taking_1_s_per_login_does_not_delay_other_sessions_pings():
    slow = SlowBackend(1.0)
    cfg = make_config({"users": USERS, "auth": {"backends": ["slow", "config"]},
                       "plugins": {"slow": {"directory": "ldap://example"}}})
    with running_server(cfg, extra_plugins=[("slow", slow)]) as srv:
        with srv.client() as other:
            # Logging in "other" also takes a second (it passes through the slow backend first).
            assert other.login("admin", "adminpass", events="off")["Message"] == "Authentication accepted"
            slow.entered.clear(); slow.finished.clear()
            with srv.client() as waiting:
                waiting.send("Login", {"Username": "slow", "Secret": "slowpass"})
                assert slow.entered.wait(5.0)
                for n in range(5):
                    assert other.action("Ping", {"ActionID": str(n)}, timeout=1.5)["Ping"] == "Pong"
                assert not slow.finished.is_set(), "the Pongs came while the backend was still working"
                assert waiting.read_response(timeout=5.0)["Message"] == "Authentication accepted"
    assert all(name.startswith("ami-auth") for name in slow.threads)
    assert slow.configs[0] == {"directory": "ldap://example"}


def test_a_backend_that_does_not_answer_in_time_fails_closed():
    slow = SlowBackend(2.0)
    cfg = make_config({"users": USERS, "auth": {"backends": ["slow"], "timeout": 0.2}})
    with running_server(cfg, extra_plugins=[("slow", slow)]) as srv:
        with srv.client() as client:
            client.send("Login", {"Username": "slow", "Secret": "slowpass"})
            assert client.read_until_closed(timeout=5.0) == FAILED
        (record,) = srv.log.records("AuthBackendError")
        assert record["backend"] == "slow" and record["error"] == "no answer within 0.2 s"
        assert record["username"] == "slow"
        # The late acceptance arrives after the session is gone and changes nothing.
        assert slow.finished.wait(5.0)
        with srv.client() as client:
            assert client.action("Ping")["Message"] == "Permission denied"


class RejectingBackend:
    def __init__(self, answer):
        self.answer = answer

    @hookimpl
    def authenticate(self):
        return self.answer


@pytest.mark.parametrize(
    "answer, security_event",
    [
        (AuthDecision.reject("acl_denied", detail="blocked"), "FailedACL"),
        (AuthDecision.reject("invalid_password"), "InvalidPassword"),
        (AuthDecision.reject("unknown_user"), "InvalidAccountID"),
        (AuthDecision.reject(), None),
        ("yes", None),
    ],
)
def test_every_rejection_looks_the_same_to_the_client_a_3_8(answer, security_event):
    cfg = make_config({"users": USERS, "auth": {"backends": ["config", "custom"]}})
    with running_server(cfg, extra_plugins=[("custom", RejectingBackend(answer))]) as srv:
        with srv.client() as watcher, srv.client() as client:
            watcher.login("admin", "adminpass")
            client.send("Login", {"Username": "someone", "Secret": "x"})
            assert client.read_until_closed() == FAILED
            watcher.action("Ping")
            names = [e["Event"] for e in watcher.events]
            if security_event:
                event = watcher.wait_event(security_event)
                assert event["AccountID"] == "someone"
            else:
                assert not {"FailedACL", "InvalidPassword", "InvalidAccountID"} & set(names)
    if isinstance(answer, AuthDecision):
        (failed,) = srv.log.records(login="LoginFailed")
        assert failed["backend"] == "custom"
        assert failed["reason"] == (answer.reason or "rejected")
    else:
        (error,) = srv.log.records("AuthBackendError")
        assert error["error"] == "returned str, not an AuthDecision"


# -- secret_hash -------------------------------------------------------------


def test_secret_hash_round_trip_and_format():
    encoded = hash_secret("correct horse", **FAST_HASH)
    assert encoded.startswith("$scrypt$ln=10,r=8,p=1$")
    assert verify_secret("correct horse", encoded)
    assert not verify_secret("correct horsE", encoded)
    assert hash_secret("correct horse", **FAST_HASH) != encoded  # fresh salt
    assert "correct" not in repr(parse_secret_hash(encoded))
    for bad in ("", "plain", "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "$scrypt$ln=14,r=8,p=1$$x"):
        with pytest.raises(ValueError):
            parse_secret_hash(bad)


def test_secret_hash_user_logs_in_with_plaintext_only_a_3_5():
    users = {
        "hashed": {"secret_hash": hash_secret("hashedpass", **FAST_HASH), "read": "all", "write": "all"},
        "admin": USERS["admin"],
    }
    with running_server(make_config({"users": users})) as srv:
        with srv.client() as client:
            assert client.login("HASHED", "hashedpass")["Message"] == "Authentication accepted"
        with srv.client() as watcher, srv.client() as client:
            watcher.login("admin", "adminpass")
            challenge = client.action("Challenge", {"AuthType": "MD5"})["Challenge"]
            import hashlib

            key = hashlib.md5((challenge + "hashedpass").encode()).hexdigest()
            client.send("Login", {"AuthType": "MD5", "Username": "hashed", "Key": key})
            assert client.read_until_closed() == FAILED
            watcher.action("Ping")
            # the secret is not usable for MD5 -> failure without a security event.
            assert not [e for e in watcher.events if e["Event"] == "ChallengeResponseFailed"]
        with srv.client() as client:
            client.send("Login", {"Username": "hashed", "Secret": "wrong"})
            assert client.read_until_closed() == FAILED
    details = [r.get("detail") for r in srv.log.records(login="LoginFailed")]
    assert "MD5 login for a user with secret_hash (no plaintext to hash)" in details


@pytest.mark.parametrize(
    "user, key, problem",
    [
        ({"secret": "a", "secret_hash": "b"}, "secret_hash", "set either secret or secret_hash, not both"),
        ({"secret_hash": "nope"}, "secret_hash", "not a secret hash"),
        ({"secret": ""}, "secret", "is required (or secret_hash) and must not be empty"),
        ({"secret": "a", "permit": ["10.0.0.0/33"]}, "permit", "'10.0.0.0/33' is not a network"),
        ({"secret": "a", "deny": ["example.com"]}, "deny", "'example.com' is not a network"),
        ({"secret": "a", "require_tls_for_plaintext": "yes"}, "require_tls_for_plaintext", "must be true or false"),
    ],
)
def test_user_credential_and_acl_errors_name_the_key(user, key, problem):
    with pytest.raises(ConfigError) as caught:
        make_config({"users": {"ops": user}})
    assert f"users.ops.{key}: {problem}" in str(caught.value)


# -- address ACLs ------------------------------------------------------------

ACL_TABLE = [
    # permit, deny, address, allowed
    ([], [], "203.0.113.9", True),
    ([], [], "2001:db8::1", True),
    (["10.0.0.0/8"], [], "10.1.2.3", True),
    (["10.0.0.0/8"], [], "192.168.1.1", False),
    (["10.0.0.0/8"], [], "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 is IPv4
    (["10.0.0.0/8"], [], "2001:db8::1", False),
    ([], ["10.0.0.0/8"], "10.1.2.3", False),
    ([], ["10.0.0.0/8"], "192.168.1.1", True),
    ([], ["10.0.0.0/8"], "::ffff:10.0.0.1", False),
    (["0.0.0.0/0"], [], "198.51.100.7", True),
    (["0.0.0.0/0"], [], "::1", False),  # /0 of IPv4 does not cover IPv6
    (["0.0.0.0/0", "::/0"], [], "::1", True),
    ([], ["0.0.0.0/0"], "198.51.100.7", False),
    ([], ["0.0.0.0/0"], "2001:db8::5", True),
    (["10.0.0.0/8"], ["0.0.0.0/0"], "10.9.9.9", True),  # more specific permit wins
    (["10.0.0.0/8"], ["0.0.0.0/0"], "8.8.8.8", False),
    (["10.0.0.0/8"], ["10.1.0.0/16"], "10.1.5.5", False),  # more specific deny wins
    (["10.0.0.0/8"], ["10.1.0.0/16"], "10.2.5.5", True),
    (["10.1.2.3/32"], ["10.0.0.0/8"], "10.1.2.3", True),
    (["10.0.0.0/8"], ["10.0.0.0/8"], "10.1.1.1", False),  # same prefix: deny wins
    (["2001:db8::/32"], [], "2001:db8:1::9", True),
    (["2001:db8::/32"], [], "2001:db9::9", False),
    (["::ffff:10.0.0.0/104"], [], "10.3.3.3", True),  # a mapped network is an IPv4 network
    (["127.0.0.1"], [], "127.0.0.1", True),  # a bare address is a /32
    (["127.0.0.1"], [], "127.0.0.2", False),
]


@pytest.mark.parametrize("permit, deny, address, allowed", ACL_TABLE)
def test_acl_evaluation_order(permit, deny, address, allowed):
    assert AddressACL.parse(permit, deny).allows(address) is allowed


def test_acl_denied_login_publishes_failed_acl_before_checking_the_secret_a_3_4():
    users = dict(USERS)
    users["remote"] = {"secret": "remotepass", "read": "all", "write": "all", "permit": ["192.0.2.0/24"]}
    users["local"] = {"secret": "localpass", "read": "all", "write": "all",
                      "permit": ["127.0.0.0/8"], "deny": ["0.0.0.0/0"]}
    with running_server(make_config({"users": users})) as srv:
        with srv.client() as watcher:
            watcher.login("admin", "adminpass")
            for secret in ("remotepass", "wrong"):  # the ACL is checked first (A-3.4 step 3)
                with srv.client() as client:
                    client.send("Login", {"Username": "remote", "Secret": secret})
                    assert client.read_until_closed() == FAILED
                event = watcher.wait_event("FailedACL")
                assert event["AccountID"] == "remote" and event["Severity"] == "Error"
                assert event["RemoteAddress"].startswith("IPV4/TCP/127.0.0.1/")
            with srv.client() as client:
                assert client.login("local", "localpass")["Message"] == "Authentication accepted"
    records = srv.log.records("FailedACL")
    assert len(records) == 2 and records[0]["AccountID"] == "remote"
    failed = srv.log.records(login="LoginFailed")
    assert [r["reason"] for r in failed] == ["acl_denied", "acl_denied"]


# -- plaintext policy --------------------------------------------------------


class PeerAs:
    """Accepts everyone; records what the server told it about the peer."""

    def __init__(self):
        self.requests = []

    @hookimpl
    def authenticate(self, request):
        self.requests.append(request)
        return AuthDecision.accept("all", "all")


def _users_with_tls_policies():
    """USERS plus one user who always needs TLS for a plaintext secret and one who never does."""
    users = dict(USERS)
    users["strict"] = {"secret": "strictpass", "read": "all", "write": "all", "require_tls_for_plaintext": True}
    users["relaxed"] = {"secret": "relaxedpass", "read": "all", "write": "all", "require_tls_for_plaintext": False}
    return users


def test_plaintext_policy_trusts_loopback_even_for_a_strict_user():
    cfg = make_config({"users": _users_with_tls_policies()}, require_tls_for_plaintext=True)
    with running_server(cfg) as srv:
        # Loopback peers are trusted even when TLS is required for plaintext secrets, globally or per user.
        for user in ("strict", "admin", "relaxed"):
            with srv.client() as client:
                assert client.login(user, f"{user}pass")["Message"] == "Authentication accepted", user
    assert not srv.log.records(login="LoginFailed")


@pytest.mark.parametrize("server_requires, refused", [
    (False, {"strict"}),  # only the user who asks for it needs TLS
    (True, {"strict", "admin"}),  # everyone but the user who opts out
])
def test_plaintext_policy_applies_per_user(server_requires, refused):
    """A user's require_tls_for_plaintext overrides the server's, either way, for a non-loopback peer."""
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    cfg = make_config({"users": _users_with_tls_policies()}, require_tls_for_plaintext=server_requires, host=address)
    with running_server(cfg) as srv:
        for user in ("strict", "admin", "relaxed"):
            with srv.client() as client:
                if user in refused:
                    client.send("Login", {"Username": user, "Secret": f"{user}pass"})
                    assert client.read_until_closed() == FAILED, user
                else:
                    assert client.login(user, f"{user}pass")["Message"] == "Authentication accepted", user
    failed = srv.log.records(login="LoginFailed")
    assert {r["username"] for r in failed} == refused
    assert {r["reason"] for r in failed} == {"plaintext secret refused without TLS"}


def test_plaintext_refused_for_a_non_loopback_peer():
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    cfg = make_config({"users": USERS}, require_tls_for_plaintext=True, host=address)
    with running_server(cfg) as srv:
        with srv.client() as client:
            client.send("Login", {"Username": "admin", "Secret": "adminpass"})
            assert client.read_until_closed() == FAILED
        with srv.client() as client:
            # MD5 never sends the secret, so it is still allowed.
            import hashlib

            challenge = client.action("Challenge", {"AuthType": "MD5"})["Challenge"]
            key = hashlib.md5((challenge + "adminpass").encode()).hexdigest()
            reply = client.action("Login", {"AuthType": "MD5", "Username": "admin", "Key": key})
            assert reply["Message"] == "Authentication accepted"
    (failed,) = srv.log.records(login="LoginFailed")
    assert failed["reason"] == "plaintext secret refused without TLS"
    assert failed["remote_address"].startswith(f"IPV4/TCP/{address}/")


def test_backends_see_the_peer_ip_and_listener():
    backend = PeerAs()
    cfg = make_config({"users": USERS, "auth": {"backends": ["peer"]}})
    with running_server(cfg, extra_plugins=[("peer", backend)]) as srv, srv.client() as client:
        client.login("anyone", "x")
    (request,) = backend.requests
    assert request.peer_ip == "127.0.0.1" and request.transport == "TCP"
    assert request.local_address == f"IPV4/TCP/127.0.0.1/{srv.port}"
    assert "x" not in repr(request).replace("xx", "")


def test_login_in_use_is_checked_again_after_a_slow_backend_a_3_13():
    slow = SlowBackend(0.5, user="solo", secret="solopass")
    users = {"admin": USERS["admin"]}
    cfg = make_config({"users": users, "auth": {"backends": ["slow"]}}, allow_multiple_login=False)
    with running_server(cfg, extra_plugins=[("slow", slow)]) as srv:
        with srv.client() as first, srv.client() as second:
            first.send("Login", {"Username": "solo", "Secret": "solopass"})
            second.send("Login", {"Username": "solo", "Secret": "solopass"})
            replies = []
            for client in (first, second):
                try:
                    replies.append(client.read_response(timeout=5.0)["Message"])
                except ConnectionError:
                    replies.append("closed")
            assert sorted(replies) == ["Authentication accepted", "Login Already In Use"]


def test_nonblocking_backends_decide_on_the_loop_and_hashes_go_to_workers():
    plain = make_config({"users": USERS})
    with running_server(plain, entry_points=()) as srv, srv.client() as c:
        assert c.login("admin", "adminpass")["Message"] == "Authentication accepted"
        assert srv.server.auth_workers.stats["submitted"] == 0  # no thread hop for an in-memory table
    users = dict(USERS, hashed={"secret_hash": hash_secret("h-secret", **FAST_HASH), "read": "all", "write": "all"})
    with running_server(make_config({"users": users}), entry_points=()) as srv:
        with srv.client() as c:
            assert c.login("hashed", "h-secret")["Message"] == "Authentication accepted"
        with srv.client() as c:
            assert c.login("admin", "adminpass")["Message"] == "Authentication accepted"
        assert srv.server.auth_workers.stats["submitted"] == 2  # scrypt must never run on the loop
