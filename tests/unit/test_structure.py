"""The package's structure stays what docs/design.md draws: no import circles, no module
importing a layer above its own, and a daemon that loads nothing of the SDK.

Every import counts, ``TYPE_CHECKING`` blocks and imports inside functions included (a
circle closed by a function-local import is still a circle a newcomer must untangle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Layers, lowest first: a module may import its own layer's modules and lower layers'.
LAYERS = [
    ["hutch.api"],
    ["hutch.imagebuild"],
    ["hutch.engine.errors"],
    ["hutch.engine.kernel"],
    ["hutch.engine.isolation"],
    # the strict HTTP/1.1 request parser: a leaf, for the engine's server and the
    # connect-token proxy of the network layer
    ["hutch.engine.httpd.parse"],
    ["hutch.engine.network"],
    ["hutch.engine.runtime"],
    ["hutch.engine.files"],
    ["hutch.engine.storage"],
    ["hutch.engine.commands"],
    ["hutch.engine.images"],
    ["hutch.engine.lifecycle"],
    ["hutch.engine.httpd"],
    # the TLS gateway for other machines: a process of its own in front of the socket
    ["hutch.engine.remote"],
    ["hutch.engine.routes"],
    ["hutch.engine.serve", "hutch.engine.pause"],
]


def _modules() -> dict[str, Path]:
    found = {}
    for base in ("hutch", "benchmarks"):
        for path in sorted((ROOT / base).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _nodes(tree: ast.AST, runtime_only: bool) -> list[ast.AST]:
    """Every node of ``tree``; ``runtime_only``: not those under ``if TYPE_CHECKING:``."""
    if not runtime_only:
        return list(ast.walk(tree))
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                  "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _imports(name: str, path: Path, known: set[str], runtime_only: bool = False) -> set[str]:
    """The package modules ``name`` imports (``from a import b`` counts ``a.b`` where that
    is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _nodes(ast.parse(path.read_text()), runtime_only):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m in known and m != name}


def _graph(runtime_only: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules), runtime_only)
            for name, path in modules.items()}


def _layer(name: str) -> int | None:
    for number, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return number
    return None


def test_no_import_circles() -> None:
    graph = _graph()
    circles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state[dep] == 1:
                circles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif state[dep] == 0:
                visit(dep, [*path, dep])
        state[node] = 2

    for start in sorted(graph):
        if state[start] == 0:
            visit(start, [start])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_upward_imports() -> None:
    upward = [f"{name} -> {dep}" for name, deps in _graph().items() for dep in sorted(deps)
              if (mine := _layer(name)) is not None and (theirs := _layer(dep)) is not None
              and theirs > mine]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("entry", ["hutch.engine.serve", "hutch.engine.pause"])
def test_the_daemon_loads_nothing_of_the_sdk(entry: str) -> None:
    """What Python loads for the daemon: its imports, theirs, and each one's packages
    (``hutch`` itself among them, which loads the SDK only on first use of its names)."""
    graph, seen, todo = _graph(runtime_only=True), set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph[name])
        parts = name.split(".")
        todo.extend(".".join(parts[:n]) for n in range(1, len(parts)) if ".".join(parts[:n])
                    in graph)
    loaded = sorted(m for m in seen if m.startswith(("hutch.sdk", "hutch.tools")))
    assert "hutch" in seen and not loaded, f"{entry} loads {loaded}"


def test_one_http_client() -> None:
    """The SDK speaks to the engine through ``hutch.sdk.http11`` only: httpx is a test tool
    here, not a dependency (``pyproject.toml`` lists it under ``test``)."""
    users = sorted(name for name, path in _modules().items() if name.startswith("hutch")
                   for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Import | ast.ImportFrom)
                   and any(mod.split(".")[0] == "httpx" for mod in (
                       [a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""])))
    assert not users, f"modules importing httpx: {users}"


def test_no_parameter_shadows_a_function_its_body_calls() -> None:
    """Modal's keywords (``client=``, ``image=``) share names with the SDK's own helpers:
    a parameter named ``client`` in a function that calls the module's ``client()`` calls
    the argument instead."""
    shadowed = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        module_names = {a.asname or a.name.split(".")[0] for n in tree.body
                        if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names} | {
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = node.args
                params = {a.arg for a in [*arguments.posonlyargs, *arguments.args,
                                          *arguments.kwonlyargs]}
                called = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call)
                          and isinstance(c.func, ast.Name)}
                shadowed += [f"{name}.{node.name}: {p}"
                             for p in sorted(params & called & module_names)]
    assert not shadowed, f"parameters that hide the module's function they call: {shadowed}"
