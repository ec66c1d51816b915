"""The attnzoo console script: list, info and publish through main(argv), as a user would type them."""

import json

import pytest

import attnzoo
from attnzoo.cli import main

tiny_models = pytest.importorskip("tiny_models")


def test_list_filters_by_pattern_and_task(capsys):
    assert main(["list", "aztest_*", "--task", "graph"]) == 0
    assert capsys.readouterr().out.split() == ["aztest_tinygnn"]


def test_publish_then_info_and_list_pretrained(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    src = attnzoo.save_pretrained(attnzoo.create_model("aztest_tinynet"), tmp_path / "src", metrics={"top1": 33.0})
    assert main(["publish", "aztest_tinynet.cli", "--from", str(src), "--to", str(tmp_path / "hub")]) == 0
    assert "published aztest_tinynet.cli: sha256 " in capsys.readouterr().out
    assert main(["list", "aztest_*", "--pretrained"]) == 0
    assert capsys.readouterr().out.split() == ["aztest_tinynet.cli"]
    assert main(["info", "aztest_tinynet.cli"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == sum(p.numel() for p in attnzoo.create_model("aztest_tinynet").parameters())
    assert info["input_size"] == [1, 28, 28]
    assert info["checkpoint"]["metrics"] == {"top1": 33.0}
    assert info["checkpoint"]["sources"][0].startswith("embedded:")


def test_info_describes_the_published_checkpoint_not_the_base_config(capsys):
    # the embedded azhalonet_h0.fmnist: built with its record's kwargs, so size and input are the checkpoint's
    assert main(["info", "azhalonet_h0.fmnist"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 749_326 and info["input_size"] == [1, 28, 28]
    assert info["checkpoint"]["model_kwargs"]["width_multiplier"] == 0.375


def test_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["info", "aztest_tinynett"]) == 2
    assert "Did you mean: aztest_tinynet" in capsys.readouterr().err
    assert main(["publish", "no_tag", "--from", ".", "--to", "."]) == 2
    assert "'arch.tag'" in capsys.readouterr().err
