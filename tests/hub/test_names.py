"""Class 1, names: an arch and a tag match hub.NAME_PATTERN wherever a name enters (factory, publish, manifest)."""

import re

import pytest
import timm

import attnzoo
from attnzoo import hub
from attnzoo.zoo import register_model

BAD_NAMES = ["x/../y", "ela_resnet18.x/../../victim", "ELA_resnet18", "ela_resnet18.a.b", "ela_resnet18.",
             ".fmnist", " ela_resnet18", "ela_resnet18\n", "../ela_resnet18", "a" * 65, "ela-resnet18", "_ela",
             "ela_resnet18.fm nist", "ela_resnet18.\u00e9"]


def test_every_registered_and_published_name_follows_the_pattern():
    pattern = re.compile(hub.NAME_PATTERN)
    names = attnzoo.list_models()
    tags = [r.tag for r in hub.all_records()]
    assert len(names) > 10 and len(tags) >= 10
    assert [n for n in names + tags if not pattern.fullmatch(n)] == []
    assert hub.split_name("ela_resnet18.fmnist") == ("ela_resnet18", "fmnist")
    assert hub.split_name("mkunet_t") == ("mkunet_t", None)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_by_the_factory_with_the_pattern(name):
    arch, _, tag = name.partition(".")
    bad = tag if re.fullmatch(hub.NAME_PATTERN, arch) else arch
    with pytest.raises(ValueError, match=re.escape(hub.NAME_PATTERN)) as info:
        attnzoo.create_model(name, pretrained=True)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("name, error", [(None, TypeError), (3, TypeError), (b"ela_resnet18", TypeError),
                                         ("", ValueError)])
def test_non_strings_and_empty_names(name, error):
    with pytest.raises(error, match="model name"):
        attnzoo.create_model(name)


def test_publish_refuses_a_traversing_name_and_writes_nothing(tmp_path, hub_dir, saved):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in ("aztest_tinynet.x/../../../y", "aztest_tinynet/../../y.z", "aztest_tinynet", "Aztest_tinynet.a"):
        with pytest.raises(ValueError, match=re.escape(hub.NAME_PATTERN) + "|'arch.tag'"):
            hub.publish(name, saved[1], hub_dir)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_manifest_names_are_checked_on_load(hub_dir, published, edit_manifest):
    def rename(data):
        entry = data["checkpoints"].pop("aztest_tinynet.unit")
        data["checkpoints"]["aztest_tinynet.x/../../victim"] = {**entry, "tag": "x/../../victim"}

    path = edit_manifest(rename)
    with pytest.raises(hub.ManifestError, match=rf"{re.escape(str(path))}: record 'aztest_tinynet.x/../../victim': "
                                                r"field 'tag' must be a tag matching"):
        attnzoo.create_model("aztest_tinynet.unit", pretrained=True)


def test_timm_front_door_checks_tags_too(hub_dir):
    with pytest.raises(ValueError, match="tag 'bad-tag'.*does not match"):
        timm.create_model("aztest_tinynet.bad-tag")


def test_register_model_refuses_a_bad_architecture_name():
    def Bad_Name(**kwargs):  # noqa: N802 (the bad name is the point)
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="architecture 'Bad_Name' does not match"):
        register_model("graph")(Bad_Name)
    assert "Bad_Name" not in attnzoo.list_models()


def test_cli_publish_with_traversing_name_is_one_error_line(tmp_path, hub_dir, saved, capsys):
    from attnzoo.cli import main

    before = sorted(tmp_path.rglob("*"))
    assert main(["publish", "aztest_tinynet.x/../../../y", "--from", str(saved[1]), "--to", str(hub_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnzoo publish: error: tag 'x/../../../y'")
    assert sorted(tmp_path.rglob("*")) == before
