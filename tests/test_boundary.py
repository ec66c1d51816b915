"""The library (kernels, layers, zoo, hub, data) imports nothing of the application built on it (attnzoo.apps, the CLI).

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


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_module_imports_no_application_code(path):
    wrong = sorted(n for n in imported_modules(path) if n.startswith(APPLICATION))
    assert not wrong, f"{path.relative_to(PACKAGE)} imports application code {wrong}: arrows run apps -> library"


def test_the_walk_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from attnzoo.apps import training\n")
    assert "attnzoo.apps.training" in imported_modules(module)
