"""Scratch environments for tests that drive packages from PyPI (Modal's client, agent
frameworks): one venv per name, made once per user and reused between runs, with this
checkout of hutch installed into it as a user would install it (a wheel, with its
``hutch-as-modal.pth``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        unreachable = ("No matching distribution", "Could not find a version",
                       "Temporary failure in name resolution", "Network is unreachable")
        if any(text in done.stderr for text in unreachable):
            pytest.skip(f"the package index is unreachable: {done.stderr.strip()[-300:]}")
        raise AssertionError(done.stderr)


def drive(python: Path, source: str, cwd: Path, *args: str, env: dict[str, str] | None = None,
          name: str = "drive.py") -> subprocess.CompletedProcess[str]:
    """Run ``source`` (dedented) as a program with ``python`` in ``cwd`` (with ``args``; the
    test's environment, or ``env``), and check that it ended with 0."""
    program = cwd / name
    program.write_text(textwrap.dedent(source))
    done = subprocess.run([str(python), str(program), *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=dict(os.environ) if env is None else env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def venv(name: str, packages: list[str], *, with_hutch: bool = False) -> Path:
    """The Python of the scratch venv ``name`` holding ``packages`` (and, with
    ``with_hutch``, this checkout of hutch, reinstalled each time: the code under test)."""
    base = Path(os.environ.get("HUTCH_TEST_SCRATCH",
                               Path.home() / ".cache" / "hutch-test-scratch"))
    home = base / name
    python = home / "bin" / "python"
    marker = home / ".packages"
    wanted = "\n".join(sorted(packages))
    if not (python.exists() and marker.exists() and marker.read_text() == wanted):
        base.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--clear", home],
                       check=True)
        _pip(python, *packages)
        marker.write_text(wanted)
    if with_hutch:
        with tempfile.TemporaryDirectory() as tmp:  # (a build leaves build/ behind)
            source = Path(tmp) / "hutch"
            shutil.copytree(ROOT / "hutch", source / "hutch",
                            ignore=shutil.ignore_patterns("__pycache__"))
            for file in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
                         "hutch-as-modal.pth"):
                shutil.copy(ROOT / file, source / file)
            _pip(python, "--force-reinstall", "--no-deps", str(source))
            _pip(python, str(source))  # (its dependencies, where missing)
    return python
