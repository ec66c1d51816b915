"""Shared pieces of the timm ViT attention layers (MoH, gated attention, Flowformer, the minimal transformer).

- argument checks whose ValueErrors name the argument, its value and the rule;
- :class:`ConfigurableLayer`: ``Layer.configure(**fixed)`` gives a *subclass* with those arguments fixed, for timm's
  ``attn_layer=``/``block_fn=`` slots (timm calls ``issubclass`` on ``attn_layer``, so a ``functools.partial``
  raises a TypeError there);
- :func:`attend`: timm's attention core (SDPA when ``use_fused_attn()``, the explicit softmax otherwise), so every
  layer follows ``TIMM_FUSED_ATTN`` exactly like ``timm.layers.Attention``;
"""

from __future__ import annotations

import copyreg
import inspect
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import maybe_add_mask, resolve_self_attn_mask

from attnzoo._checks import check_int

__all__ = ["ConfigurableLayer", "ConfiguredLayerType", "attend", "check_choice", "check_heads",
           "configured_class", "refuse_flag"]


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...], why: str = "") -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {name}={value!r} is not one of {choices}{why}")
    return value


def check_heads(owner: str, dim: object, num_heads: object, head_dim: object = None) -> int:
    """The per-head width: ``head_dim`` if given, else ``dim // num_heads`` (which must divide exactly)."""
    check_int("dim", dim, where=owner)
    check_int("num_heads", num_heads, where=owner)
    if head_dim is not None:
        return check_int("attn_head_dim", head_dim, where=owner)
    if dim % num_heads:
        raise ValueError(f"{owner}: dim={dim} is not divisible by num_heads={num_heads}; the head width is "
                         f"dim / num_heads (or pass attn_head_dim)")
    return dim // num_heads


def refuse_flag(owner: str, name: str, value: object, why: str) -> None:
    """A timm Block argument the method has no counterpart for: accepted at its neutral value only."""
    if value:
        raise ValueError(f"{owner}: {name}={value!r} is not supported: {why}")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, fused: bool, attn_drop: nn.Dropout,
           attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` per head, as ``timm.layers.Attention`` computes it.

    Shapes:
        q: (B, H, L, d); k: (B, H, S, d); v: (B, H, S, d_v); output: (B, H, L, d_v).
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                              dropout_p=attn_drop.p if attn_drop.training else 0.0)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, L, S)
    scores = maybe_add_mask(scores, resolve_self_attn_mask(q.shape[-2], scores, attn_mask, is_causal))
    return attn_drop(scores.softmax(dim=-1)) @ v


class ConfiguredLayerType(type):
    """Metaclass of the classes ``configure`` makes: they pickle as ``(root class, fixed arguments)``.

    A class is normally pickled by its qualified name, which a class made at run time does not have; timm keeps the
    ``attn_layer`` class in ``model._model_args``, so pickling (or ``torch.save``) of a whole model needs this.
    """


def configured_class(root: type, fixed: dict[str, Any]) -> type:
    return root.configure(**fixed)


copyreg.pickle(ConfiguredLayerType, lambda cls: (configured_class, (cls.configured_root, dict(cls.configured))))


class ConfigurableLayer:
    """Mixin: ``Layer.configure(**fixed)`` returns a subclass whose constructor always uses ``fixed``.

    The fixed values replace whatever the host passes (timm's ``Block`` passes ``num_heads``, ``qkv_bias``, ...),
    so ``timm.create_model('vit_small_patch16_224', attn_layer=MoHAttention.configure(shared_heads=3,
    routed_heads=2))`` builds every block's attention with that head split. Configured classes (and so their
    instances and the timm models holding them) pickle and deep-copy, see :class:`ConfiguredLayerType`.
    """

    configured: dict[str, Any] = {}

    @classmethod
    def configure(cls, **fixed: Any) -> type:
        root = cls.__dict__.get("configured_root", cls)
        parameters = inspect.signature(root.__init__).parameters
        unknown = sorted(set(fixed) - set(parameters) - {"self"})
        if unknown:
            raise TypeError(f"{root.__name__}.configure: unknown argument(s) {unknown}; the constructor takes "
                            f"{[p for p in parameters if p != 'self']}")
        fixed = {**cls.configured, **fixed}

        def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
            root.__init__(self, *args, **{**kwargs, **fixed})

        settings = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
        return ConfiguredLayerType(root.__name__, (root,), {
            "__init__": __init__, "__module__": root.__module__, "configured": fixed, "configured_root": root,
            "__qualname__": f"{root.__qualname__}.configure({settings})"})
