"""Class 4, manifests and config.json: one schema, errors naming the file, the record and the field; duplicates and
mis-keyed records refused; unknown fields tolerated with a warning; a broken user hub never breaks `import attnzoo`."""

import json
import re
import subprocess
import sys
import warnings

import pytest

import attnzoo
from attnzoo import hub

KEY = "aztest_tinynet.unit"


def _set(field, value):
    def edit(data):
        data["checkpoints"][KEY][field] = value

    return edit


def _drop(field):
    def edit(data):
        del data["checkpoints"][KEY][field]

    return edit


RECORD_CASES = [
    ("size", _set("size", "abc"), "must be the file's size in bytes, an int > 0, got 'abc'"),
    ("size", _set("size", True), "got True"),
    ("size", _set("size", -3), "got -3"),
    ("sha256", _set("sha256", "ABC"), "must be a sha256: 64 lowercase hexadecimal digits"),
    ("sha256", _drop("sha256"), "is missing"),
    ("task", _set("task", "detection"), "must be one of classification, segmentation, graph, bev"),
    ("arch", _set("arch", 7), "must be an architecture name"),
    ("metrics", _set("metrics", {"top1": "high"}), "must be an object of metric name -> finite number"),
    ("model_kwargs", _set("model_kwargs", [1, 2]), "must be a JSON object"),
    ("url", _set("url", "file:///etc/passwd"), "must be null or an https:// URL"),
    ("url", _set("url", "http://example.com/model.safetensors"), "http:// only from a loopback host"),
    ("url", _set("url", "ftp://example.com/x"), "https://"),
    ("hf_hub_id", _set("hf_hub_id", "not a repo"), "must be null or a Hugging Face Hub repo id"),
    ("hf_revision", _set("hf_hub_id", "org/repo"), "is missing; a Hugging Face source needs the commit"),
    ("hf_revision", _set("hf_revision", "main"), "must be null or the 40-hex commit"),
]


@pytest.mark.parametrize("field, edit, message", RECORD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(RECORD_CASES)])
def test_malformed_record_names_file_record_and_field(published, edit_manifest, field, edit, message):
    path = edit_manifest(edit)
    expected = rf"{re.escape(str(path))}: record '{KEY}': field '{field}' .*{re.escape(message)}"
    with pytest.raises(hub.ManifestError, match=expected):
        attnzoo.create_model(KEY, pretrained=True)
    with pytest.raises(hub.ManifestError, match=expected):
        attnzoo.list_pretrained()


MANIFEST_CASES = [
    ("not json", "{\"format\": 1, \"checkpoints\": {", "is not valid JSON"),
    ("not utf-8", b"\xff\xfe{}", "is not UTF-8 text"),
    ("a list", "[1, 2]", "expected a JSON object, got [1, 2]"),
    ("no checkpoints", "{\"format\": 1}", "field 'checkpoints' is missing"),
    ("newer format", "{\"format\": 2, \"checkpoints\": {}}", "field 'format' must be the manifest format, 1"),
    ("record not an object", "{\"format\": 1, \"checkpoints\": {\"a.b\": 3}}", "record 'a.b': expected a JSON object"),
]


@pytest.mark.parametrize("label, text, message", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_malformed_manifest_names_the_file(hub_dir, edit_manifest, label, text, message):
    path = edit_manifest(lambda data: text)
    with pytest.raises(hub.ManifestError, match=rf"{re.escape(str(path))}.*{re.escape(message)}"):
        hub.all_records()


def test_duplicate_records_are_refused(published, edit_manifest):
    def duplicate(data):
        entry = json.dumps(data["checkpoints"][KEY])
        return f'{{"format": 1, "checkpoints": {{"{KEY}": {entry}, "{KEY}": {entry}}}}}'

    path = edit_manifest(duplicate)
    with pytest.raises(hub.ManifestError, match=rf"{re.escape(str(path))}: duplicate key '{KEY}'"):
        hub.find_record("aztest_tinynet", "unit")


def test_a_record_keyed_by_another_name_is_refused(published, edit_manifest):
    path = edit_manifest(lambda data: data["checkpoints"].__setitem__("aztest_tinynet.other",
                                                                      data["checkpoints"].pop(KEY)))
    with pytest.raises(hub.ManifestError, match=rf"{re.escape(str(path))}: record 'aztest_tinynet.other': the key "
                                                r"must be its arch.tag, aztest_tinynet.unit"):
        hub.find_record("aztest_tinynet", "unit")


def test_unknown_fields_are_tolerated_with_a_warning(tmp_path, hub_dir, published, edit_manifest):
    def newer(data):
        data["checkpoints"][KEY]["signature"] = "from a newer attnzoo"
        data["mirrors"] = []

    edit_manifest(newer)
    with pytest.warns(hub.HubWarning, match="unknown field") as record:
        model = attnzoo.create_model(KEY, pretrained=True)
    messages = {str(w.message) for w in record}
    assert any(f"record '{KEY}': unknown field(s) 'signature' ignored" in m for m in messages), messages
    assert any("manifest.json: unknown field(s) 'mirrors' ignored" in m for m in messages), messages
    assert model.fc.out_features == 10
    # a publish keeps the newer fields it does not know
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hub.HubWarning)
        src = attnzoo.save_pretrained(attnzoo.create_model("aztest_tinynet"), tmp_path / "src2")
        hub.publish("aztest_tinynet.two", src, hub_dir)
    entries = json.loads((hub_dir / "manifest.json").read_text())["checkpoints"]
    assert entries[KEY]["signature"] == "from a newer attnzoo" and "aztest_tinynet.two" in entries


CONFIG_CASES = [
    ("task", lambda c: c.pop("task"), "field 'task' is missing"),
    ("task", lambda c: c.update(task="regression"), "field 'task' must be one of"),
    ("architecture", lambda c: c.update(architecture="../x"), "field 'architecture' must be an architecture name"),
    ("model_args", lambda c: c.update(model_args="width=3"), "field 'model_args' must be a JSON object"),
    ("sha256", lambda c: c.update(sha256=None), "field 'sha256' must be a sha256"),
    ("num_classes", lambda c: c.update(num_classes=-1), "field 'num_classes' must be null or an int >= 0"),
]


@pytest.mark.parametrize("field, edit, message", CONFIG_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIG_CASES)])
def test_malformed_config_json_names_file_and_field(hub_dir, saved, field, edit, message):
    path = saved[1] / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    for call in (lambda: attnzoo.from_pretrained(saved[1]), lambda: hub.publish(KEY, saved[1], hub_dir)):
        with pytest.raises(hub.ManifestError, match=rf"{re.escape(str(path.resolve()))}: {re.escape(message)}"):
            call()


def test_config_json_duplicates_and_task_mismatch(saved):
    path = saved[1] / "config.json"
    text = path.read_text()
    path.write_text(text.replace('"task": "classification"', '"task": "classification", "task": "graph"'))
    with pytest.raises(hub.ManifestError, match="duplicate key 'task'"):
        attnzoo.from_pretrained(saved[1])
    path.write_text(text.replace('"task": "classification"', '"task": "graph"'))
    with pytest.raises(ValueError, match="field 'task' is 'graph', but 'aztest_tinynet' is a classification model"):
        attnzoo.from_pretrained(saved[1])


def test_a_malformed_user_hub_fails_when_used_not_at_import(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": 1, "checkpoints": {"ela_resnet18.x": {"arch": "ela_resnet18"}}}')
    code = ("import attnzoo\n"
            "model = attnzoo.create_model('ela_resnet18', num_classes=3)\n"
            "try:\n"
            "    attnzoo.list_pretrained()\n"
            "except ValueError as err:\n"
            "    print('ERROR', err)\n")
    env = {"ATTNZOO_HUB_DIR": str(bad), "ATTNZOO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"ERROR {bad / 'manifest.json'}: record 'ela_resnet18.x': field 'tag' is missing")
