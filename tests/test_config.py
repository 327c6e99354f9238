"""Configuration parsing: typed records, strict classes, errors that name file and key."""

from __future__ import annotations

import pytest

from ami_server.config import ConfigError, load_config, parse_config
from ami_server.privileges import ALL, CLASSES, format_privilege, parse_class_list, parse_event_mask


def write(tmp_path, text):
    path = tmp_path / "ami.toml"
    path.write_text(text)
    return path


def test_minimal_shape_from_the_issue(tmp_path):
    cfg = load_config(write(tmp_path, """
[server]
host = "127.0.0.1"
port = 5038
[users.admin]
secret = "change-me"
read = "all"
write = ["system", "call"]
"""))
    assert cfg.server.port == 5038 and cfg.server.auth_timeout == 30.0
    admin = cfg.user("ADMIN")
    assert admin.read == ALL and admin.write == CLASSES["system"] | CLASSES["call"]
    assert "change-me" not in repr(admin)


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ("[server]\nprot = 1\n", "server.prot", "unknown key"),
        ("[server]\nport = 70000\n", "server.port", "between"),
        ("[server]\nport = \"5038\"\n", "server.port", "integer"),
        ("[server]\nami_version = \"eleven\"\n", "server.ami_version", "11.0.0"),
        ("[server]\noutput_queue_limit = 100\n", "server.output_queue_limit", "between"),
        ("[users.bob]\nsecret = \"\"\n", "users.bob.secret", "required"),
        ("[users.bob]\nsecret = \"x\"\nread = \"sys\"\n", "users.bob.read", "'sys'"),
        ("[users.bob]\nsecret = \"x\"\nread = \"System\"\n", "users.bob.read", "lower-case"),
        ("[users.bob]\nsecret = \"x\"\nwrite = \"call,,user\"\n", "users.bob.write", "empty"),
        ("[users.bob]\nsecret = \"x\"\nwrite = [\"none\", \"call\"]\n", "users.bob.write", "alone"),
        ("[users.bob]\nsecret = \"x\"\ncolour = \"red\"\n", "users.bob.colour", "unknown key"),
        ("[users.bob]\nsecret = \"x\"\n[users.BOB]\nsecret = \"y\"\n", "users.BOB", "duplicate"),
        ("[logging]\nlevel = \"loud\"\n", "logging.level", "one of"),
        ("[plugins]\ndisable = \"x\"\n", "plugins.disable", "list"),
        ("colour = 1\n", "colour", "unknown key"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert problem in message


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[server\n"))


def test_plugin_tables_are_handed_over():
    cfg = parse_config({"plugins": {"disable": ["ping"], "example_hello": {"greeting": "Hi"}}})
    assert cfg.plugins.disable == ("ping",)
    assert cfg.plugins.tables["example_hello"]["greeting"] == "Hi"


def test_class_lists_c_4_2():
    assert parse_class_list(" system , call ") == CLASSES["system"] | CLASSES["call"]
    assert parse_class_list("none") == 0 and parse_class_list([]) == 0 and parse_class_list("") == 0
    assert format_privilege(CLASSES["system"] | CLASSES["reporting"]) == "system,reporting,all"
    assert format_privilege(0) == "<none>"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", None), (None, None), ("16", CLASSES["command"]), ("1", CLASSES["system"]), ("0", 0),
        ("2147483647", ALL), ("2147483648", None), ("off", 0), ("FALSE", 0), ("on", ALL), ("Y", ALL),
        ("bogus", 0), ("System", 0), ("system, call", CLASSES["system"]), ("all", ALL),
        ("user,none", CLASSES["user"]), (str(1 << 14), 0),
    ],
)
def test_event_mask_c_4_5(value, expected):
    assert parse_event_mask(value) == expected
