"""The import graph of attnzoo: the library (kernels, layers, zoo, hub, data) imports nothing of the application built
on it (attnzoo.apps, the CLI), every arrow runs the way the layout says, and no attnzoo modules import each other in
a cycle.

Read from the source with ast, so function-level imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnzoo"
LIBRARY = [p for part in ("kernels", "layers", "zoo", "data") for p in (PACKAGE / part).rglob("*.py")]
LIBRARY += [PACKAGE / "hub.py", PACKAGE / "_checks.py"]
APPLICATION = ("attnzoo.apps", "attnzoo.cli")
# part -> the other parts it may import: kernels <- layers <- zoo; hub, settings, _checks and profiling are leaves;
# data builds on the hub (downloads) and the layers (k-NN graphs, as PyG's transforms use torch_geometric.nn);
# the application (apps, cli) and the package's front door may import any library part
LEAVES = ("attnzoo._checks", "attnzoo.settings", "attnzoo.profiling")
ALLOWED = {
    "attnzoo._checks": set(), "attnzoo.settings": set(), "attnzoo.profiling": set(),
    "attnzoo.hub": {"attnzoo.settings"},
    "attnzoo.kernels": {"attnzoo._checks"},
    "attnzoo.layers": {"attnzoo._checks", "attnzoo.kernels", "attnzoo.profiling"},
    "attnzoo.data": {"attnzoo._checks", "attnzoo.settings", "attnzoo.hub", "attnzoo.layers"},
    "attnzoo.zoo": {*LEAVES, "attnzoo.hub", "attnzoo.kernels", "attnzoo.layers", "attnzoo.data"},
}


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name) for every import in ``path``: ``import m`` gives (m, None)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def imported_modules(path: Path) -> set[str]:
    return {n for module, name in imports(path) for n in (module, name and f"{module}.{name}") if n}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_attnzoo_modules(path: Path) -> set[str]:
    """The attnzoo modules ``path`` imports: ``from pkg import sub`` is ``pkg.sub``, ``from pkg import name`` is pkg."""
    names = {f"{module}.{name}" if f"{module}.{name}" in MODULES else module for module, name in imports(path)}
    return names & MODULES.keys()


def import_graph() -> dict[str, set[str]]:
    """attnzoo module -> the other attnzoo modules it imports."""
    return {name: imported_attnzoo_modules(path) - {name} for name, path in MODULES.items()}


def part_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_module_imports_no_application_code(path):
    wrong = sorted(n for n in imported_modules(path) if n.startswith(APPLICATION))
    assert not wrong, f"{path.relative_to(PACKAGE)} imports application code {wrong}: arrows run apps -> library"


def test_the_walk_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from attnzoo.apps import training\n")
    assert "attnzoo.apps.training" in imported_modules(module)


def test_every_import_runs_with_the_arrows():
    wrong = sorted(f"{source} -> {target}" for source, targets in import_graph().items() for target in targets
                   if part_of(source) in ALLOWED and part_of(target) != part_of(source)
                   and part_of(target) not in ALLOWED[part_of(source)])
    assert not wrong, f"imports against the layout's arrows: {wrong}"
    assert set(ALLOWED) | {"attnzoo", "attnzoo.apps", "attnzoo.cli"} >= {part_of(m) for m in MODULES}, \
        "a new top-level part of attnzoo: give it its arrows in ALLOWED"


def test_no_import_cycle_among_attnzoo_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
