"""Manifests, names, contained paths, hashes, the cache and downloads of attnzoo checkpoints.

The hub is a leaf: it knows files, never models. It reads ``manifest.json`` files (validated against one schema),
finds a checkpoint file and proves it is the published one (sha256, size) before anything reads it, and hands
state dicts back; the zoo builds the models and loads them.

Resolution for ``arch.tag`` (first hit wins):

1. an explicit file (``checkpoint_path=``/``pretrained_cfg_overlay=dict(file=...)``), the caller's choice;
2. the hub folder(s): ``$ATTNZOO_HUB_DIR`` (tests, private zoos), then ``weights/`` of a source checkout or
   ``attnzoo/weights`` of an installed wheel;
3. the cache, ``$ATTNZOO_CACHE`` or ``~/.cache/attnzoo``;
4. a download from the record's URL (https; plain http only from a loopback host), else its Hugging Face Hub repo
   at the pinned revision, into a temporary file in the cache folder, checked (size, sha256), then renamed
   atomically under a file lock. Skipped with a clear error when ``ATTNZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` is on.
   The environment settings are read by :mod:`attnzoo.settings`, with the same meaning as for the datasets.

Safety by construction:

- names: an arch and a tag each match :data:`NAME_PATTERN`, checked wherever a name enters;
- paths: every path read, written or deleted is resolved and must lie inside its root (a hub folder, the cache,
  a ``save_pretrained`` folder); symlinks leading out are refused, and nothing outside the cache is ever deleted;
- downloads: the record's size is enforced while streaming; each read waits at most ``$ATTNZOO_DOWNLOAD_TIMEOUT``
  seconds (default 60) and the whole download at most ``$ATTNZOO_DOWNLOAD_DEADLINE`` (default 3600); temporary
  files carry their process id, and those of dead processes are removed under the lock;
- weights: safetensors only unless ``allow_pickle=True`` (then ``torch.load(weights_only=True)``); non-finite
  tensors load only with ``allow_nonfinite=True``; a dtype may differ from the model's only floating to floating.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import ipaddress
import json
import math
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
import torch.nn as nn

from attnzoo import settings

MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD = "README.md"
MANIFEST_FORMAT = 1
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
MAX_EMBEDDED_BYTES = 4 * 2**20
DEFAULT_TIMEOUT = 60.0
DEFAULT_DEADLINE = 3600.0

#: the tasks a model or checkpoint may have; the registry and the CLI use this one list
TASKS = ("classification", "segmentation", "graph", "bev")
PIPELINE_TAGS = {"classification": "image-classification", "segmentation": "image-segmentation",
                 "graph": "graph-ml", "bev": "object-detection"}

#: an arch and a tag each match this (a model name is 'arch' or 'arch.tag'): lowercase ASCII letters, digits and
#: '_', starting with a letter or digit, at most 64 characters. No '.', '/', '\\' or '..' can reach a path.
NAME_PATTERN = r"[a-z0-9][a-z0-9_]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# a file name the cache may hold; '.'-prefixed names are the hub's own temporary files
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ChecksumError(ValueError):
    """A checkpoint file's sha256 differs from the one its manifest or config promises."""


class UnsafePathError(ValueError):
    """A path named by a manifest, a config or a caller leads outside the folder it must stay in."""


class ManifestError(ValueError):
    """A manifest.json or config.json does not follow the hub's schema."""


class DownloadError(OSError):
    """A checkpoint could not be downloaded (HTTP error, refused, timeout, wrong size)."""


class HubWarning(UserWarning):
    """Something in a hub file was tolerated (an unknown field, say) but should be looked at."""


# ---------------------------------------------------------------------------------------------------------------
# names


def check_name_part(value: Any, what: str = "arch", name: str | None = None) -> str:
    """``value`` if it is a valid arch or tag (see :data:`NAME_PATTERN`), else a ValueError naming both."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str matching {NAME_PATTERN!r}, got {value!r} ({type(value).__name__})")
    if not _NAME.fullmatch(value):
        where = f" in model name {name!r}" if name is not None and name != value else ""
        raise ValueError(f"{what} {value!r}{where} does not match {NAME_PATTERN!r} (lowercase letters, digits and "
                         "'_', starting with a letter or digit, at most 64 characters)")
    return value


def split_name(name: Any) -> tuple[str, str | None]:
    """'arch.tag' -> ('arch', 'tag'); 'arch' -> ('arch', None). Both parts are checked against NAME_PATTERN."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str 'arch' or 'arch.tag', got {name!r} ({type(name).__name__})")
    if not name:
        raise ValueError(f"model name must be 'arch' or 'arch.tag', got {name!r}")
    arch, dot, tag = name.partition(".")
    check_name_part(arch, "arch", name)
    if dot:
        check_name_part(tag, "tag", name)
    return arch, (tag if dot else None)


def split_full_name(name: Any) -> tuple[str, str]:
    """Like :func:`split_name`, but the tag is required ('arch.tag')."""
    arch, tag = split_name(name)
    if tag is None:
        raise ValueError(f"a checkpoint name has the form 'arch.tag', got {name!r}")
    return arch, tag


# ---------------------------------------------------------------------------------------------------------------
# contained paths


def contained(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``root / path`` resolved (symlinks followed); an UnsafePathError unless it lies inside ``root``."""
    base = Path(root).resolve()
    candidate = (base / path).resolve()
    if not candidate.is_relative_to(base):
        raise UnsafePathError(f"{what} {str(path)!r} leads outside {base} (it resolves to {candidate}); the hub only "
                              "reads, writes and deletes files inside their folder")
    return candidate


def _remove_inside(root: Path, path: Path) -> None:
    """Delete ``path`` (a file, a symlink itself, or a folder tree) if and only if it lies inside ``root``."""
    base = root.resolve()
    if path.is_symlink():  # the link is ours to remove wherever it points; its target is never touched
        if path.parent.resolve().is_relative_to(base):
            path.unlink(missing_ok=True)
        return
    target = contained(base, path, "file to delete")
    if target == base:
        raise UnsafePathError(f"refusing to delete the root folder {base}")
    if target.is_dir():
        shutil.rmtree(target)  # rmtree never follows symlinks inside the tree
    else:
        target.unlink(missing_ok=True)


def _is_relative_file(value: Any) -> bool:
    if not isinstance(value, str) or not value or "\\" in value or "\0" in value:
        return False
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.drive or windows.root:
        return False
    return all(part not in ("..", ".") for part in value.split("/")) and bool(_FILE_NAME.fullmatch(posix.name)) \
        and posix.suffix in (".safetensors", *PICKLE_SUFFIXES)


# ---------------------------------------------------------------------------------------------------------------
# URLs


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_url(url: Any) -> str:
    """``url`` if it may be downloaded: https, or plain http to a loopback host (tests); a ValueError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # a malformed IPv6 host, say
        parts = None
    if parts is not None and parts.hostname and (parts.scheme == "https" or
                                                 (parts.scheme == "http" and _is_loopback(parts.hostname))):
        return url
    raise ValueError(f"URL {url!r} is refused: attnzoo downloads only https:// URLs (plain http:// only from a "
                     "loopback host such as 127.0.0.1, for tests; file:// and other schemes never)")


def _is_url(value: Any) -> bool:
    try:
        check_url(value)
    except ValueError:
        return False
    return True


def _is_repo_id(value: Any) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return "/" in value


# ---------------------------------------------------------------------------------------------------------------
# the schema of manifest.json and config.json


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


@dataclass(frozen=True)
class Field:
    """One field of a hub JSON object: what it must be (said in words for errors) and a check of it."""

    expected: str
    check: Callable[[Any], bool]
    required: bool = False


_STRING = Field("a string", lambda v: isinstance(v, str))
_OBJECT = Field("a JSON object", lambda v: isinstance(v, dict))
_METRICS = Field("an object of metric name -> finite number",
                 lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items()))
_TASK = Field(f"one of {', '.join(TASKS)}", lambda v: isinstance(v, str) and v in TASKS, required=True)
_SHA = Field("a sha256: 64 lowercase hexadecimal digits", lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)),
             required=True)
_ARCH = Field(f"an architecture name matching {NAME_PATTERN!r}",
              lambda v: isinstance(v, str) and bool(_NAME.fullmatch(v)), required=True)

MANIFEST_SCHEMA: dict[str, Field] = {
    "format": Field(f"the manifest format, {MANIFEST_FORMAT}", lambda v: type(v) is int and v == MANIFEST_FORMAT,
                    required=True),
    "checkpoints": Field("an object of 'arch.tag' -> record", lambda v: isinstance(v, dict), required=True),
}
RECORD_SCHEMA: dict[str, Field] = {
    "arch": _ARCH,
    "tag": Field(f"a tag matching {NAME_PATTERN!r}", _ARCH.check, required=True),
    "task": _TASK,
    "file": Field("a relative path inside the hub folder (no '..', not absolute) to a .safetensors file (or "
                  f"{'/'.join(PICKLE_SUFFIXES)})", _is_relative_file, required=True),
    "sha256": _SHA,
    "size": Field("the file's size in bytes, an int > 0", lambda v: _is_int(v, 1), required=True),
    "license": _STRING,
    "dataset": _STRING,
    "metrics": _METRICS,
    "eval_command": _STRING,
    "model_kwargs": _OBJECT,
    "pretrained_cfg": _OBJECT,
    "url": Field("null or an https:// URL (http:// only from a loopback host)", _optional(_is_url)),
    "hf_hub_id": Field("null or a Hugging Face Hub repo id 'ORG/NAME'", _optional(_is_repo_id)),
    "hf_revision": Field("null or the 40-hex commit the Hugging Face file is pinned to",
                         _optional(lambda v: isinstance(v, str) and bool(_COMMIT.fullmatch(v)))),
}
CONFIG_SCHEMA: dict[str, Field] = {
    "architecture": _ARCH,
    "task": _TASK,
    "sha256": _SHA,
    "model_args": Field("a JSON object of model arguments", _OBJECT.check, required=True),
    "metrics": _METRICS,
    "dataset": _STRING,
    "license": _STRING,
    "pretrained_cfg": _OBJECT,
    "num_classes": Field("null or an int >= 0", _optional(lambda v: _is_int(v, 0))),
    "num_features": Field("null or an int >= 0", _optional(lambda v: _is_int(v, 0))),
    "global_pool": _STRING,
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate(data: Any, schema: Mapping[str, Field], where: str) -> dict[str, Any]:
    """``data`` if it is an object following ``schema``; a ManifestError naming ``where`` and the field otherwise.

    Fields the schema does not know are tolerated with a :class:`HubWarning` (a newer attnzoo may write them).
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {_short(data)}")
    for key, spec in schema.items():
        if key not in data:
            if spec.required:
                raise ManifestError(f"{where}: field {key!r} is missing (expected {spec.expected})")
        elif not spec.check(data[key]):
            raise ManifestError(f"{where}: field {key!r} must be {spec.expected}, got {_short(data[key])}")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        warnings.warn(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} ignored (written by a newer "
                      "attnzoo?)", HubWarning, stacklevel=3)
    return data


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"duplicate key {key!r}: each key, and so each 'arch.tag' record, may appear once")
        out[key] = value
    return out


def read_json(path: Path) -> Any:
    """Parse a hub JSON file; duplicate keys, bad encodings and syntax errors are ManifestErrors naming ``path``."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path} is not UTF-8 text: {err}") from err
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON: {err}") from err
    except ManifestError as err:
        raise ManifestError(f"{path}: {err}") from None


def read_config(folder: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The validated config.json of a ``save_pretrained`` folder, which must lie in ``root`` (default: the folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder written by attnzoo.save_pretrained")
    path = contained(folder if root is None else root, folder.resolve() / CONFIG, "config file")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG}; it was not written by attnzoo.save_pretrained")
    return validate(read_json(path), CONFIG_SCHEMA, str(path))


# ---------------------------------------------------------------------------------------------------------------
# records and manifests


@dataclass(frozen=True)
class CheckpointRecord:
    """One published checkpoint, as written in a hub folder's manifest.json."""

    arch: str
    tag: str
    task: str
    file: str
    sha256: str
    size: int
    license: str = "apache-2.0"
    dataset: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    eval_command: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    hf_hub_id: str | None = None
    hf_revision: str | None = None
    hub_dir: str | None = None  # the folder whose manifest lists it; not written to the manifest

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    def to_manifest(self) -> dict[str, Any]:
        entry = asdict(self)
        del entry["hub_dir"]
        return entry

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], hub_dir: str | None = None) -> CheckpointRecord:
        known = {f.name for f in fields(cls)} - {"hub_dir"}
        return cls(**{k: v for k, v in entry.items() if k in known}, hub_dir=hub_dir)


def _check_record(key: str, entry: Any, where: str) -> dict[str, Any]:
    where = f"{where}: record {key!r}"
    validate(entry, RECORD_SCHEMA, where)
    if key != f"{entry['arch']}.{entry['tag']}":
        raise ManifestError(f"{where}: the key must be its arch.tag, {entry['arch']}.{entry['tag']!s}")
    if entry.get("hf_hub_id") and not entry.get("hf_revision"):
        raise ManifestError(f"{where}: field 'hf_revision' is missing; a Hugging Face source needs the commit "
                            "(40 hex digits) the file is pinned to")
    return entry


def load_manifest(hub_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The validated records of a hub folder as JSON objects ('arch.tag' -> entry); {} if it has no manifest."""
    hub_dir = Path(hub_dir)
    path = contained(hub_dir, MANIFEST, "manifest")
    if not path.is_file():
        return {}
    data = validate(read_json(path), MANIFEST_SCHEMA, str(path))
    return {key: _check_record(key, entry, str(path)) for key, entry in data["checkpoints"].items()}


def read_manifest(hub_dir: str | os.PathLike) -> dict[str, CheckpointRecord]:
    """The validated records of a hub folder ('arch.tag' -> record)."""
    return {key: CheckpointRecord.from_manifest(entry, str(hub_dir)) for key, entry in load_manifest(hub_dir).items()}


def embedded_dir() -> Path | None:
    """The hub folder shipped with attnzoo: package data in a wheel, ``weights/`` in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "weights", package.parent / "weights"):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def hub_dirs() -> list[Path]:
    """Hub folders searched in order: ``$ATTNZOO_HUB_DIR`` (os.pathsep-separated), then the embedded one."""
    dirs = settings.hub_dirs()
    embedded = embedded_dir()
    return dirs + ([embedded] if embedded is not None else [])


def all_records(skip_invalid: bool = False) -> list[CheckpointRecord]:
    """Every checkpoint of every hub folder; an ``arch.tag`` in an earlier folder hides later ones.

    Args:
        skip_invalid: leave out a hub folder whose manifest is malformed instead of raising (``import attnzoo``
            uses this, so a broken ``$ATTNZOO_HUB_DIR`` fails when that hub is used, not at import).
    """
    seen: dict[str, CheckpointRecord] = {}
    for hub_dir in hub_dirs():
        try:
            records = read_manifest(hub_dir)
        except (ManifestError, UnsafePathError, OSError):
            if not skip_invalid:
                raise
            continue
        for name, record in records.items():
            seen.setdefault(name, record)
    return list(seen.values())


def records_for(arch: str, skip_invalid: bool = False) -> list[CheckpointRecord]:
    return [r for r in all_records(skip_invalid) if r.arch == arch]


def find_record(arch: str, tag: str | None = None) -> CheckpointRecord:
    """The record of ``arch.tag`` (``tag=None``: the architecture's first published tag)."""
    check_name_part(arch, "arch")
    if tag is not None:
        check_name_part(tag, "tag")
    published = all_records()
    records = [r for r in published if r.arch == arch and (tag is None or r.tag == tag)]
    if not records:
        names = ", ".join(r.name for r in published) or "none"
        wanted = arch if tag is None else f"{arch}.{tag}"
        raise ValueError(f"no published checkpoint for {wanted!r}; published checkpoints: {names}. "
                         "Use pretrained=False, or pass pretrained_cfg_overlay=dict(file=...) for your own file.")
    return records[0]


# ---------------------------------------------------------------------------------------------------------------
# verification and loading


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: str, remove_in: Path | None = None) -> Path:
    """Return ``path`` if its sha256 is ``expected``; otherwise raise, deleting it if it lies in ``remove_in``."""
    actual = sha256_of(path)
    if actual != expected:
        removed = ""
        if remove_in is not None:
            _remove_inside(remove_in, path)
            removed = " The file was deleted from the cache; the next load downloads it again."
        raise ChecksumError(f"sha256 mismatch for {path}: expected {expected}, got {actual}. Nothing was loaded."
                            f"{removed}")
    return path


def check_loadable(path: str | os.PathLike, allow_pickle: bool = False) -> Path:
    """Refuse a missing file or a pickle without opt-in, before any byte of it is deserialised."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(f"{path} is a pickle-based checkpoint; attnzoo reads safetensors by default. Pass "
                         "allow_pickle=True to read it with torch.load(weights_only=True), or convert it to "
                         "safetensors (safetensors.torch.save_file).")
    return path


def nonfinite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of the floating/complex tensors in ``state`` holding a NaN or an infinity."""
    return sorted(k for k, v in state.items()
                  if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()))


def _refuse_nonfinite(state: Mapping[str, torch.Tensor], source: Any, action: str, hint: str) -> None:
    bad = nonfinite_keys(state)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(f"{source} has non-finite (NaN/inf) values in {len(bad)} tensor(s): {shown}; {action}."
                         f"{hint}")


def load_state_dict(path: str | os.PathLike, allow_pickle: bool = False, allow_nonfinite: bool = False
                    ) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file (or, with ``allow_pickle=True``, a weights-only pickle).

    A tensor with NaN or inf values is refused unless ``allow_nonfinite=True``.
    """
    path = check_loadable(path, allow_pickle)
    if path.suffix in PICKLE_SUFFIXES:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable safetensors file (truncated, corrupted or another format): "
                             f"{err}") from err
    if not allow_nonfinite:
        _refuse_nonfinite(state, path, "nothing was loaded", " Pass allow_nonfinite=True to load it anyway.")
    return state


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: Any,
                     owner: str = "the model", only_dtypes: bool = False) -> None:
    """Raise listing every missing, unexpected, mis-shaped and mis-typed key of ``state`` against ``expected``.

    A dtype may differ only floating to floating (a float16 checkpoint loads into a float32 model); ints, bools
    and complex numbers must match exactly. ``only_dtypes=True`` checks the dtypes of the shared keys only (for a
    loader such as timm's that adapts keys and shapes itself).
    """
    shared = set(expected) & set(state)
    missing = [] if only_dtypes else sorted(set(expected) - set(state))
    unexpected = [] if only_dtypes else sorted(set(state) - set(expected))
    mis_shaped = [] if only_dtypes else sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in shared if expected[k].shape != state[k].shape)
    mis_typed = sorted(f"{k}: checkpoint {state[k].dtype} vs model {expected[k].dtype}" for k in shared
                       if state[k].dtype != expected[k].dtype
                       and not (state[k].is_floating_point() and expected[k].is_floating_point()))
    problems = [f"{label} ({len(items)}): {', '.join(items)}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped),
                 ("dtype mismatches (only floating -> floating may differ)", mis_typed)) if items]
    if problems:
        raise ValueError(f"checkpoint {source} does not fit {owner}: " + "; ".join(problems))


def load_weights(model: nn.Module, path: str | os.PathLike, allow_pickle: bool = False,
                 allow_nonfinite: bool = False) -> nn.Module:
    """Strictly load ``path`` into ``model``; every missing, unexpected, mis-shaped and mis-typed key is listed."""
    state = load_state_dict(path, allow_pickle, allow_nonfinite)
    check_state_dict(state, model.state_dict(), path, type(model).__name__)
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# the cache and downloads


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The download cache: ``override``, else ``$ATTNZOO_CACHE``, else ``~/.cache/attnzoo``."""
    if override is not None:
        return Path(override)
    return settings.cache_dir()


def offline() -> bool:
    """True when ``$ATTNZOO_OFFLINE`` or ``$HF_HUB_OFFLINE`` is on (see :func:`attnzoo.settings.offline`)."""
    return settings.offline()


def _seconds(value: Any, argument: str, from_environment: Callable[[float], float], default: float) -> float:
    if value is None:
        try:
            return from_environment(default)
        except ValueError as err:
            raise ValueError(f"download {argument} {err}") from None
    return settings.positive_seconds(value, f"download {argument} {argument}={value!r}")


def download_limits(timeout: float | None = None, deadline: float | None = None) -> tuple[float, float]:
    """(seconds one read may wait, seconds the whole download may take): arguments, else the environment."""
    return (_seconds(timeout, "timeout", settings.download_timeout, DEFAULT_TIMEOUT),
            _seconds(deadline, "deadline", settings.download_deadline, DEFAULT_DEADLINE))


def _temp_prefix(name: str) -> str:
    """Temporary downloads are '.NAME.PID.RANDOM.part': the pid tells a dead process's leftovers from live work."""
    return f".{name}.{os.getpid()}."


_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.part")


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: Path, name: str, root: Path) -> list[Path]:
    """Remove the temporary downloads of ``name`` in ``folder`` left by processes that no longer run."""
    removed = []
    for entry in folder.iterdir():
        match = _TEMP.fullmatch(entry.name)
        if match and match["name"] == name and not _pid_alive(int(match["pid"])):
            _remove_inside(root, entry)
            removed.append(entry)
    return removed


def _advice(record: CheckpointRecord, target: Path) -> str:
    manifest = f" in {Path(record.hub_dir) / MANIFEST}" if record.hub_dir else ""
    return (f"Check the network and the record's source{manifest}, then retry; or download the file yourself "
            f"(sha256 {record.sha256}, {record.size} bytes) to {target}, or pass checkpoint_path=... or "
            "pretrained_cfg_overlay=dict(file=...).")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most 5 redirects, each to a URL :func:`check_url` accepts."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        try:
            check_url(target)
        except ValueError as err:
            raise urllib.error.URLError(f"redirected ({code}) to a refused URL: {err}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _stream(url: str, out: Any, record: CheckpointRecord, timeout: float, deadline: float, label: str) -> None:
    """Copy ``url`` into ``out``: at most ``record.size`` bytes, exactly that many, within ``deadline`` seconds."""
    from tqdm.auto import tqdm

    start = time.monotonic()
    opener = urllib.request.build_opener(_CheckedRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": f"attnzoo/{importlib.metadata.version('attnzoo')}",
                                                   "Accept-Encoding": "identity"})
    with opener.open(request, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        if announced is not None and announced.strip() != str(record.size):
            raise DownloadError(f"the server announces {announced} bytes, the record {record.size}")
        received = 0
        with tqdm(total=record.size, unit="B", unit_scale=True, desc=label, leave=False) as bar:
            # read1 returns what one receive brings, so the deadline is checked after every receive of a trickling
            # server; a silent one is cut by the per-read timeout: a download ends at most `timeout` s past it
            while chunk := response.read1(2**16):
                received += len(chunk)
                if received > record.size:
                    raise DownloadError(f"the server sent more than the record's {record.size} bytes")
                out.write(chunk)
                out.flush()  # what has arrived is on disk: a killed process leaves its partial file to clean up
                bar.update(len(chunk))
                if time.monotonic() - start > deadline:
                    raise DownloadError(f"the download did not finish within its {deadline:g} s deadline "
                                        f"({received} of {record.size} bytes; ATTNZOO_DOWNLOAD_DEADLINE)")
    if received != record.size:
        raise DownloadError(f"the connection closed after {received} of {record.size} bytes")


def _check_download(record: CheckpointRecord, path: Path, url: str, target: Path) -> None:
    actual = sha256_of(path)
    if actual != record.sha256:
        raise ChecksumError(f"checkpoint {record.name!r} downloaded from {url} is not the published file: sha256 "
                            f"expected {record.sha256}, got {actual}. It was discarded and nothing was loaded. The "
                            f"source changed or was replaced: tell its publisher. {_advice(record, target)}")


def _download_url(record: CheckpointRecord, url: str, folder: Path, target: Path, root: Path, timeout: float,
                  deadline: float) -> None:
    check_url(url)
    fd, name = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(target.name), suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _stream(url, out, record, timeout, deadline, target.name)
            except urllib.error.HTTPError as err:
                raise DownloadError(f"could not download checkpoint {record.name!r} from {url}: HTTP {err.code} "
                                    f"{err.reason}. {_advice(record, target)}") from err
            except (DownloadError, OSError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", None) or err
                if isinstance(err, TimeoutError) or isinstance(reason, TimeoutError):
                    reason = f"no data for {timeout:g} s (ATTNZOO_DOWNLOAD_TIMEOUT)"
                raise DownloadError(f"could not download checkpoint {record.name!r} from {url}: {reason}. "
                                    f"{_advice(record, target)}") from err
        _check_download(record, tmp, url, target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            _remove_inside(root, tmp)


def _download_hf(record: CheckpointRecord, folder: Path, target: Path, root: Path, timeout: float) -> None:
    from huggingface_hub import hf_hub_download, hf_hub_url

    url = hf_hub_url(record.hf_hub_id, record.file, revision=record.hf_revision)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=_temp_prefix(target.name), suffix=".part"))
    try:
        try:
            local = hf_hub_download(record.hf_hub_id, record.file, revision=record.hf_revision, local_dir=tmp,
                                    etag_timeout=timeout, endpoint=os.environ.get("HF_ENDPOINT") or None)
        except Exception as err:  # huggingface_hub's errors span OSError, ValueError and its own classes
            raise DownloadError(f"could not download checkpoint {record.name!r} from {url} (Hugging Face Hub "
                                f"{record.hf_hub_id}@{record.hf_revision}): {type(err).__name__}: {err}. "
                                f"{_advice(record, target)}") from err
        local = contained(tmp, local, "downloaded file")
        size = local.stat().st_size
        if size != record.size:
            raise DownloadError(f"could not download checkpoint {record.name!r} from {url}: got {size} bytes, the "
                                f"record says {record.size}. {_advice(record, target)}")
        _check_download(record, local, url, target)
        os.replace(local, target)
    finally:
        _remove_inside(root, tmp)


def resolve_file(record: CheckpointRecord, cache_dir: str | os.PathLike | None = None, timeout: float | None = None,
                 deadline: float | None = None) -> Path:
    """A verified local path for ``record``: hub folder copy, cached copy, or a fresh verified download.

    Args:
        record: the checkpoint.
        cache_dir: the cache root (default :func:`cache_root`).
        timeout: seconds one network read may wait (default ``$ATTNZOO_DOWNLOAD_TIMEOUT`` or 60).
        deadline: seconds the whole download may take, and waiting for another process's download of the same
            file (default ``$ATTNZOO_DOWNLOAD_DEADLINE`` or 3600). A Hugging Face source is fetched by
            ``huggingface_hub.hf_hub_download``, under its own timeouts (``HF_HUB_DOWNLOAD_TIMEOUT``); the size and
            sha256 are checked here either way.
    """
    if record.hub_dir is not None:
        local = contained(record.hub_dir, record.file, f"file of checkpoint {record.name!r}")
        if local.is_file():
            return verify(local, record.sha256)
    root = cache_root(cache_dir)
    basename = PurePosixPath(record.file).name
    folder = contained(root, record.name, "cache folder")
    target = contained(root, f"{record.name}/{basename}", "cache file")
    if target.is_file():
        return verify(target, record.sha256, remove_in=root)
    if offline():
        sources = " or ".join(s for s in (record.url, record.hf_hub_id and f"hf-hub:{record.hf_hub_id}") if s)
        raise FileNotFoundError(
            f"checkpoint {record.name!r} is not in a hub folder nor in the cache ({target}) and downloads are "
            f"disabled (ATTNZOO_OFFLINE/HF_HUB_OFFLINE). To get it: unset those variables and retry, or download "
            f"{sources or 'the file'} (sha256 {record.sha256}) to {target}, or pass "
            "pretrained_cfg_overlay=dict(file=...).")
    if not (record.url or record.hf_hub_id):
        raise FileNotFoundError(f"checkpoint {record.name!r} has no local copy and no download source; "
                                f"{_advice(record, target)}")
    timeout, deadline = download_limits(timeout, deadline)
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    folder = contained(root, record.name, "cache folder")  # mkdir may have met a symlink planted meanwhile
    try:
        with FileLock(str(folder / f"{basename}.lock"), timeout=deadline + timeout):
            if target.is_file():  # another process finished the download while this one waited
                return verify(target, record.sha256, remove_in=root)
            remove_stale_temps(folder, basename, root)
            if record.url:
                _download_url(record, record.url, folder, target, root, timeout, deadline)
            else:
                _download_hf(record, folder, target, root, timeout)
    except Timeout as err:
        raise DownloadError(f"checkpoint {record.name!r}: another process has held the download lock {err.lock_file} "
                            f"for over {deadline + timeout:g} s. {_advice(record, target)}") from err
    return target


# ---------------------------------------------------------------------------------------------------------------
# save_pretrained folders


def _model_card(config: Mapping[str, Any]) -> str:
    task, metrics = config["task"], config.get("metrics", {})
    lines = ["---", "library_name: attnzoo", f"license: {config.get('license', 'apache-2.0')}",
             f"pipeline_tag: {PIPELINE_TAGS[task]}", "tags:", "- attnzoo", f"- {task}"]
    if config.get("dataset"):
        lines += ["datasets:", f"- {config['dataset']}"]
    lines += ["---", "", f"# Model card for {config['architecture']}", "",
              f"An attnzoo {task} model (`{config['architecture']}`).", "", "## Metrics", ""]
    lines += [f"- {k}: {v}" for k, v in metrics.items()] or ["- none recorded"]
    lines += ["", "## Usage", "", "```python", "import attnzoo",
              "model = attnzoo.from_pretrained('<this folder or hf-hub id>')", "```", ""]
    return "\n".join(lines)


def _json_ready(value: Any, where: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} is not JSON-serialisable ({err}); pass layer types by name") from err
    return value


def write_pretrained(directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
                     ) -> Path:
    """Write ``model.safetensors``, ``config.json`` (``config`` plus the weights' sha256) and a README model card.

    ``config`` follows :data:`CONFIG_SCHEMA` (without ``sha256``, which is computed here).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; save_pretrained writes a folder")
    directory.mkdir(parents=True, exist_ok=True)
    weights, config_path, card = (contained(directory, item, "output file") for item in (WEIGHTS_FILE, CONFIG, CARD))
    out = _json_ready({**config, "sha256": "0" * 64}, "the model config")
    validate(out, CONFIG_SCHEMA, "the config to save")
    # clones: safetensors refuses tensors that share storage, and a copy is cheap for zoo-sized models
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}, weights)
    out["sha256"] = sha256_of(weights)
    config_path.write_text(json.dumps(out, indent=2, sort_keys=True))
    card.write_text(_model_card(out))
    return directory


def _fetch_hf_folder(repo_id: str, revision: str | None) -> Path:
    if offline():
        raise FileNotFoundError(f"{repo_id!r} is not a local folder and downloads are disabled "
                                "(ATTNZOO_OFFLINE/HF_HUB_OFFLINE); pass a folder written by save_pretrained")
    if not _is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is neither a folder nor a Hugging Face Hub repo id 'ORG/NAME'")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG, WEIGHTS_FILE, CARD]))


def read_pretrained(directory_or_hub_id: str | os.PathLike, revision: str | None = None
                    ) -> tuple[dict[str, Any], Path]:
    """(validated config, verified weights path) of a ``save_pretrained`` folder or Hugging Face Hub repo."""
    folder = root = Path(directory_or_hub_id)
    if not folder.is_dir():
        folder = _fetch_hf_folder(str(directory_or_hub_id).removeprefix("hf-hub:"), revision)
        root = folder.parent.parent  # a snapshot's files link into the repo's blob store, which is theirs to stay in
    config = read_config(folder, root)
    weights = contained(root, folder.resolve() / WEIGHTS_FILE, "weights file")
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}; it was not written by attnzoo.save_pretrained")
    return config, verify(weights, config["sha256"])


# ---------------------------------------------------------------------------------------------------------------
# publish


def _write_json_atomic(path: Path, data: Any) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".part",
                                     delete=False) as tmp:
        json.dump(data, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, path)


def _hub_folder(to: str | os.PathLike) -> Path:
    hub_dir = Path(to)
    if hub_dir.exists() and not hub_dir.is_dir():
        raise NotADirectoryError(f"publish target {str(to)!r} is a file; give a hub folder (e.g. weights/) or "
                                 "hf-hub:ORG/REPO")
    return hub_dir


def publish(name: str, source_dir: str | os.PathLike, to: str | os.PathLike, url: str | None = None,
            hf_hub_id: str | None = None, hf_revision: str | None = None) -> CheckpointRecord:
    """Add the checkpoint saved in ``source_dir`` to a hub folder's manifest as ``name`` ('arch.tag').

    The sha256 and size are computed here, never typed by hand; a checkpoint with NaN or inf values is refused.
    ``url``/``hf_hub_id`` (+ ``hf_revision``, the commit) name where the file will also be served from.
    ``to='hf-hub:ORG/REPO'`` uploads the folder with huggingface_hub instead (needs a token and a network).
    A model card (README.md) already in the hub folder is kept, with a warning when it differs from the source's
    (an hf-hub upload sends the source folder's card).
    """
    arch, tag = split_full_name(name)
    source_dir = Path(source_dir)
    config = read_config(source_dir)
    if config["architecture"] != arch:
        raise ValueError(f"{source_dir} holds a {config['architecture']!r} checkpoint, not {arch!r}")
    weights = verify(contained(source_dir, WEIGHTS_FILE, "weights file"), config["sha256"])
    _refuse_nonfinite(load_state_dict(weights, allow_nonfinite=True), weights, f"{name} is not published",
                      " Retrain or fix the model; a published checkpoint must be finite.")
    size = weights.stat().st_size
    entry = {"arch": arch, "tag": tag, "task": config["task"], "file": f"{name}/{WEIGHTS_FILE}",
             "sha256": config["sha256"], "size": size, "license": config.get("license", "apache-2.0"),
             "dataset": config.get("dataset", ""), "metrics": config.get("metrics", {}),
             "eval_command": f"attnzoo eval {name}", "model_kwargs": config["model_args"],
             "pretrained_cfg": config.get("pretrained_cfg", {}), "url": url, "hf_hub_id": hf_hub_id,
             "hf_revision": hf_revision}
    if str(to).startswith("hf-hub:"):
        return _publish_hf(str(to).removeprefix("hf-hub:"), source_dir, entry)
    _check_record(name, entry, f"publish {name}")
    if size > MAX_EMBEDDED_BYTES:
        raise ValueError(f"{weights} is {size / 2**20:.1f} MiB; the embedded hub takes checkpoints up to "
                         f"{MAX_EMBEDDED_BYTES / 2**20:.0f} MiB. Publish it to hf-hub:ORG/REPO instead.")
    hub_dir = _hub_folder(to)
    load_manifest(hub_dir)  # a malformed manifest is refused before any file is copied
    hub_dir.mkdir(parents=True, exist_ok=True)
    contained(hub_dir, name, "checkpoint folder").mkdir(exist_ok=True)
    for item in (WEIGHTS_FILE, CONFIG, CARD):
        source = contained(source_dir, item, "source file")
        target = contained(hub_dir, f"{name}/{item}", "published file")
        if item == CARD and target.is_file():
            _keep_card(target, source, entry["metrics"])
        elif source.is_file():
            shutil.copyfile(source, target)
    if sha256_of(contained(hub_dir, entry["file"])) != entry["sha256"]:
        raise ChecksumError(f"{hub_dir / entry['file']} changed while it was published; publish it again")
    from filelock import FileLock

    manifest = contained(hub_dir, MANIFEST, "manifest")
    with FileLock(str(hub_dir / f"{MANIFEST}.lock")):  # concurrent publishes must not drop each other's records
        entries = load_manifest(hub_dir)
        entries[name] = entry
        _write_json_atomic(manifest, {"format": MANIFEST_FORMAT, "checkpoints": dict(sorted(entries.items()))})
    return CheckpointRecord.from_manifest(entry, str(hub_dir))


def _keep_card(card: Path, source: Path, metrics: Mapping[str, Any]) -> None:
    """A card already in the hub folder was written for it (data, recipe, baseline): re-publishing keeps it rather
    than replacing it with save_pretrained's generic one, and says so when the two differ."""
    if source.is_file() and source.read_bytes() != card.read_bytes():
        warnings.warn(f"kept the model card {card} (not replaced by {source}); check that it quotes the new "
                      f"metrics {dict(metrics)}", stacklevel=3)


def _publish_hf(repo_id: str, source_dir: Path, entry: dict[str, Any]) -> CheckpointRecord:
    if not _is_repo_id(repo_id):
        raise ValueError(f"hf-hub:{repo_id} does not name a Hugging Face Hub repo id 'ORG/NAME'")
    if offline():
        raise ConnectionError(f"publishing to hf-hub:{repo_id} needs a network; unset ATTNZOO_OFFLINE/HF_HUB_OFFLINE "
                              "(and log in with `hf auth login`), or publish to a local hub folder")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(source_dir), commit_message=f"Add {entry['arch']}."
                               f"{entry['tag']}", allow_patterns=[WEIGHTS_FILE, CONFIG, CARD])
    entry = {**entry, "file": WEIGHTS_FILE, "url": None, "hf_hub_id": repo_id, "hf_revision": commit.oid}
    _check_record(f"{entry['arch']}.{entry['tag']}", entry, f"publish to hf-hub:{repo_id}")
    return CheckpointRecord.from_manifest(entry)

