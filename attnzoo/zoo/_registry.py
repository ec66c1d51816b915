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
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

TASKS = ("classification", "segmentation", "graph", "bev")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    entrypoint: Callable[..., nn.Module]


_MODELS: dict[str, ModelEntry] = {}


def split_name(name: str) -> tuple[str, str | None]:
    """'arch.tag' -> ('arch', 'tag'); 'arch' -> ('arch', None)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"model name must be a non-empty str, got {name!r}")
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


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
    """
    from timm.models import generate_default_cfgs

    from attnzoo import hub

    cfgs: dict[str, dict[str, Any]] = {}
    for arch, base in base_cfgs.items():
        # the base cfg comes first, so it stays the default tag: a published checkpoint's cfg (say 10 classes, one
        # 28x28 channel) must not change what `create_model(arch)` builds
        cfgs[f"{arch}.untrained"] = dict(base)
        for record in hub.records_for(arch):
            # a weight source makes timm count the tag as pretrained; loading still goes through attnzoo.hub
            sources = {"file": str(Path(record.hub_dir) / record.file) if record.hub_dir else None,
                       "url": record.url or "", "hf_hub_id": record.hf_hub_id or ""}
            cfgs[f"{arch}.{record.tag}"] = {**base, **record.pretrained_cfg, **sources}
    default_cfgs = generate_default_cfgs(cfgs)
    for default_cfg in default_cfgs.values():  # timm promotes the first tag with weights; keep the base first
        default_cfg.tags.remove("untrained")
        default_cfg.tags.appendleft("untrained")
    return default_cfgs


def build_classifier(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` with attnzoo defaults (feature_cfg flattening for nested stages)."""
    from timm.models import build_model_with_cfg

    kwargs.setdefault("feature_cfg", dict(flatten_sequential=True))
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


# create_model/timm arguments that steer loading; they are not model arguments and are not saved with a model
_LOADING_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "checkpoint_path", "allow_pickle",
                   "features_only", "out_indices", "feature_cls", "feature_cfg")


def _hub_pretrained_cfg(arch: str, record: Any) -> dict[str, Any]:
    """timm pretrained cfg for a hub record: the architecture's base cfg updated by the record's own fields."""
    from timm.models import get_pretrained_cfg

    base = get_pretrained_cfg(arch)
    return {**(base.to_dict() if base is not None else {}), **record.pretrained_cfg, "architecture": arch,
            "tag": record.tag, "hf_hub_id": record.hf_hub_id or ""}


def _wrap_entrypoint(name: str, task: str, fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    @functools.wraps(fn)
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from attnzoo import hub

        allow_pickle = kwargs.pop("allow_pickle", False)
        checkpoint_path = kwargs.pop("checkpoint_path", None)
        cache_dir = kwargs.pop("cache_dir", None)
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        explicit = overlay.pop("file", None) or checkpoint_path
        cfg = kwargs.pop("pretrained_cfg", None)
        model_args = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS}
        if task == "classification" and cfg is not None and not isinstance(cfg, str):
            # timm's own hf-hub:/local-dir: front doors hand over a resolved cfg: timm loads from its source
            return _record_config(fn(pretrained=pretrained, pretrained_cfg=cfg, **kwargs), name, task, model_args)
        path = record = None
        if pretrained:
            if explicit is not None:
                path = hub.check_loadable(explicit, allow_pickle)
            else:
                record = hub.find_record(name, cfg)
                path = hub.resolve_file(record, cache_dir=cache_dir)
                model_args = {**record.model_kwargs, **model_args}
                kwargs = {**record.model_kwargs, **kwargs}
        if task == "classification":
            if record is not None:
                cfg = _hub_pretrained_cfg(name, record)
            if path is not None:
                overlay["file"] = str(path)
            model = fn(pretrained=pretrained, pretrained_cfg=cfg, pretrained_cfg_overlay=overlay or None, **kwargs)
        else:
            model = fn(**kwargs)
            if path is not None:
                hub.load_weights(model, path, allow_pickle)
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
        name = fn.__name__
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
    from attnzoo import hub

    names = sorted(f"{r.arch}.{r.tag}" for r in hub.all_records() if r.arch in _MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def model_task(name: str) -> str:
    return model_entry(name).task
