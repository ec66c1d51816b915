"""NAT and DiNAT classifiers (arXiv 2204.07143, 2209.15001) as timm models, with the authors' module names.

Architecture, configs and initialisation follow the authors' ``classification/nat.py`` and ``dinat.py``
(``SHI-Labs/Neighborhood-Attention-Transformer``): a tokenizer of two 3x3/s2 convs (no norm or activation between
them) and a LayerNorm, four levels of pre-norm :class:`NATLayer` (neighborhood attention with NAT's relative
positional bias, then an MLP; per-channel layer scale ``gamma1``/``gamma2`` in NAT-Small/Base and DiNAT-Base)
separated by 3x3/s2 conv downsamplers (no bias) with a LayerNorm, then a LayerNorm, mean pooling and a linear head.
Kernel 7 everywhere; DiNAT alternates dilation 1 with the dilations the authors chose for 224-px inputs (8, 4, 2
and 1 at 56, 28, 14 and 7 px). The state_dict keys are the authors' (``patch_embed.proj.0``, ``levels.i.blocks.j.
attn.rpb``, ``levels.i.downsample.reduction``, ...), so their checkpoints load by name.

Parameters at 1,000 classes (tests/zoo/test_nat_models.py) are 19.98M / 27.90M / 50.74M / 89.77M for NAT-Mini / Tiny /
Small / Base (papers: 20M / 28M / 51M / 90M) and DiNAT-Small is 23,616 parameters lighter (no layer scale); the
multiply-accumulates at 224 px, counted by ``FlopCounterMode`` with the neighborhood attention's two products, are
2.7 / 4.3 / 7.8 / 13.7 G as in the papers (whose "FLOPs" are fvcore MACs).

timm's model API on top of the authors' model: ``forward_features`` returns the final-norm map as NCHW (the authors
pool inside it), ``forward_head``/``reset_classifier``/``global_pool`` ('avg' or ''), ``forward_intermediates`` and
``features_only`` with each level's output before its downsampler (where the authors' detection backbones tap
it), grad checkpointing, ``no_weight_decay`` naming the ``rpb`` tables (the authors' ``no_weight_decay_keywords``).
``drop_rate`` is the authors' (dropout after the tokenizer, in the MLPs and after the attention projection), not a
head dropout. Any input size works: the attention layers pad maps smaller than their window, as NATTEN 0.14 did.

What was checked, and against what (the spec's open items, ``specs/wave2.md`` sections 2 and 8):

* verified in the authors' code (``classification/nat.py``, ``dinat.py`` at HEAD ``d334f5b``): every size's depths,
  heads, width, MLP ratio, drop-path rate, kernel 7, layer scale (NAT-Small/Base and DiNAT-Base 1e-5, DiNAT-Small
  none; an older ``dinat.py``, ``05de322``, had no layer scale in DiNAT-Base either) and the 224-px dilations;
* verified in the authors' READMEs (``NAT.md``, ``DiNAT.md``): 20M / 28M / 51M / 90M and 2.7 / 4.3 / 7.8 / 13.7 G
  for both families, which the tests reproduce; the paper PDFs' tables were not read (the NAT abstract's Tiny
  figures, 28M / 4.3 G, agree);
* not verified: loading an authors' checkpoint (no network here; only the key names are checked, from the module
  attribute names), and the Hugging Face ``transformers`` port's key names (not inspected).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, trunc_normal_
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from attnzoo.layers.neighborhood import NeighborhoodAttention2D
from attnzoo.zoo._registry import build_classifier, classifier_cfg, hub_default_cfgs, register_model

__all__ = ["DINAT_DILATIONS", "NAT", "ConvDownsampler", "ConvTokenizer", "NATBlock", "NATLayer"]

_POOLS = ("", "avg")


def _check_pool(global_pool: str) -> None:
    if global_pool not in _POOLS:
        raise ValueError(f"global_pool must be one of {_POOLS}, got {global_pool!r}")


def _dinat_dilations(depths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The authors' 224-px DiNAT schedule: NA and DiNA alternate, DiNA at 8, 4, 2 (level 3 is 7x7: all 1)."""
    return tuple(tuple(1 if j % 2 == 0 else dil for j in range(depth)) for depth, dil in zip(depths, (8, 4, 2, 1),
                                                                                            strict=True))


DINAT_DILATIONS = {"mini": _dinat_dilations((3, 4, 6, 5)), "other": _dinat_dilations((3, 4, 18, 5))}


class ConvTokenizer(nn.Module):
    """Two 3x3/s2 convs (in_chans -> C/2 -> C, with biases, nothing between them), then LayerNorm in NHWC.

    Shapes:
        input: (B, in_chans, H, W); output: (B, ceil(H / 4), ceil(W / 4), C).
    """

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: type[nn.Module] = nn.LayerNorm,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj = nn.Sequential(nn.Conv2d(in_chans, embed_dim // 2, 3, 2, 1, **dd),
                                  nn.Conv2d(embed_dim // 2, embed_dim, 3, 2, 1, **dd))
        self.norm = norm_layer(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


class ConvDownsampler(nn.Module):
    """3x3/s2 conv C -> 2C without bias on the NHWC map, then LayerNorm.

    Shapes:
        input: (B, H, W, C); output: (B, ceil(H / 2), ceil(W / 2), 2C).
    """

    def __init__(self, dim: int, norm_layer: type[nn.Module] = nn.LayerNorm, device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False, **dd)
        self.norm = norm_layer(2 * dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))  # (B, H/2, W/2, 2C)


class NATLayer(nn.Module):
    """Pre-norm block ``x + DropPath(g1 * NA(LN(x)))``, then ``x + DropPath(g2 * MLP(LN(x)))``.

    Args:
        dim: channels.
        num_heads: attention heads.
        kernel_size: neighborhood size.
        dilation: neighborhood dilation.
        mlp_ratio: MLP hidden width relative to ``dim``.
        qkv_bias: bias of the attention's ``qkv``.
        qk_scale: attention logit scale (default ``head_dim ** -0.5``).
        drop: dropout after the attention projection and in the MLP.
        attn_drop: attention-probability dropout.
        drop_path: stochastic depth rate.
        layer_scale: initial value of the per-channel scales ``gamma1``/``gamma2``; None for none.
        backend: the attention op's backend.

    Shapes:
        input and output: (B, H, W, dim).
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, layer_scale: float | None = None,
                 backend: str | None = None, device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.mlp_ratio = dim, num_heads, mlp_ratio
        self.norm1 = norm_layer(dim, **dd)
        self.attn = NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation=dilation, rel_pos_bias=True,
                                            qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                                            proj_drop=drop, backend=backend, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **dd)
        self.layer_scale = layer_scale
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.empty(dim, **dd))
            self.gamma2 = nn.Parameter(torch.empty(dim, **dd))
            self.reset_layer_scale()

    def reset_layer_scale(self) -> None:
        if self.layer_scale is not None:
            nn.init.constant_(self.gamma1, self.layer_scale)
            nn.init.constant_(self.gamma2, self.layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(self.norm1(x))
        if self.layer_scale is None:
            x = x + self.drop_path(attn)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma1 * attn)
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class NATBlock(nn.Module):
    """One level: ``depth`` :class:`NATLayer` (``blocks``), then an optional :class:`ConvDownsampler`.

    Shapes:
        input: (B, H, W, dim); output: (B, H, W, dim), or (B, ceil(H / 2), ceil(W / 2), 2 dim) with ``downsample``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, kernel_size: int, dilations: Sequence[int] | None,
                 downsample: bool, drop_path: Sequence[float], norm_layer: type[nn.Module] = nn.LayerNorm,
                 device=None, dtype=None, **layer_kwargs: Any) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dilations = dilations or (1,) * depth
        if len(dilations) != depth:
            raise ValueError(f"dilations={tuple(dilations)} must have one entry per layer (depth={depth})")
        self.dim, self.depth = dim, depth
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList([
            NATLayer(dim, num_heads, kernel_size, dilation=dilations[i], drop_path=drop_path[i],
                     norm_layer=norm_layer, **layer_kwargs, **dd) for i in range(depth)])
        self.downsample = ConvDownsampler(dim, norm_layer, **dd) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class NAT(nn.Module):
    """Neighborhood Attention Transformer (and DiNAT, with ``dilations``), timm model API.

    Args:
        embed_dim: channels of level 0 (doubled at every level).
        depths: layers per level.
        num_heads: heads per level.
        mlp_ratio: MLP hidden width relative to the level's channels.
        kernel_size: neighborhood size of every layer.
        dilations: per level, one dilation per layer (DiNAT); None for NAT (all 1).
        in_chans: input channels.
        num_classes: classes of the head; 0 for none.
        global_pool: 'avg' (the authors' mean over tokens) or '' (the map out of ``forward_head``).
        qkv_bias: bias of every ``qkv`` projection.
        qk_scale: attention logit scale (default ``head_dim ** -0.5``).
        drop_rate: the authors' dropout (after the tokenizer, in MLPs, after attention projections).
        attn_drop_rate: attention-probability dropout.
        drop_path_rate: stochastic depth, rising linearly over all layers to this rate.
        layer_scale: initial value of per-channel layer scales; None for none.
        backend: the attention op's backend ('auto', 'torch', 'flex', 'triton' or None).
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, in_chans, H, W), any H and W; output: (B, num_classes).
    """

    def __init__(self, embed_dim: int = 64, depths: Sequence[int] = (3, 4, 6, 5),
                 num_heads: Sequence[int] = (2, 4, 8, 16), mlp_ratio: float = 3.0, kernel_size: int = 7,
                 dilations: Sequence[Sequence[int]] | None = None, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.2,
                 norm_layer: type[nn.Module] = nn.LayerNorm, layer_scale: float | None = None,
                 backend: str | None = None, device=None, dtype=None) -> None:
        super().__init__()
        _check_pool(global_pool)
        if len(depths) != len(num_heads) or (dilations is not None and len(dilations) != len(depths)):
            raise ValueError(f"depths={tuple(depths)}, num_heads={tuple(num_heads)} and dilations must have one entry "
                             "per level")
        dd = dict(device=device, dtype=dtype)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_levels = len(depths)
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (self.num_levels - 1))
        self.mlp_ratio = mlp_ratio
        self.kernel_size = kernel_size
        self.patch_embed = ConvTokenizer(in_chans, embed_dim, norm_layer, **dd)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = calculate_drop_path_rates(drop_path_rate, sum(depths))  # plain floats: works on the meta device
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            dim = int(embed_dim * 2 ** i)
            first = sum(depths[:i])
            self.levels.append(NATBlock(
                dim, depth, num_heads[i], kernel_size, None if dilations is None else dilations[i],
                downsample=i < self.num_levels - 1, drop_path=rates[first:first + depth], norm_layer=norm_layer,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                layer_scale=layer_scale, backend=backend, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"levels.{i}"))
        self.norm = norm_layer(self.num_features, **dd)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: Linear trunc_normal(0.02) with zero bias, LayerNorm 1/0, convs PyTorch's default,
        ``rpb`` trunc_normal(0.02), layer scales ``layer_scale``."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | nn.Conv2d):
                module.reset_parameters()
            elif isinstance(module, NeighborhoodAttention2D) and module.rpb is not None:
                trunc_normal_(module.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
            elif isinstance(module, NATLayer):
                module.reset_layer_scale()

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, global_pool={self.global_pool!r}"

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"rpb"}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith(".rpb")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^levels\.(\d+)" if coarse else [(r"^levels\.(\d+)\.downsample", (0,)),
                                                   (r"^levels\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))]
        return dict(stem=r"^patch_embed", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for level in self.levels:
            level.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        like = self.patch_embed.proj[0].weight  # the final norm may have been pruned to an Identity
        self.head = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype) \
            if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[torch.Tensor] | tuple[torch.Tensor,
                                                                                               list[torch.Tensor]]:
        """Each level's output before its downsampler; ``norm`` applies the final norm to the last level's.

        Shapes:
            intermediates: (B, C_i, H / 2^(i + 2), W / 2^(i + 2)) for 'NCHW', (B, H_i, W_i, C_i) for 'NHWC';
            final: as ``forward_features``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(self.num_levels, indices)
        levels = self.levels[:max_index + 1] if stop_early else self.levels
        x = self.pos_drop(self.patch_embed(x))  # (B, H/4, W/4, C)
        intermediates = []
        last = self.num_levels - 1
        for i, level in enumerate(levels):
            x = level.forward_blocks(x)
            if i in take_indices:
                feat = self.norm(x) if norm and i == last else x
                intermediates.append(feat.permute(0, 3, 1, 2) if output_fmt == "NCHW" else feat)
            if level.downsample is not None:
                x = level.downsample(x)
        if intermediates_only:
            return intermediates
        return self.norm(x).permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(self.num_levels, indices)
        self.levels = self.levels[:max_index + 1]
        self.levels[-1].downsample = None
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))  # (B, H/4, W/4, C)
        for level in self.levels:
            x = level(x)
        return self.norm(x).permute(0, 3, 1, 2)  # (B, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))  # (B, num_features)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# depths, heads, embed_dim, mlp_ratio, drop_path_rate, NAT layer_scale, DiNAT layer_scale (the authors' configs)
_SIZES = {
    "mini": ((3, 4, 6, 5), (2, 4, 8, 16), 64, 3.0, 0.2, None, None),
    "tiny": ((3, 4, 18, 5), (2, 4, 8, 16), 64, 3.0, 0.2, None, None),
    "small": ((3, 4, 18, 5), (3, 6, 12, 24), 96, 2.0, 0.3, 1e-5, None),
    "base": ((3, 4, 18, 5), (4, 8, 16, 32), 128, 2.0, 0.5, 1e-5, 1e-5),
}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> NAT:
    family, size = variant.split("_")
    depths, heads, dim, mlp_ratio, dpr, nat_scale, dinat_scale = _SIZES[size]
    model_args = dict(depths=depths, num_heads=heads, embed_dim=dim, mlp_ratio=mlp_ratio, drop_path_rate=dpr,
                      kernel_size=7, layer_scale=nat_scale if family == "nat" else dinat_scale)
    if family == "dinat":
        model_args["dilations"] = DINAT_DILATIONS["mini" if size == "mini" else "other"]
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_classifier(NAT, variant, pretrained, feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                            **{**model_args, **kwargs})


def _cfg(paper: str) -> dict[str, Any]:
    return classifier_cfg(first_conv="patch_embed.proj.0", classifier="head", paper_ids=paper)


default_cfgs = hub_default_cfgs({
    **{f"nat_{size}": _cfg("arXiv:2204.07143") for size in _SIZES},
    **{f"dinat_{size}": _cfg("arXiv:2209.15001") for size in _SIZES},
})


@register_model("classification")
def nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini: C=64, depths (3, 4, 6, 5), heads (2, 4, 8, 16), mlp 3, k=7: 19.98M params, 2.7 GMACs (paper 20M)."""
    return _create("nat_mini", pretrained, **kwargs)


@register_model("classification")
def nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny: C=64, depths (3, 4, 18, 5), heads (2, 4, 8, 16), mlp 3: 27.90M params, 4.3 GMACs (paper 28M)."""
    return _create("nat_tiny", pretrained, **kwargs)


@register_model("classification")
def nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Small: C=96, heads (3, 6, 12, 24), mlp 2, layer scale 1e-5: 50.74M params, 7.8 GMACs (paper 51M)."""
    return _create("nat_small", pretrained, **kwargs)


@register_model("classification")
def nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Base: C=128, heads (4, 8, 16, 32), mlp 2, layer scale 1e-5: 89.77M params, 13.7 GMACs (paper 90M)."""
    return _create("nat_base", pretrained, **kwargs)


@register_model("classification")
def dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Mini: NAT-Mini with dilations (1, 8, 1), (1, 4, 1, 4), (1, 2, ...), 1: 19.98M params (paper 20M)."""
    return _create("dinat_mini", pretrained, **kwargs)


@register_model("classification")
def dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Tiny: NAT-Tiny with the 224-px dilations: 27.90M params, 4.3 GMACs (paper 28M)."""
    return _create("dinat_tiny", pretrained, **kwargs)


@register_model("classification")
def dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Small: NAT-Small with the dilations and no layer scale: 50.72M params, 7.8 GMACs (paper 51M)."""
    return _create("dinat_small", pretrained, **kwargs)


@register_model("classification")
def dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Base: NAT-Base with the dilations (layer scale 1e-5): 89.77M params, 13.7 GMACs (paper 90M)."""
    return _create("dinat_base", pretrained, **kwargs)
