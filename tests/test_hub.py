"""Hub: save -> publish -> load round trips, verification, downloads from a real local HTTP server, the cache lock."""

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import attnzoo
from attnzoo import hub

tiny_models = pytest.importorskip("tiny_models")


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(folder))
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    return folder


def _saved_tiny(tmp_path, name="src", **kwargs):
    torch.manual_seed(0)
    model = attnzoo.create_model("aztest_tinynet", **kwargs).eval()
    return model, attnzoo.save_pretrained(model, tmp_path / name, metrics={"top1": 12.5}, dataset="fashion-mnist")


def _published_tiny(tmp_path, hub_dir, tag="unit"):
    model, src = _saved_tiny(tmp_path)
    record = hub.publish(f"aztest_tinynet.{tag}", src, hub_dir)
    return model, record


def test_save_publish_load_round_trip(tmp_path, hub_dir):
    model, record = _published_tiny(tmp_path, hub_dir)
    x = torch.randn(2, 1, 28, 28)
    manifest = json.loads((hub_dir / "manifest.json").read_text())["checkpoints"]["aztest_tinynet.unit"]
    assert manifest["sha256"] == hub.sha256_of(hub_dir / manifest["file"])
    assert manifest["size"] == (hub_dir / manifest["file"]).stat().st_size
    assert manifest["metrics"] == {"top1": 12.5} and manifest["eval_command"] == "attnzoo eval aztest_tinynet.unit"
    assert manifest["pretrained_cfg"]["num_classes"] == 10

    ours = attnzoo.create_model("aztest_tinynet.unit", pretrained=True).eval()
    theirs = timm.create_model("aztest_tinynet.unit", pretrained=True).eval()
    torch.testing.assert_close(ours(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(theirs(x), model(x), rtol=0, atol=0)
    assert "aztest_tinynet.unit" in attnzoo.list_pretrained("aztest_*")
    assert "aztest_tinynet.unit" in attnzoo.list_models("aztest_*", pretrained=True, task="classification")


def test_republishing_keeps_the_hub_folders_model_card_and_says_so(tmp_path, hub_dir):
    _, src = _saved_tiny(tmp_path)
    hub.publish("aztest_tinynet.unit", src, hub_dir)
    card = hub_dir / "aztest_tinynet.unit" / "README.md"
    assert card.read_text() == (src / "README.md").read_text()  # the first publish copies save_pretrained's card
    card.write_text("# written for this checkpoint: data, recipe, baseline\n")
    _, retrained = _saved_tiny(tmp_path, name="retrained")
    with pytest.warns(UserWarning, match=r"kept the model card .*README.md.*'top1': 12.5"):
        hub.publish("aztest_tinynet.unit", retrained, hub_dir)
    assert card.read_text() == "# written for this checkpoint: data, recipe, baseline\n"


def test_restore_from_directory_and_timm_local_dir(tmp_path, hub_dir):
    model, src = _saved_tiny(tmp_path, width=6)
    x = torch.randn(1, 1, 28, 28)
    config = json.loads((src / "config.json").read_text())
    assert config["architecture"] == "aztest_tinynet" and config["model_args"] == {"width": 6}
    assert "library_name: attnzoo" in (src / "README.md").read_text()
    torch.testing.assert_close(attnzoo.from_pretrained(src).eval()(x), model(x), rtol=0, atol=0)
    timm_model = timm.create_model(f"local-dir:{src}", pretrained=True).eval()
    torch.testing.assert_close(timm_model(x), model(x), rtol=0, atol=0)


def test_num_classes_and_in_chans_adaptation(tmp_path, hub_dir):
    model, _ = _published_tiny(tmp_path, hub_dir)
    five = attnzoo.create_model("aztest_tinynet.unit", pretrained=True, num_classes=5)
    assert five.fc.out_features == 5
    torch.testing.assert_close(five.stem.weight, model.stem.weight)
    rgb = attnzoo.create_model("aztest_tinynet.unit", pretrained=True, in_chans=3)
    # timm's adapt_input_conv: one input channel repeated to 3 and rescaled by 1/3
    torch.testing.assert_close(rgb.stem.weight, model.stem.weight.repeat(1, 3, 1, 1) / 3)


def test_explicit_file_through_timm_overlay(tmp_path, hub_dir):
    model, src = _saved_tiny(tmp_path)
    loaded = timm.create_model("aztest_tinynet", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(src / "model.safetensors")))
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight)


def test_tampered_embedded_checkpoint_is_refused(tmp_path, hub_dir):
    _, record = _published_tiny(tmp_path, hub_dir)
    path = hub_dir / record.file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(hub.ChecksumError, match=f"expected {record.sha256}, got {hub.sha256_of(path)}"):
        attnzoo.create_model("aztest_tinynet.unit", pretrained=True)


def test_tampered_cache_file_is_deleted(tmp_path, hub_dir):
    _, record = _published_tiny(tmp_path, hub_dir)
    remote = hub.CheckpointRecord(**{**record.to_manifest(), "url": "https://example.invalid/x.safetensors"})
    cached = hub.cache_root() / remote.name / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the published bytes")
    with pytest.raises(hub.ChecksumError, match="deleted from the cache"):
        hub.resolve_file(remote)
    assert not cached.exists()


@pytest.mark.parametrize("content", [b"", b"definitely not safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a"])
def test_unreadable_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        hub.load_state_dict(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    _, src = _saved_tiny(tmp_path)
    path = src / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        hub.load_state_dict(path)


def test_pickle_needs_opt_in(tmp_path):
    model = attnzoo.create_model("aztest_tinygnn")
    path = tmp_path / "legacy.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=path)
    loaded = attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=path, allow_pickle=True)
    torch.testing.assert_close(loaded.lin1.weight, model.lin1.weight)


def test_wrong_shaped_checkpoint_lists_keys(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file(attnzoo.create_model("aztest_tinygnn", hidden_channels=16).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches \(3\): lin1.bias.*lin1.weight.*lin2.weight"):
        attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=path)
    extra = attnzoo.create_model("aztest_tinygnn").state_dict() | {"lin3.weight": torch.zeros(1)}
    save_file(extra, path)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): lin3.weight"):
        attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=path)


def test_non_classification_round_trip(tmp_path, hub_dir):
    torch.manual_seed(1)
    model = attnzoo.create_model("aztest_tinygnn", hidden_channels=5)
    src = attnzoo.save_pretrained(model, tmp_path / "gnn", metrics={"acc": 90.0})
    hub.publish("aztest_tinygnn.karate", src, hub_dir)
    loaded = attnzoo.create_model("aztest_tinygnn.karate", pretrained=True)
    assert loaded.lin1.out_features == 5  # the record's model kwargs rebuild the saved width
    torch.testing.assert_close(loaded.lin2.weight, model.lin2.weight, rtol=0, atol=0)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match="Did you mean: aztest_tinynet"):
        attnzoo.create_model("aztest_tinynett")
    with pytest.raises(ValueError, match="unknown tag 'nope' for 'aztest_tinynet'; its tags are: untrained"):
        attnzoo.create_model("aztest_tinynet.nope", pretrained=True)
    with pytest.raises(ValueError, match="no published checkpoint for 'aztest_tinynet.untrained'"):
        attnzoo.create_model("aztest_tinynet.untrained", pretrained=True)


def test_no_timm_entrypoint_is_replaced():
    code = (
        "import timm\n"
        "before = {n: timm.models.model_entrypoint(n) for n in timm.list_models()}\n"
        "import attnzoo\n"
        "changed = [n for n, f in before.items() if timm.models.model_entrypoint(n) is not f]\n"
        "ours = attnzoo.list_models(task='classification')\n"
        "assert not changed, changed\n"
        "assert not set(ours) & set(before), set(ours) & set(before)\n"
        "assert all(timm.is_model(n) for n in ours)\n"
        "print(len(before), len(ours))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------------------------ downloads


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files in small, slow chunks so concurrent downloads really overlap; counts the GETs."""

    gets: list[str] = []

    def do_GET(self):
        self.gets.append(self.path)
        super().do_GET()

    def copyfile(self, source, outputfile):
        for chunk in iter(lambda: source.read(256), b""):
            outputfile.write(chunk)
            time.sleep(0.002)

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, hub_dir, monkeypatch):
    """A published checkpoint removed from the hub folder and served by http.server on 127.0.0.1 instead."""
    _, record = _published_tiny(tmp_path, hub_dir)
    www = tmp_path / "www"
    www.mkdir()
    shutil.move(hub_dir / record.file, www / "tiny.safetensors")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_SlowHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/tiny.safetensors"
    manifest = json.loads((hub_dir / "manifest.json").read_text())
    manifest["checkpoints"][record.name]["url"] = url
    (hub_dir / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ATTNZOO_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    _SlowHandler.gets.clear()
    yield server
    server.shutdown()


def test_download_verify_cache_then_offline(served, monkeypatch):
    model = attnzoo.create_model("aztest_tinynet.unit", pretrained=True)
    cached = hub.cache_root() / "aztest_tinynet.unit" / "model.safetensors"
    assert cached.is_file()
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    served.shutdown()
    assert _SlowHandler.gets == ["/tiny.safetensors"]
    monkeypatch.setenv("ATTNZOO_OFFLINE", "1")
    again = attnzoo.create_model("aztest_tinynet.unit", pretrained=True)
    torch.testing.assert_close(again.fc.weight, model.fc.weight, rtol=0, atol=0)


def test_offline_with_empty_cache_explains(served, monkeypatch):
    monkeypatch.setenv("ATTNZOO_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'aztest_tinynet.unit'.*downloads are\s+disabled.*To get it"):
        attnzoo.create_model("aztest_tinynet.unit", pretrained=True)


def test_concurrent_downloads_leave_one_valid_file(served, hub_dir):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tiny_models; from attnzoo import hub; "
            "print(hub.resolve_file(hub.find_record('aztest_tinynet', 'unit')))")
    tests_dir = str(Path(__file__).resolve().parent)
    procs = [subprocess.Popen([sys.executable, "-c", code, tests_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    folder = Path(paths.pop()).parent
    files = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))
    assert files == ["model.safetensors"]
    assert _SlowHandler.gets == ["/tiny.safetensors"]  # the second process waited on the lock, then reused the file
    record = hub.find_record("aztest_tinynet", "unit")
    assert hub.sha256_of(folder / "model.safetensors") == record.sha256
