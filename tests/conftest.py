"""Fixtures only; shared data and helpers live in helpers.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Test modules import these from helpers; re-exported for modules that still import them from here.
from helpers import (  # noqa: E402,F401
    USERS,
    plugin_module,
    process_config,
    start_server_process,
    wait_for,
)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path for throwaway plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path
