"""Class 2, containment: malicious manifests and planted symlinks never make the hub read, write or delete outside
its folder (hub folder, cache, publish target, save_pretrained folder)."""

import hashlib
import json
import re
import shutil

import pytest

import attnzoo
from attnzoo import hub

VICTIM = b"a file the hub must never read, overwrite or delete"


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "outside" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


def _intact(victim):
    return victim.is_file() and not victim.is_symlink() and victim.read_bytes() == VICTIM


def test_contained_resolves_and_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "in").symlink_to(root / "sub")
    (root / "out").symlink_to(tmp_path)
    assert hub.contained(root, "sub/x.safetensors") == (root / "sub" / "x.safetensors").resolve()
    assert hub.contained(root, "in/x") == (root / "sub" / "x").resolve()  # a link that stays inside is fine
    for escape in ("../x", "sub/../../x", "out/x", str(tmp_path / "x"), "/etc/passwd"):
        with pytest.raises(hub.UnsafePathError, match=f"{re.escape(repr(escape))} leads outside"):
            hub.contained(root, escape, "file")


@pytest.mark.parametrize("file", ["../outside/model.safetensors", "aztest_tinynet.unit/../../outside/model.safetensors",
                                  "/tmp/model.safetensors", "C:/model.safetensors", "..\\model.safetensors",
                                  "aztest_tinynet.unit/model.txt", "", "./model.safetensors"])
def test_manifest_file_that_traverses_or_is_absolute_is_refused(hub_dir, published, edit_manifest, victim, file):
    def point(data):
        data["checkpoints"]["aztest_tinynet.unit"]["file"] = file

    path = edit_manifest(point)
    with pytest.raises(hub.ManifestError, match=rf"{re.escape(str(path))}: record 'aztest_tinynet.unit': "
                                                r"field 'file' must be a relative path inside the hub folder"):
        attnzoo.create_model("aztest_tinynet.unit", pretrained=True)
    assert _intact(victim)


def test_manifest_file_symlinked_out_of_the_hub_is_not_read(hub_dir, published, edit_manifest, tmp_path):
    # the outside file is the genuine checkpoint (matching sha256): only containment can refuse it
    outside = tmp_path / "outside.safetensors"
    shutil.move(hub_dir / published.file, outside)
    (hub_dir / published.file).symlink_to(outside)
    with pytest.raises(hub.UnsafePathError, match="file of checkpoint 'aztest_tinynet.unit'.*leads outside"):
        attnzoo.create_model("aztest_tinynet.unit", pretrained=True)
    # a symlinked checkpoint folder too
    shutil.rmtree(hub_dir / "aztest_tinynet.unit")
    (tmp_path / "elsewhere").mkdir()
    shutil.move(outside, tmp_path / "elsewhere" / "model.safetensors")
    (hub_dir / "aztest_tinynet.unit").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(hub.UnsafePathError, match="leads outside"):
        attnzoo.create_model("aztest_tinynet.unit", pretrained=True)


def test_manifest_symlinked_out_of_the_hub_is_refused(hub_dir, published, tmp_path):
    shutil.move(hub_dir / "manifest.json", tmp_path / "manifest.json")
    (hub_dir / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(hub.UnsafePathError, match="manifest 'manifest.json' leads outside"):
        hub.find_record("aztest_tinynet", "unit")


def _remote(record, url="https://example.invalid/model.safetensors"):
    return hub.CheckpointRecord(**{**record.to_manifest(), "url": url})


def test_cache_file_symlinked_outside_is_neither_read_nor_deleted(hub_dir, published, victim):
    # the old hub deleted whatever a mismatching cache path led to
    cached = hub.cache_root() / "aztest_tinynet.unit" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(victim)
    with pytest.raises(hub.UnsafePathError, match="cache file.*leads outside"):
        hub.resolve_file(_remote(published))
    assert _intact(victim)


def test_cache_folder_symlinked_outside_is_refused(hub_dir, published, victim):
    hub.cache_root().mkdir()
    (hub.cache_root() / "aztest_tinynet.unit").symlink_to(victim.parent)
    with pytest.raises(hub.UnsafePathError, match="cache folder 'aztest_tinynet.unit' leads outside"):
        hub.resolve_file(_remote(published))
    assert _intact(victim) and sorted(victim.parent.iterdir()) == [victim]


def test_mismatching_cache_file_inside_is_deleted_but_only_it(hub_dir, published, victim):
    cached = hub.cache_root() / "aztest_tinynet.unit" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stale")
    with pytest.raises(hub.ChecksumError, match="deleted from the cache"):
        hub.resolve_file(_remote(published))
    assert not cached.exists() and cached.parent.is_dir() and _intact(victim)


def test_stale_temp_symlink_is_unlinked_not_followed(hub_dir, published, victim):
    folder = hub.cache_root() / "aztest_tinynet.unit"
    folder.mkdir(parents=True)
    link = folder / ".model.safetensors.999999999.abc123.part"  # the pid of no process
    link.symlink_to(victim.parent, target_is_directory=True)
    assert hub.remove_stale_temps(folder, "model.safetensors", hub.cache_root()) == [link]
    assert not link.is_symlink() and _intact(victim)


def test_publish_never_writes_through_a_planted_symlink(hub_dir, saved, victim, tmp_path):
    (hub_dir / "aztest_tinynet.unit").mkdir()
    (hub_dir / "aztest_tinynet.unit" / "model.safetensors").symlink_to(victim)
    with pytest.raises(hub.UnsafePathError, match="published file 'aztest_tinynet.unit/model.safetensors' leads"):
        hub.publish("aztest_tinynet.unit", saved[1], hub_dir)
    assert _intact(victim) and not (hub_dir / "manifest.json").exists()
    (tmp_path / "elsewhere").mkdir()
    (hub_dir / "aztest_tinynet.two").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(hub.UnsafePathError, match="checkpoint folder 'aztest_tinynet.two' leads outside"):
        hub.publish("aztest_tinynet.two", saved[1], hub_dir)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_save_pretrained_and_from_pretrained_stay_in_their_folder(tmp_path, saved, victim):
    model, src = saved
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").symlink_to(victim)
    with pytest.raises(hub.UnsafePathError, match="output file 'model.safetensors' leads outside"):
        attnzoo.save_pretrained(model, out)
    assert _intact(victim)
    # a save_pretrained folder whose weights link elsewhere (with the config's sha256 pointing at them)
    config = json.loads((src / "config.json").read_text())
    config["sha256"] = hashlib.sha256(VICTIM).hexdigest()
    (src / "config.json").write_text(json.dumps(config))
    (src / "model.safetensors").unlink()
    (src / "model.safetensors").symlink_to(victim)
    with pytest.raises(hub.UnsafePathError, match="weights file .* leads outside"):
        attnzoo.from_pretrained(src)
