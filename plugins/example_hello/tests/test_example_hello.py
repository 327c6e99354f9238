"""The example plugin against a real server, loaded through its entry point."""

import pytest

from ami_server.testing import make_config


@pytest.fixture
def ami_server_config():
    return make_config({
        "users": {
            "admin": {"secret": "adminpass", "read": "all", "write": "all"},
            "watcher": {"secret": "watchpass", "read": "user", "write": []},
        },
        "plugins": {"example_hello": {"greeting": "Hi", "names": ["Alice", "Bob"]}},
    })


def test_listed_and_answers(ami_server, ami_client):
    ami_client.login("admin", "adminpass", events="off")
    listing = ami_client.action("ListCommands")
    assert listing["Hello"] == "Say hello to someone.  (Priv: user,all)"
    reply = ami_client.action("Hello", {"Name": "World", "ActionID": "h1"})
    assert reply.lines == [("Response", "Success"), ("ActionID", "h1"), ("Message", "Hi, World!")]


def test_event_reaches_user_readers(ami_server, ami_client):
    ami_client.login("admin", "adminpass", events="off")
    with ami_server.client() as watcher:
        watcher.login("watcher", "watchpass")
        ami_client.action("Hello", {"Name": "Ann"})
        event = watcher.wait_event("Hello")
        assert event["Name"] == "Ann" and event["From"] == "admin"
        assert event["Privilege"] == "user,all"


def test_list_response(ami_server, ami_client):
    ami_client.login("admin", "adminpass", events="off")
    ami_client.send("HelloNames", {"ActionID": "n"})
    blocks = [ami_client.read_block() for _ in range(4)]
    assert blocks[0].lines == [
        ("Response", "Success"), ("ActionID", "n"), ("EventList", "start"), ("Message", "Names will follow"),
    ]
    assert [b["Name"] for b in blocks[1:3]] == ["Alice", "Bob"]
    assert blocks[1].lines[:2] == [("Event", "HelloName"), ("ActionID", "n")]
    assert blocks[3].lines == [
        ("Event", "HelloNamesComplete"), ("ActionID", "n"), ("EventList", "Complete"), ("ListItems", "2"),
    ]


def test_needs_user_write_class(ami_server, ami_client):
    ami_client.login("watcher", "watchpass")
    assert ami_client.action("Hello")["Message"] == "Permission denied"
