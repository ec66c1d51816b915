"""NiNformer classifiers (Abdullah, Aydin; https://arxiv.org/abs/2403.02411), registered in attnzoo and timm.

- ``ninformer_cifar``: the authors' CIFAR-10 model (``Abdullah-88/NiNformer``, ``train.py``): a 4x4/stride-4
  patch convolution (32x32 -> 64 tokens), four :class:`~attnzoo.layers.ninformer.NiNBlock` (d=256, d_ffn=512,
  dropout 0.5, one shared pre-norm), no position embedding, no class token, no final norm, mean pooling over
  tokens and a linear head. 2,652,170 parameters for 10 classes (2,675,300 for 100).
- ``ninformer_vit_tiny_patch16``: timm's ``VisionTransformer`` (ViT-Ti/16 width and depth: d=192, 12 blocks)
  whose blocks are NiNBlocks through timm's ``block_fn`` slot, with the paper's choices where ViT offers them:
  no class token, no position embedding, average pooling, and ``mlp_ratio=2`` (the authors' d_ffn = 2d). The
  rest is ViT's: its weight init, its pre-head ``fc_norm``, its LayerNorm (eps 1e-6).

Both fix the input size at construction: the token-mixing MLPs have one input per token. Building with another
``img_size`` is supported; feeding another size raises a ValueError, and ``dynamic_img_size=True`` is refused.
Beyond the authors' model, ``ninformer_cifar`` has timm's model API (``forward_intermediates``,
``features_only`` with NCHW maps, grad checkpointing, ``reset_classifier``) and an optional head dropout
``drop_rate`` (default 0, as in the authors' code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, calculate_drop_path_rates, to_2tuple
from timm.models import VisionTransformer
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq

from attnzoo._checks import check_image_size, check_int
from attnzoo.layers.ninformer import NiNBlock
from attnzoo.zoo._registry import build_classifier, classifier_cfg, hub_default_cfgs, register_model

__all__ = ["FixedSizePatchEmbed", "NiNformer", "vit_block_fn"]

_POOLS = ("", "avg")


def _check_pool(global_pool: str) -> None:
    if global_pool not in _POOLS:
        raise ValueError(f"global_pool must be one of {_POOLS}, got {global_pool!r}")


def vit_block_fn(seq_len: int, shared_norm: bool = True) -> Callable[..., NiNBlock]:
    """A timm ``block_fn`` that builds NiNBlocks for a ``VisionTransformer`` with ``seq_len`` tokens.

    ViT's block arguments map as: ``mlp_ratio`` -> ``d_ffn = int(dim * mlp_ratio)``, ``proj_drop`` -> the
    block's MLP dropout, ``drop_path``/``norm_layer``/``act_layer`` unchanged. The attention arguments (heads,
    qkv bias, attention dropout, ...) have nothing to act on and are ignored; LayerScale is refused.

    Args:
        seq_len: tokens per image including prefix tokens, e.g. ``(img_size // patch_size) ** 2``.
        shared_norm: one LayerNorm for both pre-norms, as in the authors' code.
    """

    def block_fn(dim: int, mlp_ratio: float = 4.0, proj_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 init_values: float | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **_attention_args: Any) -> NiNBlock:
        if init_values:
            raise ValueError(f"init_values={init_values!r}: NiNformer blocks have no LayerScale, expected None")
        return NiNBlock(dim, seq_len, int(dim * mlp_ratio), dropout=proj_drop, shared_norm=shared_norm,
                        drop_path=drop_path, norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)

    return block_fn


class FixedSizePatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` that rejects other input sizes with a ValueError naming the size to build with.

    Shapes:
        input: (B, C, H, W) with (H, W) == img_size; output: (B, N, embed_dim) with N = H*W / patch_size**2.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, self.img_size, where="NiNformer")
        return super().forward(x)


class NiNformer(nn.Module):
    """The authors' NiNformer image classifier, with timm's model API.

    Args:
        img_size: input height and width; fixes the number of tokens.
        patch_size: side of the non-overlapping patches (the authors' 4 on CIFAR).
        in_chans: input channels.
        num_classes: classes of the linear head; 0 for no head.
        embed_dim: token width d.
        depth: number of NiNBlocks.
        d_ffn: hidden size of every MLP in the blocks.
        dropout: dropout inside the blocks (the authors' 0.5).
        shared_norm: one LayerNorm for both pre-norms of each block, as in the authors' code.
        drop_rate: dropout before the head (timm's ``drop_rate``; the authors have none).
        drop_path_rate: stochastic depth, rising linearly over the blocks to this rate.
        global_pool: ``'avg'`` (mean over tokens, the authors') or ``''`` (tokens out of ``forward_head``).

    Shapes:
        input: (B, in_chans, *img_size); output: (B, num_classes).
    """

    def __init__(self, img_size: int | tuple[int, int] = 32, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 10, embed_dim: int = 256, depth: int = 4, d_ffn: int = 512, dropout: float = 0.5,
                 shared_norm: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "avg", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        _check_pool(global_pool)
        check_int("depth", depth)
        dd = dict(device=device, dtype=dtype)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False
        self.patch_embed = FixedSizePatchEmbed(img_size, patch_size, in_chans, embed_dim, **dd)
        seq_len = self.patch_embed.num_patches
        rates = calculate_drop_path_rates(drop_path_rate, depth)  # plain floats: works on the meta device too
        self.blocks = nn.Sequential(*[
            NiNBlock(embed_dim, seq_len, d_ffn, dropout, shared_norm, drop_path=rate, **dd) for rate in rates])
        reduction = to_2tuple(patch_size)[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset_parameters(self) -> None:
        self.patch_embed.proj.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        if isinstance(self.head, nn.Linear):
            self.head.reset_parameters()

    def extra_repr(self) -> str:
        return (f"img_size={tuple(self.patch_embed.img_size)}, tokens={self.patch_embed.num_patches}, "
                f"global_pool={self.global_pool!r}")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=r"^blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = dict(device=self.patch_embed.proj.weight.device, dtype=self.patch_embed.proj.weight.dtype)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[torch.Tensor] | tuple[torch.Tensor,
                                                                                               list[torch.Tensor]]:
        """Block outputs for timm's feature API; ``norm`` has no effect (the model has no final norm).

        Shapes:
            intermediates: (B, d, H/p, W/p) for 'NCHW', (B, N, d) for 'NLC'; final: (B, N, d).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        x = self.patch_embed(x)  # (B, N, d)
        intermediates = []
        for i, block in enumerate(blocks):
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if i in take_indices:
                intermediates.append(x)
        if output_fmt == "NCHW":
            grid_h, grid_w = self.patch_embed.grid_size
            intermediates = [t.transpose(1, 2).reshape(t.shape[0], -1, grid_h, grid_w) for t in intermediates]
            # (B, d, H/p, W/p)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, d)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)  # (B, d)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_ninformer_vit(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    if kwargs.get("dynamic_img_size"):
        raise ValueError("dynamic_img_size=True: NiNformer's token-mixing MLPs fix the token count at construction; "
                         "build the model with the img_size you will feed it")
    shared_norm = kwargs.pop("shared_norm", True)
    out_indices = kwargs.pop("out_indices", 3)
    img_size = to_2tuple(kwargs.get("img_size", 224))
    patch_size = to_2tuple(kwargs["patch_size"])
    prefix_tokens = int(kwargs.get("class_token", True)) + kwargs.get("reg_tokens", 0)
    seq_len = (img_size[0] // patch_size[0]) * (img_size[1] // patch_size[1]) + prefix_tokens
    return build_classifier(VisionTransformer, variant, pretrained, block_fn=vit_block_fn(seq_len, shared_norm),
                            embed_layer=FixedSizePatchEmbed,
                            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


_TOKEN_CFG = dict(pool_size=None, fixed_input_size=True, first_conv="patch_embed.proj", classifier="head")

default_cfgs = hub_default_cfgs({
    "ninformer_cifar": classifier_cfg(num_classes=10, input_size=(3, 32, 32), crop_pct=1.0,
                                      interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                      **_TOKEN_CFG),
    "ninformer_vit_tiny_patch16": classifier_cfg(**_TOKEN_CFG),
})


@register_model("classification")
def ninformer_cifar(pretrained: bool = False, **kwargs: Any) -> NiNformer:
    """The authors' CIFAR-10 NiNformer: 4x4 patches, d=256, d_ffn=512, 4 blocks, dropout 0.5 (2.652M params)."""
    out_indices = kwargs.pop("out_indices", 3)
    return build_classifier(NiNformer, "ninformer_cifar", pretrained,
                            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model("classification")
def ninformer_vit_tiny_patch16(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 with NiNBlocks: no class token, no position embedding, mean pooling, mlp_ratio 2."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, mlp_ratio=2.0, class_token=False, global_pool="avg",
                      pos_embed="none")
    return _create_ninformer_vit("ninformer_vit_tiny_patch16", pretrained, **{**model_args, **kwargs})
