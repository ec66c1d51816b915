"""Class 8, the hub is a leaf: it imports nothing from attnzoo.zoo (nor any other attnzoo module), reads no model
attribute, and works on plain state dicts; the task list is defined once."""

import ast
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo import cli, hub
from attnzoo import zoo as _registry

PACKAGE = Path(attnzoo.__file__).parent


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield from ((node.module, alias.name) for alias in node.names)


def test_hub_imports_no_other_attnzoo_module():
    ours = [(module, name) for module, name in _imports(PACKAGE / "hub.py") if module.split(".")[0] == "attnzoo"]
    # the environment settings (a leaf); no zoo, no registry (the User-Agent's version comes from the metadata)
    assert sorted(ours) == [("attnzoo", "settings")]
    assert "attnzoo_config" not in (PACKAGE / "hub.py").read_text()  # the registry's attribute on models


def test_one_list_of_tasks(capsys):
    definitions = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                   for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "TASKS" for t in node.targets)]
    assert definitions == ["hub.py"]
    assert _registry.TASKS is hub.TASKS
    with pytest.raises(SystemExit):
        cli.main(["list", "--task", "nope"])
    choices = capsys.readouterr().err.split("choose from")[1]
    assert [t for t in hub.TASKS if t in choices] == list(hub.TASKS)


def test_hub_writes_and_reads_a_folder_from_plain_state_dicts(tmp_path):
    # no model, not even a registered architecture: the hub only knows files, hashes and the schema
    state = {"w": torch.arange(6.0).view(2, 3), "steps": torch.tensor(3)}
    config = {"architecture": "not_registered_anywhere", "task": "graph", "model_args": {"width": 3}}
    hub.write_pretrained(tmp_path / "plain", state, config)
    read, weights = hub.read_pretrained(tmp_path / "plain")
    assert read == {**config, "sha256": hub.sha256_of(weights)}
    loaded = hub.load_state_dict(weights)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert "pipeline_tag: graph-ml" in (tmp_path / "plain" / "README.md").read_text()
