"""Packaging: `python -m build` gives installable wheels for the core and the plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("example_hello", "example_sqlite_auth", "pbxsim")


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "ami_server", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("ami-server ")


def test_license_and_changelog_are_shipped():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "## 0.1.0" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="venv layout")
def test_built_wheels_install_into_a_fresh_venv_and_run(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    for source in [ROOT] + [ROOT / "plugins" / name for name in PLUGINS]:
        # sdist then a wheel built from it: the sdist must hold everything (plugins/builtin too).
        done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = sorted(p.name for p in dist.glob("*.whl"))
    assert len(wheels) == 1 + len(PLUGINS), wheels
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    core = next(dist.glob("ami_server-*.whl"))
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--find-links", str(dist),
                           f"{core}[metrics]"] + [str(p) for p in dist.glob("ami_server_*.whl")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    listing = subprocess.run([str(venv / "bin" / "ami-server"), "plugins"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    for name in ("logrotate", "example_hello", "sqlite_auth", "pbxsim"):
        assert name in listing.stdout
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 0\n[http]\nport = 0\n[users.a]\nsecret = "long-secret-a"\n')
    check = subprocess.run([python, "-m", "ami_server", "--check-config", "--config", str(config)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)  # not the checkout
    assert check.returncode == 0, check.stderr
    licenses = list((venv / "lib").glob("python3*/site-packages/ami_server-*.dist-info/**/LICENSE*"))
    assert licenses, "the wheel does not carry the LICENSE"
