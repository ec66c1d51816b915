"""Resolve, download, verify, cache, load, save and publish attnzoo checkpoints.

The hub knows nothing of particular models: it reads ``manifest.json`` files, finds a checkpoint file and proves
it is the published one (sha256) before anything reads it, then loads state dicts into whatever the zoo builds.

Resolution for ``arch.tag`` (first hit wins):

1. an explicit file (``checkpoint_path=``/``pretrained_cfg_overlay=dict(file=...)``), the caller's choice;
2. the embedded hub folder(s): ``$ATTNZOO_HUB_DIR`` (tests, private zoos), then ``weights/`` of a source
   checkout or ``attnzoo/weights`` of an installed wheel;
3. the cache, ``$ATTNZOO_CACHE`` or ``~/.cache/attnzoo``;
4. a download from the record's https URL, else its Hugging Face Hub repo, into a temporary file in the cache
   folder, verified, then renamed atomically under a file lock. Skipped with a clear error when
   ``ATTNZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.

Safetensors is the only format read by default; a legacy pickle (``.pth``/``.pt``/``.bin``) needs
``allow_pickle=True`` and is then read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

MANIFEST = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
MAX_EMBEDDED_BYTES = 4 * 2**20
PIPELINE_TAGS = {"classification": "image-classification", "segmentation": "image-segmentation",
                 "graph": "graph-ml", "bev": "object-detection"}


class ChecksumError(ValueError):
    """A checkpoint file's sha256 differs from the one its manifest or config promises."""


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
    hub_dir: str | None = None  # the folder whose manifest lists it; not written to the manifest

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    def to_manifest(self) -> dict[str, Any]:
        entry = asdict(self)
        del entry["hub_dir"]
        return entry


# ---------------------------------------------------------------------------------------------------------------
# where things are


def embedded_dir() -> Path | None:
    """The hub folder shipped with attnzoo: package data in a wheel, ``weights/`` in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "weights", package.parent / "weights"):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def hub_dirs() -> list[Path]:
    """Hub folders searched in order: ``$ATTNZOO_HUB_DIR`` (os.pathsep-separated), then the embedded one."""
    dirs = [Path(p) for p in os.environ.get("ATTNZOO_HUB_DIR", "").split(os.pathsep) if p]
    embedded = embedded_dir()
    return dirs + ([embedded] if embedded is not None else [])


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The download cache: ``override``, else ``$ATTNZOO_CACHE``, else ``~/.cache/attnzoo``."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("ATTNZOO_CACHE", Path.home() / ".cache" / "attnzoo"))


def offline() -> bool:
    truthy = ("1", "true", "yes", "on")
    return any(os.environ.get(v, "").lower() in truthy for v in ("ATTNZOO_OFFLINE", "HF_HUB_OFFLINE"))


# ---------------------------------------------------------------------------------------------------------------
# manifests


def read_manifest(hub_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(hub_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return data.get("checkpoints", {})


def all_records() -> list[CheckpointRecord]:
    """Every checkpoint of every hub folder; an ``arch.tag`` in an earlier folder hides later ones."""
    seen: dict[str, CheckpointRecord] = {}
    for hub_dir in hub_dirs():
        for name, entry in read_manifest(hub_dir).items():
            if name not in seen:
                seen[name] = CheckpointRecord(**entry, hub_dir=str(hub_dir))
    return list(seen.values())


def records_for(arch: str) -> list[CheckpointRecord]:
    return [r for r in all_records() if r.arch == arch]


def find_record(arch: str, tag: str | None = None) -> CheckpointRecord:
    """The record of ``arch.tag`` (``tag=None``: the architecture's first published tag)."""
    records = records_for(arch)
    if tag is not None:
        records = [r for r in records if r.tag == tag]
    if not records:
        published = ", ".join(r.name for r in all_records()) or "none"
        wanted = arch if tag is None else f"{arch}.{tag}"
        raise ValueError(f"no published checkpoint for {wanted!r}; published checkpoints: {published}. "
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


def verify(path: Path, expected: str, remove_on_mismatch: bool = False) -> Path:
    """Return ``path`` if its sha256 is ``expected``; otherwise raise, deleting the file if asked."""
    actual = sha256_of(path)
    if actual != expected:
        if remove_on_mismatch:
            path.unlink(missing_ok=True)
        removed = " The file was deleted from the cache; the next load downloads it again." * remove_on_mismatch
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


def load_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file (or, with ``allow_pickle=True``, a weights-only pickle)."""
    path = check_loadable(path, allow_pickle)
    if path.suffix in PICKLE_SUFFIXES:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated, corrupted or another format): "
                         f"{err}") from err


def load_weights(model: nn.Module, path: str | os.PathLike, allow_pickle: bool = False) -> nn.Module:
    """Strictly load ``path`` into ``model``; every missing, unexpected and mis-shaped key is listed."""
    state = load_state_dict(path, allow_pickle)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        problems = [f"{label} ({len(keys)}): {', '.join(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped))
                    if keys]
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# downloads


def _download_url(url: str, target: Path, expected: str) -> None:
    from tqdm.auto import tqdm

    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
                    for chunk in iter(lambda: response.read(2**20), b""):
                        tmp.write(chunk)
                        bar.update(len(chunk))
            tmp.close()
            verify(tmp_path, expected, remove_on_mismatch=True)
            os.replace(tmp_path, target)
        finally:
            tmp_path.unlink(missing_ok=True)


def _download_hf(repo_id: str, filename: str, target: Path, expected: str) -> None:
    from huggingface_hub import hf_hub_download

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".hf-") as tmp:
        local = Path(hf_hub_download(repo_id, filename, local_dir=tmp))
        verify(local, expected, remove_on_mismatch=True)
        os.replace(local, target)


def resolve_file(record: CheckpointRecord, cache_dir: str | os.PathLike | None = None) -> Path:
    """A verified local path for ``record``: embedded copy, cached copy, or a fresh verified download."""
    if record.hub_dir is not None:
        embedded = Path(record.hub_dir) / record.file
        if embedded.is_file():
            return verify(embedded, record.sha256)
    folder = cache_root(cache_dir) / record.name
    target = folder / Path(record.file).name
    if target.is_file():
        return verify(target, record.sha256, remove_on_mismatch=True)
    if offline():
        sources = " or ".join(s for s in (record.url, record.hf_hub_id and f"hf-hub:{record.hf_hub_id}") if s)
        raise FileNotFoundError(
            f"checkpoint {record.name!r} is not in a hub folder nor in the cache ({target}) and downloads are "
            f"disabled (ATTNZOO_OFFLINE/HF_HUB_OFFLINE). To get it: unset those variables and retry, or download "
            f"{sources or 'the file'} (sha256 {record.sha256}) to {target}, or pass "
            "pretrained_cfg_overlay=dict(file=...).")
    if not (record.url or record.hf_hub_id):
        raise FileNotFoundError(f"checkpoint {record.name!r} has no local copy and no download source")
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():  # another process finished the download while this one waited
            return verify(target, record.sha256, remove_on_mismatch=True)
        if record.url:
            _download_url(record.url, target, record.sha256)
        else:
            _download_hf(record.hf_hub_id, Path(record.file).name, target, record.sha256)
    return target


# ---------------------------------------------------------------------------------------------------------------
# save, restore, publish


def _config_of(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "attnzoo_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} was not built by attnzoo.create_model (no attnzoo_config), so "
                         "its architecture and arguments are unknown; build it with attnzoo.create_model(...)")
    return config


def _json_ready(value: Any, where: str) -> Any:
    try:
        json.dumps(value)
    except TypeError as err:
        raise ValueError(f"{where} is not JSON-serialisable ({err}); pass layer types by name") from err
    return value


def _model_card(config: dict[str, Any], metrics: dict[str, float]) -> str:
    task = config["task"]
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


def save_pretrained(model: nn.Module, directory: str | os.PathLike, metrics: dict[str, float] | None = None,
                    dataset: str = "") -> Path:
    """Write ``model.safetensors``, a timm-compatible ``config.json`` and a README model card to ``directory``."""
    from safetensors.torch import save_file

    config = _config_of(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clones: safetensors refuses tensors that share storage, and a copy is cheap for zoo-sized models
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE)
    metrics = dict(metrics or {})
    out = {
        "architecture": config["architecture"],
        "task": config["task"],
        "model_args": _json_ready(config["model_args"], "model_args"),
        "sha256": sha256_of(directory / WEIGHTS_FILE),
        "metrics": _json_ready(metrics, "metrics"),
        "dataset": dataset,
    }
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if pretrained_cfg:
        keep = ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes", "pool_size",
                "first_conv", "classifier", "license")
        out["pretrained_cfg"] = {k: pretrained_cfg[k] for k in keep if k in pretrained_cfg}
        out["num_classes"] = getattr(model, "num_classes", pretrained_cfg.get("num_classes"))
        out["num_features"] = getattr(model, "num_features", None)
        out["global_pool"] = str(getattr(getattr(model, "global_pool", None), "pool_type", "avg") or "avg")
    (directory / "config.json").write_text(json.dumps(out, indent=2, sort_keys=True, default=list))
    (directory / "README.md").write_text(_model_card({**config, "dataset": dataset}, metrics))
    return directory


def _fetch_hf_folder(repo_id: str) -> Path:
    if offline():
        raise FileNotFoundError(f"{repo_id!r} is not a local folder and downloads are disabled "
                                "(ATTNZOO_OFFLINE/HF_HUB_OFFLINE); pass a folder written by save_pretrained")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=["config.json", WEIGHTS_FILE, "README.md"]))


def from_pretrained(directory_or_hub_id: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained` from a folder or a Hugging Face Hub repo id.

    ``kwargs`` override the saved model arguments. The weights are verified against the sha256 in config.json
    and loaded strictly.
    """
    from attnzoo.zoo._registry import create_model

    source = str(directory_or_hub_id)
    folder = Path(source)
    if not folder.is_dir():
        folder = _fetch_hf_folder(source.removeprefix("hf-hub:"))
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; it was not written by attnzoo.save_pretrained")
    config = json.loads(config_path.read_text())
    weights = folder / WEIGHTS_FILE
    verify(weights, config["sha256"])
    model = create_model(config["architecture"], **{**config.get("model_args", {}), **kwargs})
    return load_weights(model, weights)


def publish(name: str, source_dir: str | os.PathLike, to: str | os.PathLike, url: str | None = None,
            hf_hub_id: str | None = None) -> CheckpointRecord:
    """Add the checkpoint saved in ``source_dir`` to a hub folder's manifest as ``name`` ('arch.tag').

    The sha256 and size are computed here, never typed by hand. ``to='hf-hub:ORG/REPO'`` uploads the folder
    with huggingface_hub instead (needs a token and a network).
    """
    from attnzoo.zoo._registry import split_name

    arch, tag = split_name(name)
    if tag is None:
        raise ValueError(f"publish needs a name of the form 'arch.tag', got {name!r}")
    source_dir = Path(source_dir)
    config = json.loads((source_dir / "config.json").read_text())
    if config["architecture"] != arch:
        raise ValueError(f"{source_dir} holds a {config['architecture']!r} checkpoint, not {arch!r}")
    weights = verify(source_dir / WEIGHTS_FILE, config["sha256"])
    if str(to).startswith("hf-hub:"):
        return _publish_hf(str(to).removeprefix("hf-hub:"), source_dir, name, config)
    size = weights.stat().st_size
    if size > MAX_EMBEDDED_BYTES:
        raise ValueError(f"{weights} is {size / 2**20:.1f} MiB; the embedded hub takes checkpoints up to "
                         f"{MAX_EMBEDDED_BYTES / 2**20:.0f} MiB. Publish it to hf-hub:ORG/REPO instead.")
    hub_dir = Path(to)
    target = hub_dir / name
    target.mkdir(parents=True, exist_ok=True)
    for item in (WEIGHTS_FILE, "config.json", "README.md"):
        if (source_dir / item).is_file():
            shutil.copyfile(source_dir / item, target / item)
    record = CheckpointRecord(
        arch=arch, tag=tag, task=config["task"], file=f"{name}/{WEIGHTS_FILE}", sha256=sha256_of(target / WEIGHTS_FILE),
        size=size, license=config.get("pretrained_cfg", {}).get("license", "apache-2.0"),
        dataset=config.get("dataset", ""), metrics=config.get("metrics", {}), eval_command=f"attnzoo eval {name}",
        model_kwargs=config.get("model_args", {}), pretrained_cfg=_manifest_cfg(config), url=url, hf_hub_id=hf_hub_id,
    )
    from filelock import FileLock

    with FileLock(str(hub_dir / MANIFEST) + ".lock"):  # concurrent publishes must not drop each other's records
        manifest = read_manifest(hub_dir)
        manifest[name] = record.to_manifest()
        _write_json_atomic(hub_dir / MANIFEST, {"format": 1, "checkpoints": dict(sorted(manifest.items()))})
    return record


def _manifest_cfg(config: dict[str, Any]) -> dict[str, Any]:
    keep = ("num_classes", "input_size", "mean", "std", "crop_pct", "interpolation", "pool_size")
    return {k: v for k, v in config.get("pretrained_cfg", {}).items() if k in keep}


def _write_json_atomic(path: Path, data: Any) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(data, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, path)


def _publish_hf(repo_id: str, source_dir: Path, name: str, config: dict[str, Any]) -> CheckpointRecord:
    if offline():
        raise RuntimeError("publishing to the Hugging Face Hub needs a network; unset ATTNZOO_OFFLINE/HF_HUB_OFFLINE")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(source_dir), commit_message=f"Add {name}")
    arch, tag = name.split(".", 1)
    weights = source_dir / WEIGHTS_FILE
    return CheckpointRecord(arch=arch, tag=tag, task=config["task"], file=WEIGHTS_FILE, sha256=sha256_of(weights),
                            size=weights.stat().st_size, metrics=config.get("metrics", {}), hf_hub_id=repo_id,
                            model_kwargs=config.get("model_args", {}), pretrained_cfg=_manifest_cfg(config))
