"""The attnzoo model registry: one entry per architecture, for every task, with timm mirroring for classifiers.

A zoo module declares its architectures like a timm model file::

    default_cfgs = hub_default_cfgs({'ela_resnet18': classifier_cfg(first_conv='conv1', classifier='fc')})

    @register_model('classification')
    def ela_resnet18(pretrained=False, **kwargs):
        return build_classifier(ResNet, 'ela_resnet18', pretrained, block=..., layers=[2, 2, 2, 2], **kwargs)

``register_model`` wraps the entrypoint so that ``pretrained=True`` always goes through :mod:`attnzoo.hub`
(sha256-verified, safetensors by default) whichever front door is used: ``attnzoo.create_model`` or
``timm.create_model``. Classifiers hand the verified file to timm's ``build_model_with_cfg`` (which adapts
``num_classes`` and ``in_chans`` and wraps ``features_only``); other tasks load it strictly into the module.

The hub only finds and checks files; building a model, recording how it was built (``save_pretrained``) and
rebuilding it (``from_pretrained``) happen here.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import torch.nn as nn

from attnzoo import hub
from attnzoo.hub import TASKS, split_name

__all__ = ["TASKS", "ModelEntry", "build_classifier", "classifier_cfg", "create_model", "from_pretrained",
           "hub_default_cfgs", "list_models", "list_pretrained", "model_entry", "model_tags", "model_task",
           "register_model", "save_pretrained", "split_name", "tag_record"]

UNTRAINED = "untrained"  # the tag of an architecture's base config


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    entrypoint: Callable[..., nn.Module]


_MODELS: dict[str, ModelEntry] = {}


def classifier_cfg(**kwargs: Any) -> dict[str, Any]:
    """timm-style default cfg for an attnzoo image classifier (ImageNet defaults, overridable)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
               interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               license="apache-2.0")
    cfg.update(kwargs)
    return cfg


def hub_default_cfgs(base_cfgs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """timm ``default_cfgs`` for the given architectures plus one tag per checkpoint in the hub manifest.

    Each published ``arch.tag`` inherits the architecture's base cfg, updated with the manifest record's
    ``pretrained_cfg`` (num_classes, input_size, mean, std, ...) and its Hugging Face id, so that timm
    counts it as pretrained. The base cfg itself is the ``.untrained`` tag and stays the default.

    This runs at import: a malformed hub folder (``$ATTNZOO_HUB_DIR``) is left out here and raises when it is used.
    """
    from timm.models import generate_default_cfgs

    cfgs: dict[str, dict[str, Any]] = {}
    for arch, base in base_cfgs.items():
        # the base cfg comes first, so it stays the default tag: a published checkpoint's cfg (say 10 classes, one
        # 28x28 channel) must not change what `create_model(arch)` builds
        cfgs[f"{arch}.{UNTRAINED}"] = dict(base)
        for record in hub.records_for(arch, skip_invalid=True):
            try:
                file = str(hub.contained(record.hub_dir, record.file)) if record.hub_dir else None
            except hub.UnsafePathError:
                continue  # refused, naming the file, when the checkpoint is loaded
            # a weight source makes timm count the tag as pretrained; loading still goes through attnzoo.hub
            sources = {"file": file, "url": record.url or "", "hf_hub_id": record.hf_hub_id or ""}
            cfgs[f"{arch}.{record.tag}"] = {**base, **record.pretrained_cfg, **sources}
    default_cfgs = generate_default_cfgs(cfgs)
    for default_cfg in default_cfgs.values():  # timm promotes the first tag with weights; keep the base first
        default_cfg.tags.remove(UNTRAINED)
        default_cfg.tags.appendleft(UNTRAINED)
    return default_cfgs


def build_classifier(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` with attnzoo defaults (feature_cfg flattening for nested stages)."""
    from timm.models import build_model_with_cfg

    kwargs.setdefault("feature_cfg", dict(flatten_sequential=True))
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


# create_model/timm arguments that steer loading; they are not model arguments and are not saved with a model
_LOADING_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "checkpoint_path", "allow_pickle",
                   "allow_nonfinite", "features_only", "out_indices", "feature_cls", "feature_cfg")
# integer model arguments every factory checks: (smallest value, what it means)
_COUNTS = {"num_classes": (0, "0 builds the model without a classifier head, as in timm"),
           "in_chans": (1, "the number of input channels")}


def _check_arguments(name: str, pretrained: Any, kwargs: dict[str, Any]) -> None:
    if not isinstance(pretrained, bool):
        raise TypeError(f"{name}: pretrained must be True or False, got {pretrained!r} ({type(pretrained).__name__})")
    for key, (minimum, meaning) in _COUNTS.items():
        value = kwargs.get(key)
        if value is None:
            continue
        problem = f"{name}: {key} must be an int >= {minimum} ({meaning}), got {value!r}"
        if not isinstance(value, Integral) or isinstance(value, bool):
            raise TypeError(f"{problem} ({type(value).__name__})")
        if value < minimum:
            raise ValueError(problem)


def model_tags(arch: str) -> list[str]:
    """The tags ``arch`` can be built with: 'untrained' (its base config) and one per published checkpoint."""
    return [UNTRAINED, *sorted({r.tag for r in hub.records_for(arch)} - {UNTRAINED})]


def tag_record(arch: str, tag: str) -> hub.CheckpointRecord | None:
    """The hub record of ``arch.tag`` (None for the base config); a ValueError listing the tags if it is unknown."""
    hub.check_name_part(tag, "tag", f"{arch}.{tag}")
    if tag == UNTRAINED:
        return None
    for record in hub.records_for(arch):
        if record.tag == tag:
            return record
    raise ValueError(f"unknown tag {tag!r} for {arch!r}; its tags are: {', '.join(model_tags(arch))} "
                     "(`attnzoo.list_pretrained()` lists the published checkpoints)")


def _hub_pretrained_cfg(arch: str, record: Any) -> dict[str, Any]:
    """timm pretrained cfg for a hub record: the architecture's base cfg updated by the record's own fields."""
    from timm.models import get_pretrained_cfg

    base = get_pretrained_cfg(arch)
    return {**(base.to_dict() if base is not None else {}), **record.pretrained_cfg, "architecture": arch,
            "tag": record.tag, "hf_hub_id": record.hf_hub_id or ""}


def _wrap_entrypoint(name: str, task: str, fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    @functools.wraps(fn)
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        allow_pickle = kwargs.pop("allow_pickle", False)
        allow_nonfinite = kwargs.pop("allow_nonfinite", False)
        checkpoint_path = kwargs.pop("checkpoint_path", None)
        cache_dir = kwargs.pop("cache_dir", None)
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        explicit = overlay.pop("file", None) or checkpoint_path
        cfg = kwargs.pop("pretrained_cfg", None)
        _check_arguments(name, pretrained, kwargs)
        model_args = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS}
        if task == "classification" and cfg is not None and not isinstance(cfg, str):
            # timm's own hf-hub:/local-dir: front doors hand over a resolved cfg: timm loads from its source
            return _record_config(fn(pretrained=pretrained, pretrained_cfg=cfg, **kwargs), name, task, model_args)
        record = tag_record(name, cfg) if isinstance(cfg, str) else None
        path = state = None
        if pretrained:
            if explicit is not None:
                path = hub.check_loadable(explicit, allow_pickle)
            else:
                record = record or hub.find_record(name, cfg)
                path = hub.resolve_file(record, cache_dir=cache_dir)
                model_args = {**record.model_kwargs, **model_args}
                kwargs = {**record.model_kwargs, **kwargs}
            state = hub.load_state_dict(path, allow_pickle, allow_nonfinite)
        if task == "classification":
            if record is not None:
                cfg = _hub_pretrained_cfg(name, record)
            if path is not None:
                overlay["file"] = str(path)
            model = fn(pretrained=pretrained, pretrained_cfg=cfg, pretrained_cfg_overlay=overlay or None, **kwargs)
            if state is not None:  # timm loaded (and adapted) the file; its dtypes are checked against the model's
                hub.check_state_dict(state, model.state_dict(), path, name, only_dtypes=True)
        else:
            model = fn(**kwargs)
            if state is not None:
                hub.check_state_dict(state, model.state_dict(), path, name)
                model.load_state_dict(state, strict=True)
        return _record_config(model, name, task, model_args)

    return entrypoint


def _record_config(model: nn.Module, name: str, task: str, model_args: dict[str, Any]) -> nn.Module:
    """Remember how the model was built, so save_pretrained can write a config that rebuilds it."""
    model.attnzoo_config = {"architecture": name, "task": task, "model_args": model_args}
    return model


def register_model(task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an entrypoint under its function name for ``task``; classifiers are mirrored into timm."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = hub.check_name_part(fn.__name__, "architecture")
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered by {_MODELS[name].entrypoint.__module__}")
        entrypoint = _wrap_entrypoint(name, task, fn)
        _MODELS[name] = ModelEntry(name, task, entrypoint)
        if task == "classification":
            from timm.models import is_model
            from timm.models import register_model as timm_register_model

            if is_model(name):
                raise ValueError(f"{name!r} is already a timm model; attnzoo never replaces a timm entrypoint")
            timm_register_model(entrypoint)
        return entrypoint

    return decorator


def model_entry(name: str) -> ModelEntry:
    arch, _ = split_name(name)
    if arch not in _MODELS:
        close = difflib.get_close_matches(arch, list(_MODELS), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} `attnzoo.list_models()` lists all {len(_MODELS)} models.")
    return _MODELS[arch]


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by ``'arch'`` or ``'arch.tag'``; ``pretrained=True`` loads the hub checkpoint.

    Like timm, keyword arguments whose value is None are dropped, so optional settings can be passed blindly.
    ``allow_nonfinite=True`` loads a checkpoint holding NaN/inf values (refused by default).
    """
    entry = model_entry(name)
    _, tag = split_name(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if tag is not None:
        kwargs["pretrained_cfg"] = tag
    return entry.entrypoint(pretrained=pretrained, **kwargs)


def list_models(pattern: str = "*", pretrained: bool = False, task: str | None = None) -> list[str]:
    """Registered names matching ``pattern``; with ``pretrained=True`` the 'arch.tag' names that have weights."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    if pretrained:
        names = list_pretrained()
    else:
        names = sorted(_MODELS)
    return [n for n in names
            if fnmatch.fnmatch(n, pattern) and (task is None or _MODELS[split_name(n)[0]].task == task)]


def list_pretrained(pattern: str = "*") -> list[str]:
    """'arch.tag' of every published checkpoint whose architecture is registered."""
    names = sorted(f"{r.arch}.{r.tag}" for r in hub.all_records() if r.arch in _MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def model_task(name: str) -> str:
    return model_entry(name).task


# ---------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained: the zoo records how a model was built; the hub writes and checks the files

# timm pretrained-cfg keys a saved classifier keeps, so timm's local-dir:/hf-hub: loaders rebuild its data config
_SAVED_CFG_KEYS = ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes", "pool_size", "first_conv",
                   "classifier", "license")


def save_pretrained(model: nn.Module, directory: str | os.PathLike, metrics: dict[str, float] | None = None,
                    dataset: str = "") -> Path:
    """Write ``model.safetensors``, a timm-compatible ``config.json`` and a README model card to ``directory``."""
    built = getattr(model, "attnzoo_config", None)
    if built is None:
        raise ValueError(f"{type(model).__name__} was not built by attnzoo.create_model (no attnzoo_config), so "
                         "its architecture and arguments are unknown; build it with attnzoo.create_model(...)")
    config: dict[str, Any] = {"architecture": built["architecture"], "task": built["task"],
                              "model_args": built["model_args"], "metrics": dict(metrics or {}), "dataset": dataset}
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if pretrained_cfg:
        config["pretrained_cfg"] = {k: pretrained_cfg[k] for k in _SAVED_CFG_KEYS if k in pretrained_cfg}
        config["license"] = pretrained_cfg.get("license", "apache-2.0")
        config["num_classes"] = getattr(model, "num_classes", pretrained_cfg.get("num_classes"))
        config["num_features"] = getattr(model, "num_features", None)
        config["global_pool"] = str(getattr(getattr(model, "global_pool", None), "pool_type", "avg") or "avg")
    return hub.write_pretrained(directory, model.state_dict(), config)


def from_pretrained(directory_or_hub_id: str | os.PathLike, revision: str | None = None, allow_nonfinite: bool = False,
                    **kwargs: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained` from a folder or a Hugging Face Hub repo id.

    ``kwargs`` override the saved model arguments. The weights are verified against the sha256 in config.json
    and loaded strictly.
    """
    config, weights = hub.read_pretrained(directory_or_hub_id, revision)
    arch = config["architecture"]
    if model_task(arch) != config["task"]:
        raise ValueError(f"{directory_or_hub_id}: {hub.CONFIG} field 'task' is {config['task']!r}, but {arch!r} is "
                         f"a {model_task(arch)} model")
    model = create_model(arch, **{**config["model_args"], **kwargs})
    return hub.load_weights(model, weights, allow_nonfinite=allow_nonfinite)
