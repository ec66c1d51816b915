"""Fixtures of the hub tests: a user hub and a cache inside the test's temporary folder, a tiny published checkpoint."""

import json

import pytest
import torch

import attnzoo
from attnzoo import hub

pytest.importorskip("tiny_models")  # registers aztest_tinynet (classification) and aztest_tinygnn (graph)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty user hub ($ATTNZOO_HUB_DIR) and cache ($ATTNZOO_CACHE), both under tmp_path."""
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(folder))
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    return folder


@pytest.fixture
def saved(tmp_path):
    """(model, folder): an aztest_tinynet written by attnzoo.save_pretrained."""
    torch.manual_seed(0)
    model = attnzoo.create_model("aztest_tinynet").eval()
    return model, attnzoo.save_pretrained(model, tmp_path / "src", metrics={"top1": 12.5}, dataset="fashion-mnist")


@pytest.fixture
def published(hub_dir, saved):
    """The record of aztest_tinynet.unit, published into the user hub."""
    return hub.publish("aztest_tinynet.unit", saved[1], hub_dir)


@pytest.fixture
def edit_manifest(hub_dir):
    """edit(fn): rewrite the user hub's manifest.json as fn(parsed JSON) (fn may return raw str or bytes)."""

    def edit(fn):
        path = hub_dir / "manifest.json"
        data = json.loads(path.read_text()) if path.is_file() else {"format": 1, "checkpoints": {}}
        out = fn(data)
        out = data if out is None else out
        path.write_bytes(out if isinstance(out, bytes) else (out if isinstance(out, str) else json.dumps(out)).encode())
        return path

    return edit
