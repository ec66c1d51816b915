"""The attnzoo console script: list, info and publish through main(argv), as a user would type them."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import attnzoo
from attnzoo.cli import main
from attnzoo.profiling import count_macs

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
    (tmp_path / "hub" / "aztest_tinynet.cli" / "README.md").write_text("# hand-written card\n")
    assert main(["publish", "aztest_tinynet.cli", "--from", str(src), "--to", str(tmp_path / "hub")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("attnzoo publish: warning: kept the model card ")  # one line, no source
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
    # MACs at that input: the modules (ptflops convention) plus the halo attention FlopCounterMode sees in the op
    model = attnzoo.create_model("azhalonet_h0", **info["checkpoint"]["model_kwargs"]).eval()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    halo = counter.get_flop_counts()["Global"][torch.ops.attnzoo.halo_attention] // 2
    assert halo > 0 and info["macs"] == count_macs(model, x) + halo


def test_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["info", "aztest_tinynett"]) == 2
    assert "Did you mean: aztest_tinynet" in capsys.readouterr().err
    assert main(["publish", "no_tag", "--from", ".", "--to", "."]) == 2
    assert "'arch.tag'" in capsys.readouterr().err


@pytest.fixture
def user_hub(tmp_path, monkeypatch):
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(folder))
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    return folder


def _cli_cases(tmp_path, hub_dir):
    """(argv, what the error line says) for failures a user causes; built on a saved tiny checkpoint."""
    src = attnzoo.save_pretrained(attnzoo.create_model("aztest_tinynet"), tmp_path / "src")
    no_task = tmp_path / "no_task"
    no_task.mkdir()
    for item in ("model.safetensors", "README.md"):
        (no_task / item).write_bytes((src / item).read_bytes())
    config = json.loads((src / "config.json").read_text())
    del config["task"]
    (no_task / "config.json").write_text(json.dumps(config))
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "a_file").write_text("")
    publish = ["publish", "aztest_tinynet.cli", "--from", str(src), "--to"]
    return [
        (["info", ""], "model name must be 'arch' or 'arch.tag', got ''"),
        (["info", "ela_resnet18.nope"], "unknown tag 'nope' for 'ela_resnet18'; its tags are: untrained, fmnist"),
        (["info", "x/../y"], "arch 'x/' in model name 'x/../y' does not match"),
        (["viz", "aztest_tinynet", str(tmp_path / "notes.png"), "--out", str(tmp_path / "o.png")],
         "cannot identify image file"),
        (["viz", "aztest_tinynet", str(tmp_path / "missing.png")], "is neither a file nor fmnist:INDEX"),
        (["viz", "aztest_tinynet", "fmnist:many"], "invalid literal"),
        (publish + [str(tmp_path / "a_file")], "publish target"),
        (publish + ["hf-hub:org/repo"], "publishing to hf-hub:org/repo needs a network"),
        (publish + ["hf-hub:not a repo"], "does not name a Hugging Face Hub repo id"),
        (publish + [str(hub_dir), "--url", "http://example.com/m.safetensors"], "field 'url' must be null or an"),
        (["publish", "aztest_tinynet.cli", "--from", str(no_task), "--to", str(hub_dir)], "field 'task' is missing"),
        (["publish", "aztest_tinynet.cli", "--from", str(tmp_path / "none"), "--to", str(hub_dir)],
         "is not a folder written by attnzoo.save_pretrained"),
        (["eval", "aztest_tinynet.nope"], "no published checkpoint for 'aztest_tinynet.nope'"),
    ]


def test_user_errors_are_one_error_line_and_exit_code_2(tmp_path, user_hub, capsys):
    cases = _cli_cases(tmp_path, user_hub)
    capsys.readouterr()
    for argv, says in cases:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and err.startswith(f"attnzoo {argv[0]}: error: "), (argv, err)
        assert says in err, (argv, err)
        assert out == "", (argv, out)
    assert not (user_hub / "manifest.json").exists()


def test_a_malformed_user_hub_is_an_error_line_when_used(user_hub, capsys):
    (user_hub / "manifest.json").write_text('{"format": 1, "checkpoints": {"a.b": {"arch": "a", "size": "abc"}}}')
    assert main(["list", "aztest_*"]) == 0  # not used: listing architectures reads no manifest
    capsys.readouterr()
    assert main(["list", "--pretrained"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnzoo list: error: {user_hub / 'manifest.json'}: record 'a.b': field 'tag' is missing")


def test_console_script_prints_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "attnzoo.cli", "info", ""], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == ["attnzoo info: error: model name must be 'arch' or 'arch.tag', got ''"]
