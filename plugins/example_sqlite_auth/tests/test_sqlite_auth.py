"""The SQLite backend, loaded through its entry point, against a real server."""

import json
import sqlite3
import subprocess
import sys

import pytest

from ami_server.testing import make_config

FAILED = b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"


def users_cli(database, *args, secret=None):
    return subprocess.run(
        [sys.executable, "-m", "ami_server_sqlite_auth", "--database", str(database), *args],
        input=secret if secret is not None else "", capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "users.db"
    for args, secret in [
        (("set", "Alice", "--read", "call,user,security", "--write", "user"), "alice-secret\n"),
        (("set", "bob", "--read", "all", "--write", "all", "--disabled"), "bob-secret\n"),
        (("set", "carol", "--read", "all", "--permit", "192.0.2.0/24"), "carol-secret\n"),
    ]:
        result = users_cli(path, *args, secret=secret)
        assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def ami_server_config(database):
    return make_config({
        "users": {"admin": {"secret": "adminpass", "read": "all", "write": "all"}},
        "auth": {"backends": ["config", "sqlite_auth"]},
        "plugins": {"sqlite_auth": {"database": str(database)}},
    })


def test_users_from_the_database_log_in_with_their_classes(ami_server, ami_client):
    reply = ami_client.login("alice", "alice-secret", events="off")  # user names are case-insensitive
    assert reply["Message"] == "Authentication accepted"
    assert ami_client.action("UserEvent", {"UserEvent": "x"})["Response"] == "Success"  # write: user
    assert ami_client.action("ServerReload")["Message"] == "Permission denied"  # no write: system
    login = ami_server.log.records(login="LoginSucceeded")[-1]
    assert login["backend"] == "sqlite_auth" and login["username"] == "alice"


def _both_know_alice(database, backends):
    """A server where alice is in config.toml (secret and classes of her own) and in the database."""
    from ami_server.testing import running_server

    return running_server(make_config({
        "users": {
            "admin": {"secret": "adminpass", "read": "all", "write": "all"},
            "alice": {"secret": "config-alice", "read": "system", "write": []},
        },
        "auth": {"backends": backends},
        "plugins": {"sqlite_auth": {"database": str(database)}},
    }))


def _alice_can_send_user_events(srv, secret):
    """Log alice in with ``secret``; whether her classes let her send a UserEvent (write: user)."""
    with srv.client() as client:
        assert client.login("alice", secret, events="off")["Message"] == "Authentication accepted"
        return client.action("UserEvent", {"UserEvent": "x"})["Response"] == "Success"


def test_config_users_still_come_first(database):
    """With backends = ["config", "sqlite_auth"], a user in both is the config's: its secret, its classes."""
    with _both_know_alice(database, ["config", "sqlite_auth"]) as srv:
        with srv.client() as client:
            assert client.login("admin", "adminpass")["Message"] == "Authentication accepted"
        assert _alice_can_send_user_events(srv, "config-alice") is False  # config: write none
        with srv.client() as client:  # the database's secret is never tried: config answered already
            client.send("Login", {"Username": "alice", "Secret": "alice-secret"})
            assert client.read_until_closed() == FAILED
    assert [r["backend"] for r in srv.log.records(login="LoginSucceeded")] == ["config", "config"]
    (failed,) = srv.log.records(login="LoginFailed")
    assert (failed["backend"], failed["reason"]) == ("config", "invalid_password")


def test_the_backend_order_decides_who_answers_for_a_user_in_both(database):
    """The same users with the database first: now its secret and classes count, and config's are never tried."""
    with _both_know_alice(database, ["sqlite_auth", "config"]) as srv:
        assert _alice_can_send_user_events(srv, "alice-secret") is True  # database: write user
        with srv.client() as client:
            client.send("Login", {"Username": "alice", "Secret": "config-alice"})
            assert client.read_until_closed() == FAILED
    assert [r["backend"] for r in srv.log.records(login="LoginSucceeded")] == ["sqlite_auth"]
    (failed,) = srv.log.records(login="LoginFailed")
    assert (failed["backend"], failed["reason"]) == ("sqlite_auth", "invalid_password")


@pytest.mark.parametrize(
    "username, headers, security_event, reason",
    [
        ("alice", {"Secret": "wrong"}, "InvalidPassword", "invalid_password"),
        ("bob", {"Secret": "bob-secret"}, "InvalidAccountID", "unknown_user"),  # disabled
        ("carol", {"Secret": "carol-secret"}, "FailedACL", "acl_denied"),  # 127.0.0.1 is not 192.0.2.0/24
        ("nobody", {"Secret": "x"}, "InvalidAccountID", "unknown_user"),
        ("alice", {"AuthType": "MD5", "Key": "0" * 32}, None, "rejected"),
    ],
)
def test_rejections(ami_server, ami_client, username, headers, security_event, reason):
    with ami_server.client() as watcher:
        watcher.login("admin", "adminpass")
        if headers.get("AuthType") == "MD5":
            ami_client.action("Challenge", {"AuthType": "MD5"})
        ami_client.send("Login", {"Username": username, **headers})
        assert ami_client.read_until_closed() == FAILED
        watcher.action("Ping")
        seen = {e["Event"] for e in watcher.events}
        if security_event:
            assert watcher.wait_event(security_event)["AccountID"] == username
        else:
            assert not seen & {"InvalidPassword", "ChallengeResponseFailed", "InvalidAccountID"}
    failed = ami_server.log.records(login="LoginFailed")[-1]
    assert failed["reason"] == reason


def test_a_missing_database_fails_closed(ami_server_config, tmp_path):
    from ami_server.testing import running_server

    config = make_config({
        "auth": {"backends": ["sqlite_auth"]},
        "plugins": {"sqlite_auth": {"database": str(tmp_path / "gone.db")}},
    })
    with running_server(config) as srv, srv.client() as client:
        client.send("Login", {"Username": "alice", "Secret": "alice-secret"})
        assert client.read_until_closed() == FAILED
    (error,) = srv.log.records("AuthBackendError")
    assert error["backend"] == "sqlite_auth" and "does not exist" in error["error"]


def test_the_database_holds_hashes_and_the_cli_never_prints_them(database):
    rows = sqlite3.connect(database).execute("SELECT username, secret_hash FROM ami_users").fetchall()
    assert all(h.startswith("$scrypt$") for _, h in rows)
    assert not any("secret" in h for _, h in rows)
    listing = users_cli(database, "list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[0] == "Alice  read=call,user,security  write=user"
    assert "bob  read=all  write=all  (disabled)" in listing.stdout
    assert "$scrypt$" not in listing.stdout
    assert users_cli(database, "remove", "carol").returncode == 0
    assert users_cli(database, "remove", "carol").returncode == 1
    bad = users_cli(database, "set", "dave", "--read", "sytem", secret="x\n")
    assert bad.returncode != 0 and "sytem" in bad.stderr


def test_listed_as_an_installed_backend():
    result = subprocess.run(
        [sys.executable, "-m", "ami_server.cli", "plugins", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    entry = plugins["sqlite_auth"]
    assert entry["distribution"] == "ami-server-example-sqlite-auth"
    assert entry["hooks"] == ["authenticate"] and entry["actions"] == []
