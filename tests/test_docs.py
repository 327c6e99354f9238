"""docs/writing-plugins.md: every hook documented verbatim, and the tutorial works as written.

Run ``python tests/test_docs.py --write`` to regenerate the hook reference
section of the guide from ``ami_server/hookspecs.py``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-plugins.md"
BEGIN = "<!-- hook reference: generated from ami_server/hookspecs.py -->"
END = "<!-- end of hook reference -->"
FILE_MARK = re.compile(r"^<!-- file: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<body>.*?)^```$", re.M | re.S)


def hookspecs():
    from ami_server import hookspecs as module

    marker = f"{module.PROJECT_NAME}_spec"
    return [
        (name, function)
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if hasattr(function, marker)
    ]


def hook_reference() -> str:
    """The hook reference section: signature and docstring of every hookspec, in source order."""
    specs = sorted(hookspecs(), key=lambda item: item[1].__code__.co_firstlineno)
    parts = [BEGIN, ""]
    for name, function in specs:
        args = ", ".join(inspect.signature(function).parameters)
        doc = inspect.cleandoc(function.__doc__ or "")
        doc = re.sub(r":class:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", doc)
        doc = re.sub(r"``([^`]+)``", r"`\1`", doc)
        parts += [f"### `{name}({args})`", "", doc, ""]
    parts.append(END)
    return "\n".join(parts)


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def test_every_hookspec_is_documented_verbatim():
    text = guide_text()
    assert BEGIN in text and END in text, "the guide lost its hook reference markers"
    start = text.index(BEGIN)
    section = text[start:text.index(END, start) + len(END)]
    assert hookspecs(), "no hookspecs found"
    for name, _ in hookspecs():
        assert f"### `{name}(" in section, f"hook {name} is not documented in {GUIDE.name}"
    assert section == hook_reference(), (
        f"the hook reference in {GUIDE.name} is out of date: run python tests/test_docs.py --write"
    )


def test_the_guide_names_every_public_api_symbol():
    import ami_server

    text = guide_text()
    code = " ".join(re.findall(r"`[^`\n]+`", text))
    missing = [
        name for name in ami_server.__all__
        if not name.startswith("_") and not re.search(rf"\b{name}\b", code)
    ]
    assert not missing, f"{GUIDE.name} does not mention {missing}"


def tutorial_files(guide: Path, expected: set) -> dict:
    files = {m["path"]: m["body"] for m in FILE_MARK.finditer(guide.read_text(encoding="utf-8"))}
    assert expected <= set(files), files.keys()
    return files


def link_environment(venv: Path) -> None:
    """Make this environment's packages (ami-server, pytest) importable in ``venv``."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
    )
    (site / "_outer_environment.pth").write_text(f"import site; site.addsitedir({str(purelib)!r})\n")


def build_tutorial(tmp_path: Path, files: dict, name: str):
    """Write the guide's files, pip-install the project into a new venv, return (python, project)."""
    project = tmp_path / name
    for path, body in files.items():
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    link_environment(venv)
    python = str(venv / "bin" / "python")
    # The guide's "pip install -e ." into the new environment (ami-server is already there).
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-e", str(project)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python, project


def listed(python: str, project: Path) -> dict:
    """The guide's "ami-server plugins" check, as JSON."""
    listing = subprocess.run(
        [python, "-m", "ami_server.cli", "plugins", "--json"],
        capture_output=True, text=True, timeout=120, cwd=project,
    )
    return {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}


def run_tests(python: str, project: Path) -> str:
    """The guide's "pytest": the plugin's own tests against a real server."""
    tests = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True, text=True, timeout=300, cwd=project,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    return tests.stdout


@pytest.mark.skipif(os.name != "posix", reason="venv layout")
def test_a_plugin_written_from_the_guide_installs_and_works(tmp_path):
    files = tutorial_files(GUIDE, {"pyproject.toml", "ami_server_notes.py", "tests/test_notes.py"})
    python, project = build_tutorial(tmp_path, files, "ami-server-notes")
    notes = listed(python, project)["notes"]
    assert notes["status"] == "loaded" and notes["distribution"] == "ami-server-notes"
    assert [a["name"] for a in notes["actions"]] == ["NoteAdd", "NoteList", "NoteSave"]
    assert re.search(r"\b4 passed\b", run_tests(python, project))


@pytest.mark.skipif(os.name != "posix", reason="venv layout")
def test_a_backend_written_from_the_auth_guide_installs_and_works(tmp_path):
    guide = ROOT / "docs" / "auth-backends.md"
    files = tutorial_files(guide, {"pyproject.toml", "ami_server_userfile.py", "tests/test_userfile.py"})
    python, project = build_tutorial(tmp_path, files, "ami-server-userfile")
    userfile = listed(python, project)["userfile"]
    assert userfile["status"] == "loaded" and userfile["distribution"] == "ami-server-userfile"
    assert userfile["hooks"] == ["authenticate"] and userfile["target"] == "ami_server_userfile:plugin"
    assert re.search(r"\b4 passed\b", run_tests(python, project))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        text = guide_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        GUIDE.write_text(text[:start] + hook_reference() + text[end:], encoding="utf-8")
        print(f"updated {GUIDE}")
    else:
        print(textwrap.dedent(__doc__))
