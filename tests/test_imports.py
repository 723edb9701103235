"""The shape of `ibdc_cli`'s imports: no cycle, and building blocks never import recipes.

Recipes are the jobs people run (the CLI and the plain functions behind its commands); building blocks
are everything they are made of (losses, space maps, stores, methods, encoders, data, the evaluation
protocols, pictures, tables, runtime). A building block that imports a recipe, or two modules that
import each other, is how the old evaluate / convnet_eval / retrieval circle began.

The graph is read from the source with `ast`, so importing nothing: every `import` and `from ... import`
counts, at the top of a module or inside a function. `from package import name` is an edge to
`package.name` when that is a module of ibdc_cli, else to `package`. Importing `a.b.c` is an edge to
`a.b.c` only: Python runs the packages `a` and `a.b` first too, but a package's `__init__` importing its
own members is not a dependency of the members on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ibdc_cli"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# The jobs, each read top to bottom; they may import building blocks and each other.
RECIPES = {
    "ibdc_cli",  # the package: its lazy attributes are the Python API (building blocks read ibdc_cli.version)
    "ibdc_cli.api",  # condense_embeddings, evaluate_set: the Python API on tensors
    "ibdc_cli.__main__",
    "ibdc_cli.cli",
    "ibdc_cli.condense",
    "ibdc_cli.embed",
    "ibdc_cli.bind",
    "ibdc_cli.demo",
    "ibdc_cli.evaluation",  # the runner `evaluate`; its members (protocol, heads, ...) are building blocks
}

# Edges that break the rules today in modules other helpers are changing; each names its fix. Empty:
# keep it so, or name the module that removes the edge.
KNOWN_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """`{imported ibdc_cli module: first line}` of one module, top-level and function-local imports both."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..store import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            if target in known and target != name:
                found.setdefault(target, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of `graph` as `[a, b, ..., a]`, or None (depth-first search, in name order)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if (node, target) in KNOWN_EDGES:
                continue
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_whole():
    """The reader sees what matters: function-local imports, `from package import module`, the evaluation
    members and the recipes it is about."""
    graph = import_graph()
    assert RECIPES <= set(graph), RECIPES - set(graph)
    assert "ibdc_cli.evaluation.protocol" in graph["ibdc_cli.evaluation.heads"]
    assert "ibdc_cli.methods.clusters" in graph["ibdc_cli.condense"]  # a local import inside condense()
    assert "ibdc_cli.losses" in graph["ibdc_cli.condense"]  # from ibdc_cli import losses
    assert "ibdc_cli.api" in graph["ibdc_cli"]  # the package's lazy `__getattr__`
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        where = ", ".join(f"{a} line {graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:], strict=False))
        raise AssertionError(f"import cycle {' -> '.join(cycle)} ({where})")


def test_building_blocks_never_import_recipes():
    graph = import_graph()
    offending = [
        f"{block} line {line} imports the recipe {target}"
        for block, targets in sorted(graph.items())
        if block not in RECIPES
        for target, line in sorted(targets.items())
        if target in RECIPES and (block, target) not in KNOWN_EDGES
    ]
    assert not offending, "building blocks import recipes:\n" + "\n".join(offending)
