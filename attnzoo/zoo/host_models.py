"""Entrypoints of the model families built on a host library's classes (PyG, smp), registered without importing it.

``import attnzoo`` registers every model, but importing PyTorch Geometric and segmentation-models-pytorch would cost a
timm user seconds for models they may never build. The classes stay where they are, :mod:`attnzoo.zoo.tangnn`
(subclasses of PyG's ``BasicGNN``) and :mod:`attnzoo.zoo.smp_bridge` (an smp encoder, a subclass of ``smp.Unet``);
this module imports neither: it registers their entrypoints, and each entrypoint imports its family's module when
it is called.

smp's encoder table is a plain dict filled when smp is imported, with no plugin or entry-point mechanism, so the
MK-UNet encoders (``smp.Unet('attnzoo-mkunet_t', ...)``) enter it through :func:`register_smp_encoders_on_import`:
at once when smp is already imported, otherwise right after smp's own import has run (a one-shot post-import hook
on ``sys.meta_path``). Both import orders, attnzoo then smp and smp then attnzoo, see the encoders.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from attnzoo.zoo._registry import register_model

if TYPE_CHECKING:
    import torch.nn as nn

    from attnzoo.zoo.smp_bridge import AttentionUnet
    from attnzoo.zoo.tangnn import TANGNN, TANGNN_LC, TANGNNGraph

__all__ = ["register_smp_encoders_on_import", "smp_unet_ela", "smp_unet_ulsam", "tangnn", "tangnn_graph",
           "tangnn_lc"]

SMP = "segmentation_models_pytorch"


class _CallAfterExec(importlib.abc.Loader):
    """A module's own loader, followed by ``callback(module)`` once the module's code has run."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[ModuleType], None]) -> None:
        self.loader, self.callback = loader, callback

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        # the module keeps its own loader (for importlib.reload, resources); the hook's work is done
        module.__loader__ = module.__spec__.loader = self.loader
        self.callback(module)

    def __getattr__(self, name: str) -> Any:  # is_package, get_code, get_resource_reader, ...
        return getattr(self.loader, name)


class AfterImport(importlib.abc.MetaPathFinder):
    """A one-shot post-import hook: runs ``callback(module)`` right after module ``name`` is first imported.

    It finds nothing itself: it asks the other finders for ``name``'s spec and wraps the spec's loader. It leaves
    ``sys.meta_path`` once the module's code has run, so that a failed import of ``name`` is hooked again on retry.
    """

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != self.name:
            return None
        for finder in [f for f in sys.meta_path if f is not self]:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None:
            spec.loader = _CallAfterExec(spec.loader, self._imported)
        return spec

    def _imported(self, module: ModuleType) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.callback(module)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.callback.__qualname__})"


def _import_smp_bridge(_: ModuleType | None = None) -> None:
    importlib.import_module("attnzoo.zoo.smp_bridge")  # its import registers the encoders (idempotent)


def register_smp_encoders_on_import() -> None:
    """Put the MK-UNet encoders in smp's encoder table now if smp is imported, else as soon as it is."""
    if SMP in sys.modules:
        _import_smp_bridge()
    elif not any(isinstance(f, AfterImport) and f.name == SMP for f in sys.meta_path):
        sys.meta_path.insert(0, AfterImport(SMP, _import_smp_bridge))


def _build(cls: type[nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    return cls(**kwargs).to(device=device, dtype=dtype)


@register_model("graph")
def tangnn(**kwargs: Any) -> TANGNN:
    """TANGNN (``in_channels``, ``hidden_channels``, ``num_layers``, ``out_channels``, ``m``, ``heads``, ...)."""
    from attnzoo.zoo.tangnn import TANGNN

    return _build(TANGNN, kwargs)


@register_model("graph")
def tangnn_lc(**kwargs: Any) -> TANGNN_LC:
    """TANGNN-LC: layer outputs concatenated before the head."""
    from attnzoo.zoo.tangnn import TANGNN_LC

    return _build(TANGNN_LC, kwargs)


@register_model("graph")
def tangnn_graph(**kwargs: Any) -> TANGNNGraph:
    """TANGNN with a global pooling readout and an MLP head: one output row per graph (``readout``, ...)."""
    from attnzoo.zoo.tangnn import TANGNNGraph

    return _build(TANGNNGraph, kwargs)


@register_model("segmentation")
def smp_unet_ela(**kwargs: Any) -> AttentionUnet:
    """smp U-Net (resnet18 encoder by default) with ELA attention in every decoder block."""
    from attnzoo.zoo.smp_bridge import AttentionUnet

    kwargs.setdefault("encoder_name", "resnet18")
    return AttentionUnet(decoder_attention="ela", **kwargs)


@register_model("segmentation")
def smp_unet_ulsam(**kwargs: Any) -> AttentionUnet:
    """smp U-Net (resnet18 encoder by default) with ULSAM attention in every decoder block."""
    from attnzoo.zoo.smp_bridge import AttentionUnet

    kwargs.setdefault("encoder_name", "resnet18")
    return AttentionUnet(decoder_attention="ulsam", **kwargs)


register_smp_encoders_on_import()
