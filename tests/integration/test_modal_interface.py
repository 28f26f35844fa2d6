"""Modal's client interface, compared with hutch's mechanically: every name, member and
parameter of Modal's newest client (from PyPI, in a scratch environment this test makes
and reuses) that concerns sandboxes, images, volumes, secrets and apps must exist in hutch
installed as modal, and hutch may require no parameter Modal lacks.

What hutch still lacks is listed in ``modal_client/known_gaps.txt`` (issue 17): the test fails on
any difference not listed there, and on a listed one that is gone (remove it from the
list), so the list only shrinks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration import scratch

HERE = Path(__file__).parent / "modal_client"
ROOT = Path(__file__).resolve().parents[2]
DUMP = HERE / "dump_interface.py"
GAPS = HERE / "known_gaps.txt"
#: Classes programs construct themselves, whose constructors are compared (the others are
#: made by the library: ``Sandbox.create``, ``Image.debian_slim``...).
CONSTRUCTED = {"App", "Probe"}


def _dump(python: Path | str, *args: str) -> dict[str, dict[str, Any]]:
    done = subprocess.run([str(python), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return result


def _parameters(theirs: list[list[Any]] | None, ours: list[list[Any]] | None,
                where: str) -> list[str]:
    if theirs is None or ours is None:
        return []
    problems = []
    named = {p[0] for p in ours}
    kinds = {p[1] for p in ours}
    for name, kind, _ in theirs:
        if name.startswith("_") or kind == "VAR_KEYWORD":
            continue
        if kind == "VAR_POSITIONAL":
            if "VAR_POSITIONAL" not in kinds:
                problems.append(f"{where}: no *{name}")
        elif name not in named and "VAR_KEYWORD" not in kinds:
            problems.append(f"{where}: no parameter {name}")
    modal_names = {p[0] for p in theirs}
    problems += [f"{where}: requires {name}" for name, kind, has_default in ours
                 if not has_default and kind in ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")
                 and name not in modal_names]
    return problems


def differences(modal: dict[str, dict[str, Any]], hutch: dict[str, dict[str, Any]]
                ) -> set[str]:
    problems: set[str] = set()
    for module, names in modal.items():
        for name, theirs in names.items():
            ours = hutch.get(module, {}).get(name)
            # a class also exported at the top is reported once, under modal.<name>
            where = f"modal.{name}" if module != "modal" and name in modal["modal"] \
                else f"{module}.{name}"
            if ours is None:
                problems.add(f"{where}: missing")
                continue
            if theirs["kind"] == "callable" or name in CONSTRUCTED:
                problems.update(_parameters(theirs.get("parameters"),
                                            ours.get("parameters"), where))
            for member, spec in (theirs.get("members") or {}).items():
                found = (ours.get("members") or {}).get(member)
                if found is None:
                    problems.add(f"{where}.{member}: missing")
                elif spec["kind"] == "callable":
                    problems.update(_parameters(spec["parameters"], found["parameters"],
                                                f"{where}.{member}"))
    return problems


def test_hutch_has_modals_interface(tmp_path: Path) -> None:
    modal = _dump(scratch.venv("modal-client", ["modal"]), str(DUMP))
    assert len(modal["modal.exception"]) >= 45 and "Sandbox" in modal["modal"]  # (read)
    wanted = tmp_path / "wanted.json"
    wanted.write_text(json.dumps({module: sorted(names) for module, names in modal.items()}))
    hutch = _dump(sys.executable, "-m", "hutch.modal", str(DUMP), str(wanted))
    found = differences(modal, hutch)
    known = {line.strip() for line in GAPS.read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert not found - known, "hutch differs from Modal's client:\n" + "\n".join(
        sorted(found - known))
    assert not known - found, "closed gaps still listed in known_gaps.txt:\n" + "\n".join(
        sorted(known - found))
