"""attnzoo.settings: one parser for the on/off switches, paths and seconds, used by the hub and the datasets alike."""

import ast
import importlib
import os
from pathlib import Path

import pytest

import attnzoo
from attnzoo import hub, settings

fashion_mnist = importlib.import_module("attnzoo.data.fashion_mnist")  # the package re-exports a function of this name

PACKAGE = Path(attnzoo.__file__).parent


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", "", "  ", "FALSE", " No "])
def test_off_values(monkeypatch, raw):
    monkeypatch.setenv("ATTNZOO_TEST_FLAG", raw)
    assert settings.env_flag("ATTNZOO_TEST_FLAG", default=True) is False


@pytest.mark.parametrize("raw", ["1", "true", "yes", "on", "TRUE", " Yes "])
def test_on_values(monkeypatch, raw):
    monkeypatch.setenv("ATTNZOO_TEST_FLAG", raw)
    assert settings.env_flag("ATTNZOO_TEST_FLAG") is True


def test_unset_flag_takes_the_default(monkeypatch):
    monkeypatch.delenv("ATTNZOO_TEST_FLAG", raising=False)
    assert settings.env_flag("ATTNZOO_TEST_FLAG") is False
    assert settings.env_flag("ATTNZOO_TEST_FLAG", default=True) is True


@pytest.mark.parametrize("raw", ["2", "maybe", "y", "offline", "-1"])
def test_other_values_are_an_error_naming_variable_and_value(monkeypatch, raw):
    monkeypatch.setenv("ATTNZOO_TEST_FLAG", raw)
    with pytest.raises(ValueError, match=rf"\$ATTNZOO_TEST_FLAG={raw!r} is not an on/off value"):
        settings.env_flag("ATTNZOO_TEST_FLAG")


@pytest.mark.parametrize(("attnzoo_offline", "hf_offline", "expected"),
                         [("0", "0", False), ("1", "0", True), ("0", "yes", True), ("false", "", False),
                          (None, None, False), ("on", None, True)])
def test_hub_and_datasets_share_one_offline_meaning(monkeypatch, attnzoo_offline, hf_offline, expected):
    for name, value in (("ATTNZOO_OFFLINE", attnzoo_offline), ("HF_HUB_OFFLINE", hf_offline)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert settings.offline() is expected
    assert hub.offline() is expected


def test_a_malformed_offline_switch_is_reported_even_when_the_other_is_on(monkeypatch):
    monkeypatch.setenv("ATTNZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "sometimes")
    with pytest.raises(ValueError, match=r"\$HF_HUB_OFFLINE='sometimes'"):
        settings.offline()


def test_false_leaves_dataset_downloads_on(monkeypatch, tmp_path):
    # the old dataset reader took any value but '' and '0' as offline, so ATTNZOO_OFFLINE=false turned
    # downloads off there while the hub stayed online; now both read it as off
    monkeypatch.setenv("ATTNZOO_OFFLINE", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "no-debian")
    attempts = []

    def fake_download(root):
        attempts.append(root)
        return "no network in tests"

    monkeypatch.setattr(fashion_mnist, "_torchvision_download", fake_download)
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError):
        fashion_mnist.find_fashion_mnist("test", root=tmp_path / "fmnist")
    with pytest.raises(FileNotFoundError):
        fashion_mnist.find_fashion_mnist("test")  # into datasets/ of the cache the hub uses
    assert attempts == [tmp_path / "fmnist", tmp_path / "cache" / "datasets"]
    monkeypatch.setenv("ATTNZOO_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloads are disabled"):
        fashion_mnist.find_fashion_mnist("test", root=tmp_path / "fmnist")
    assert len(attempts) == 2


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "c"))
    assert settings.cache_dir() == tmp_path / "c" == hub.cache_root()
    monkeypatch.setenv("ATTNZOO_CACHE", "")  # empty is unset, not the working directory
    assert settings.cache_dir() == Path.home() / ".cache" / "attnzoo"
    monkeypatch.delenv("ATTNZOO_CACHE")
    assert settings.cache_dir() == Path.home() / ".cache" / "attnzoo"
    assert hub.cache_root(tmp_path / "override") == tmp_path / "override"


def test_hub_dirs(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("ATTNZOO_HUB_DIR", f"{a}{os.pathsep}{os.pathsep}{b}")
    assert settings.hub_dirs() == [a, b]
    assert hub.hub_dirs()[:2] == [a, b]
    monkeypatch.setenv("ATTNZOO_HUB_DIR", "")
    assert settings.hub_dirs() == []


def test_seconds(monkeypatch):
    monkeypatch.delenv("ATTNZOO_DOWNLOAD_TIMEOUT", raising=False)
    assert settings.download_timeout(60.0) == 60.0
    monkeypatch.setenv("ATTNZOO_DOWNLOAD_TIMEOUT", "2.5")
    assert settings.download_timeout(60.0) == 2.5
    for raw in ("0", "-1", "inf", "nan", "soon"):
        monkeypatch.setenv("ATTNZOO_DOWNLOAD_DEADLINE", raw)
        with pytest.raises(ValueError, match=rf"\$ATTNZOO_DOWNLOAD_DEADLINE={raw!r} must be a positive number"):
            settings.download_deadline(3600.0)


def test_settings_is_a_leaf_and_the_only_reader_of_these_variables():
    tree = ast.parse((PACKAGE / "settings.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] == "attnzoo"]
    names = ("ATTNZOO_OFFLINE", "HF_HUB_OFFLINE", "ATTNZOO_CACHE", "ATTNZOO_HUB_DIR", "ATTNZOO_DOWNLOAD_TIMEOUT",
             "ATTNZOO_DOWNLOAD_DEADLINE")
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                readers.add(str(path.relative_to(PACKAGE)))
    assert readers == {"settings.py"}
