"""The dialplan of Asterisk 22.10.1's call transcripts, as a [plugins.pbxsim] table, and test helpers."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))

#: 00-SUMMARY-CALLS.txt, "DIALPLAN used by all these transcripts" (Queue steps left out).
DIALPLAN = {
    "extensions": {
        "100@default": ["Answer", "UserEvent(DialplanTest,Source: dialplan)", "Wait(3)", "Hangup"],
        "short@default": ["Answer", "Wait(1)", "Hangup"],
        "long@default": ["Answer", "Wait(20)", "Hangup"],
        "bridge@default": ["Dial(Local/short@default)", "Hangup"],
        "bridgelong@default": ["Dial(Local/long@default)", "Hangup"],
        "busy@default": ["Busy()"],
        "noanswer@default": ["Wait(30)", "Hangup"],
        "ring@default": ["Ringing()", "Wait(30)", "Hangup"],
        "congest@default": ["Congestion()"],
        "reject@default": ["Hangup(21)"],
        "redirtarget@default": ["Answer", "UserEvent(RedirectTarget,Source: redirected)", "Wait(2)", "Hangup"],
        "echo@default": ["Answer", "Echo"],
    },
    "endpoints": {
        "alice": {"answer_delay": 0.2, "callerid": '"Alice" <201>'},
        "bob": {"answer_delay": 0.2, "callerid": '"Bob" <202>'},
        "busybox": {"behaviour": "busy"},
    },
}

USERS = {
    "admin": {"secret": "adminpass", "read": "all", "write": "all"},
    "reader": {"secret": "readerpass", "read": "system,call,user", "write": []},
    "limited": {"secret": "limitedpass", "read": "call", "write": "call"},
}


def start_server_process(tmp_path: Path, plugin_table: str, timeout: float = 30.0):
    """``ami-server --config`` as a real process with the installed plugins; returns it and its port."""
    import re
    import subprocess
    import time

    log_file = tmp_path / "server.log"
    config = tmp_path / "config.toml"
    users = "".join(
        f'\n[users.{name}]\nsecret = "{u["secret"]}"\nread = "{u["read"]}"\nwrite = {u["write"]!r}\n'.replace("'", '"')
        for name, u in USERS.items()
    )
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\nlogin_failure_delay = 0\n\n'
        f'[logging]\nfile = "{log_file}"\nformat = "json"\n{users}\n{plugin_table}\n'
    )
    process = subprocess.Popen([sys.executable, "-m", "ami_server.cli", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("server did not start")
        if process.poll() is not None:
            raise AssertionError(process.stderr.read())
        found = log_file.exists() and re.search(r'"address": ?"127\.0\.0\.1:(\d+)"', log_file.read_text())
        if found:
            return process, int(found.group(1))
        time.sleep(0.05)


SAMPLE_TABLE = """
[plugins.pbxsim.extensions]
"100@default" = ["Answer", "UserEvent(DialplanTest,Source: dialplan)", "Wait(3)", "Hangup"]
"long@default" = ["Answer", "Wait(20)", "Hangup"]
"""
