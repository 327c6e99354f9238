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
