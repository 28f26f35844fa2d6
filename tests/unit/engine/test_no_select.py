"""The engine holds about 3 descriptors per sandbox, past 1023 with a few hundred running:
``select()`` cannot wait on those (Python raises ValueError; C's FD_SET aborts the
process), so no engine module may call it (500 at once failed on ``proctree.exited``
until it polled)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[3] / "hutch" / "engine"


def test_no_engine_module_waits_with_select() -> None:
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("select", "SelectSelector") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("select",
                                                                               "selectors"):
                found.append(f"{path.relative_to(ENGINE)}:{node.lineno}")
    assert not found, f"select() in the engine: {found}"
