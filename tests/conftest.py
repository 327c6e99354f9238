"""Fixtures only; shared data and helpers live in helpers.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path for throwaway plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path
