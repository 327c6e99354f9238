import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

USERS = {
    "admin": {"secret": "adminpass", "read": "all", "write": "all"},
    "reader": {"secret": "readerpass", "read": "system,call,user", "write": []},
    "limited": {"secret": "limitedpass", "read": "call", "write": "call"},
}
