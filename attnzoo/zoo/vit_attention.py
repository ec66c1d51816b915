"""timm ViTs with the wave-2 attention methods (MoH, gated attention, Flowformer, the minimal transformer),
registered in attnzoo and timm.

Each is timm's ``VisionTransformer`` (its patch embedding, class token, position embedding, init, head and
feature API) with the method in the ``attn_layer=`` or ``block_fn=`` slot; every ViT argument can be overridden.

- ``flowformer_deit_small_patch16_224``: the paper's "DeiT + Flowformer" row (DeiT-S with Flow-Attention in
  every block; 22M parameters, 4.2 GFLOPs against DeiT-S's 4.6, top-1 80.0 -- README figure ``pic/CV_results.png``).
  The authors published no code for this row; the DeiT-S trunk (384 wide, 12 blocks, 6 heads) is DeiT's.
- ``moh_vit_{small,base}_patch16_224_{90,75}``: DeiT-S/B trunks with the per-block head splits of the authors'
  plain-transformer configs ``MoH-DiT-{S,B}/2-{90,75}`` (``MoH-DiT/models.py``: same 12-block widths and heads as
  DeiT-S/B). The authors' ImageNet "MoH-ViT" is TransNeXt, a 4-stage hierarchical model with aggregated attention,
  not a plain ViT; no authors' numbers exist for these classifiers. ``shared_heads``/``routed_heads`` (an int for
  every block or one per block) override the split; for another ``depth`` the authors' 12-block split is sampled
  at evenly spaced blocks (block i takes layer ``int((i + 0.5) * 12 / depth)``).
- ``gated_vit_small_patch16_224``: DeiT-S with the paper's G1 gate (``gate='elementwise'`` or ``'headwise'``).
  The paper trains only language models; this trunk is attnzoo's choice.
- ``minimal_vit_small_patch16_224``: DeiT-S width and depth with MLP-free blocks and the paper's reduced attention
  (``qk``, ``vo``; default symmetric similarity, 6 heads). The paper runs 6 encoders on MNIST/CIFAR-10 at a width
  it does not state; this trunk is attnzoo's choice.

``ATTENTION_MAC_HOOKS`` prices the attention products (and MoH's/gated gating) that module-hook MAC counters miss,
for timm's ``Attention`` too: ``count_macs(model, x, custom_hooks=ATTENTION_MAC_HOOKS)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn
from timm.layers import Attention
from timm.models import VisionTransformer
from timm.models.vision_transformer import Block

from attnzoo.layers.flowformer import FlowAttention
from attnzoo.layers.gated_attention import GatedAttention
from attnzoo.layers.minimal_transformer import MinimalAttention, MinimalBlock
from attnzoo.layers.moh import MoHAttention
from attnzoo.profiling import sdpa_product_macs
from attnzoo.zoo._registry import build_classifier, classifier_cfg, hub_default_cfgs, register_model

__all__ = ["ATTENTION_MAC_HOOKS", "MOH_DIT_SPLITS", "moh_block_fn", "moh_split_for_depth"]

# (shared_heads, routed_heads) per block of the authors' MoH-DiT configs (MoH-DiT/models.py)
MOH_DIT_SPLITS: dict[str, tuple[list[int], list[int]]] = {
    "S_90": ([3] * 8 + [6] * 4, [2] * 8 + [0] * 4),
    "S_75": ([2, 2] + [3] * 8 + [6, 6], [1] * 6 + [2] * 4 + [0, 0]),
    "B_90": ([6] * 5 + [7] * 5 + [12] * 2, [4] * 10 + [0] * 2),
    "B_75": ([4, 4] + [6] * 8 + [12] * 2, [2, 2] + [3] * 8 + [0] * 2),
}


def _product_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    x = inputs[0]
    return module.product_macs(x.shape[0], x.shape[1])


def _timm_attention_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    x = inputs[0]
    gate = x.shape[0] * x.shape[1] * module.attn_dim if module.gate is not None else 0
    return sdpa_product_macs(x.shape[0], module.num_heads, x.shape[1], x.shape[1], module.head_dim) + gate


ATTENTION_MAC_HOOKS: dict[type[nn.Module], Callable[..., int]] = {
    Attention: _timm_attention_hook,
    **{cls: _product_hook for cls in (MoHAttention, GatedAttention, FlowAttention, MinimalAttention)},
}


def moh_split_for_depth(split: int | Sequence[int], depth: int, name: str) -> list[int]:
    """One value per block: an int for every block, a list of ``depth`` values as given, or a list of another
    length sampled at evenly spaced blocks."""
    if isinstance(split, int):
        return [split] * depth
    split = list(split)
    if not split:
        raise ValueError(f"{name}={split!r}: expected an int or a non-empty list of ints")
    if len(split) == depth:
        return split
    return [split[int((i + 0.5) * len(split) / depth)] for i in range(depth)]


def moh_block_fn(shared_heads: Sequence[int], routed_heads: Sequence[int]) -> Callable[..., Block]:
    """A timm ``block_fn``: timm's Block whose attention is MoH with block ``depth``'s head split."""

    def block_fn(depth: int = 0, attn_layer: type[nn.Module] | None = None, **kwargs: Any) -> Block:
        split = MoHAttention.configure(shared_heads=shared_heads[depth], routed_heads=routed_heads[depth])
        return Block(depth=depth, attn_layer=split, **kwargs)

    return block_fn


def _create(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> VisionTransformer:
    out_indices = kwargs.pop("out_indices", 3)
    return build_classifier(VisionTransformer, variant, pretrained,
                            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                            **{**model_args, **kwargs})


def _create_moh(variant: str, pretrained: bool, trunk: dict[str, Any], split: str, **kwargs: Any) -> VisionTransformer:
    depth = kwargs.get("depth", trunk["depth"])
    shared, routed = MOH_DIT_SPLITS[split]
    shared = moh_split_for_depth(kwargs.pop("shared_heads", shared), depth, "shared_heads")
    routed = moh_split_for_depth(kwargs.pop("routed_heads", routed), depth, "routed_heads")
    return _create(variant, pretrained, {**trunk, "block_fn": moh_block_fn(shared, routed)}, **kwargs)


_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_VIT_CFG = dict(pool_size=None, crop_pct=0.9, fixed_input_size=True, first_conv="patch_embed.proj", classifier="head")

default_cfgs = hub_default_cfgs({name: classifier_cfg(**_VIT_CFG) for name in (
    "flowformer_deit_small_patch16_224", "gated_vit_small_patch16_224", "minimal_vit_small_patch16_224",
    "moh_vit_small_patch16_224_90", "moh_vit_small_patch16_224_75", "moh_vit_base_patch16_224_90",
    "moh_vit_base_patch16_224_75")})


@register_model("classification")
def flowformer_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-S with Flow-Attention in every block, the paper's "DeiT + Flowformer" (22.05M params)."""
    return _create("flowformer_deit_small_patch16_224", pretrained, {**_SMALL, "attn_layer": FlowAttention}, **kwargs)


@register_model("classification")
def gated_vit_small_patch16_224(pretrained: bool = False, gate: str = "elementwise", **kwargs: Any
                                ) -> VisionTransformer:
    """DeiT-S with G1 gated attention (``gate``: 'elementwise' or 'headwise')."""
    return _create("gated_vit_small_patch16_224", pretrained,
                   {**_SMALL, "attn_layer": GatedAttention.configure(gate=gate)}, **kwargs)


@register_model("classification")
def minimal_vit_small_patch16_224(pretrained: bool = False, qk: str = "symmetric", vo: str = "separate",
                                  **kwargs: Any) -> VisionTransformer:
    """DeiT-S width/depth, MLP-free blocks, the minimal transformer's attention (``qk``, ``vo``)."""
    return _create("minimal_vit_small_patch16_224", pretrained,
                   {**_SMALL, "block_fn": MinimalBlock, "attn_layer": MinimalAttention.configure(qk=qk, vo=vo)},
                   **kwargs)


@register_model("classification")
def moh_vit_small_patch16_224_90(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-S with MoH, MoH-DiT-S/2-90's head split (64 of 72 heads active)."""
    return _create_moh("moh_vit_small_patch16_224_90", pretrained, _SMALL, "S_90", **kwargs)


@register_model("classification")
def moh_vit_small_patch16_224_75(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-S with MoH, MoH-DiT-S/2-75's head split (54 of 72 heads active)."""
    return _create_moh("moh_vit_small_patch16_224_75", pretrained, _SMALL, "S_75", **kwargs)


@register_model("classification")
def moh_vit_base_patch16_224_90(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-B with MoH, MoH-DiT-B/2-90's head split (129 of 144 heads active)."""
    return _create_moh("moh_vit_base_patch16_224_90", pretrained, _BASE, "B_90", **kwargs)


@register_model("classification")
def moh_vit_base_patch16_224_75(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-B with MoH, MoH-DiT-B/2-75's head split (108 of 144 heads active)."""
    return _create_moh("moh_vit_base_patch16_224_75", pretrained, _BASE, "B_75", **kwargs)
