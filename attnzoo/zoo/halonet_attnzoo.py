"""HaloNet H0-H7 (arXiv 2103.12731) as timm ByobNets (``attnzoo.layers.halo.swap_halo_attention`` converts timm's own).

The paper's family is four stages of attention bottlenecks (1x1 conv, halo attention, 1x1 conv) after a 7x7 stem
and max-pool, with depths (3, 3, l3, 3), bottleneck widths (64, 128, 256, 512) and output widths ``rb`` times
those, an optional 1x1 conv to ``df`` features before the head, and block/halo sizes per model. The numbers come
from the paper's table as transcribed in the attnzoo attention spec (section 1.6, not checked against the PDF).

Where this differs from the timm-era ``halo_cfg``: that config widens the whole bottleneck by ``rv`` (``br =
rv / rb``), which gives 71M / 109M / 200M parameters for H5 / H6 / H7 against the paper's 30.7M / 43.4M / 67.4M.
Reading ``rv`` as the paper's value multiplier instead (queries and keys keep the bottleneck width, the attention
outputs ``rv`` times as many value channels and the last 1x1 conv reads those, as keras_cv_attention_models does)
lands every model within 0.4% of the paper's count, so :class:`HaloBottleneck` does that. For ``rv = 1`` (H0-H4)
it is timm's ``SelfAttnBlock`` with the same state_dict keys, and ``azhalonet_h1`` is timm's (untrained)
``halonet_h1`` layer for layer.

Unverified choices, following timm's ``halonet_h1``: ReLU activations, 8 heads in every stage, timm's
initialisation. Any input size works (the layer pads and crops), so the default sizes are only the paper's.

Not in the paper, for small inputs and small checkpoints: every entrypoint takes ``width_multiplier`` (scales the
stem and all stage widths) and ``block_size`` / ``halo_size`` (replace b and h). The Fashion-MNIST checkpoint
``azhalonet_h0.fmnist`` is H0 at ``width_multiplier=0.375, block_size=4, halo_size=1``: at 28x28 the stage maps
are 7, 4, 2 and 1 px, where the paper's 8-px blocks would make every layer one padded block.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, make_divisible
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg, LayerFn, create_shortcut

from attnzoo.layers.halo import HaloAttention
from attnzoo.layers.weight_init import reset_children
from attnzoo.zoo._registry import build_classifier, classifier_cfg, hub_default_cfgs, register_model

__all__ = ["HALONET_CONFIGS", "HaloBottleneck", "halonet_cfg"]

# name: (block_size b, halo_size h, value ratio rv, width ratio rb, stage-3 depth l3, head features df, image size)
HALONET_CONFIGS: dict[str, tuple[int, int, float, float, int, int, int]] = {
    "h0": (8, 3, 1.0, 0.5, 7, 0, 256),
    "h1": (8, 3, 1.0, 1.0, 10, 0, 256),
    "h2": (8, 3, 1.0, 1.25, 11, 0, 256),
    "h3": (10, 3, 1.0, 1.5, 12, 1024, 320),
    "h4": (12, 2, 1.0, 3.0, 12, 1280, 384),
    "h5": (14, 2, 2.5, 2.0, 23, 1536, 448),
    "h6": (8, 4, 3.0, 2.75, 24, 1536, 512),
    "h7": (10, 3, 4.0, 3.5, 26, 2048, 600),
}


class HaloBottleneck(nn.Module):
    """Attention bottleneck with ``value_ratio`` times wider attention values (the paper's ``rv``).

    Same structure and module names as timm's ``SelfAttnBlock`` (``conv1_1x1``, ``self_attn``, ``post_attn``,
    ``conv3_1x1``, ``shortcut``), so that ``value_ratio=1`` gives timm's block and state_dict.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: stride of the attention (and of the shortcut).
        dilation: ByobNet's (first, rest) dilation; only the shortcut uses it (self-attention is not dilated).
        bottle_ratio: bottleneck width relative to ``out_chs`` (queries and keys use this width).
        value_ratio: attention value (output) width relative to the bottleneck width.
        group_size: accepted for ByobNet's block interface; there is no grouped conv here.
        downsample: ByobNet shortcut type.
        layers: ByobNet's layer factories; ``layers.self_attn`` must accept ``dim_out``.
        drop_block: accepted for ByobNet's block interface (no kxk conv to apply it to).
        drop_path_rate: stochastic depth rate.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, in_chs, H, W); output: (B, out_chs, H / stride, W / stride).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dilation: tuple[int, int] = (1, 1),
                 bottle_ratio: float = 1.0, value_ratio: float = 1.0, group_size: int | None = None,
                 downsample: str = "avg", layers: LayerFn | None = None, drop_block: Any = None,
                 drop_path_rate: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        if layers is None:
            raise ValueError("layers (ByobNet's LayerFn) is required")
        if value_ratio <= 0:
            raise ValueError(f"value_ratio must be > 0, got {value_ratio}")
        dd = dict(device=device, dtype=dtype)
        mid_chs = make_divisible(out_chs * bottle_ratio)
        value_chs = make_divisible(mid_chs * value_ratio)
        self.value_ratio = value_ratio
        self.shortcut = create_shortcut(downsample, in_chs, out_chs, stride=stride, dilation=dilation,
                                        apply_act=False, layers=layers, **dd)
        self.conv1_1x1 = layers.conv_norm_act(in_chs, mid_chs, 1, **dd)
        # Queries and keys stay at the bottleneck width; only the values widen.
        qk_kwargs = {} if value_chs == mid_chs else dict(qk_ratio=mid_chs / value_chs)
        self.self_attn = layers.self_attn(mid_chs, dim_out=value_chs, stride=stride, **qk_kwargs, **dd)
        self.post_attn = layers.norm_act(value_chs, **dd)
        self.conv3_1x1 = layers.conv_norm_act(value_chs, out_chs, 1, apply_act=False, **dd)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.act = layers.act(inplace=True)

    def init_weights(self, zero_init_last: bool = False) -> None:
        if zero_init_last and self.shortcut is not None and getattr(self.conv3_1x1.bn, "weight", None) is not None:
            nn.init.zeros_(self.conv3_1x1.bn.weight)
        self.self_attn.reset_parameters()

    def reset_parameters(self) -> None:
        # Stops at the first module that resets itself: HaloAttention re-inits its own convs (trunc-normal).
        reset_children(self)

    def extra_repr(self) -> str:
        return f"value_ratio={self.value_ratio}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv3_1x1(self.post_attn(self.self_attn(self.conv1_1x1(x))))
        x = self.drop_path(x)
        if self.shortcut is not None:
            x = x + self.shortcut(shortcut)
        return self.act(x)


def halonet_cfg(block_size: int, halo_size: int, value_ratio: float, width_ratio: float, stage3_depth: int,
                num_features: int = 0, width_multiplier: float = 1.0, **attn_kwargs: Any) -> ByoModelCfg:
    """ByobNet config of a paper HaloNet: ``(b, h, rv, rb, l3, df)`` of the paper's table.

    ``width_multiplier`` (not in the paper) scales the stem and every stage width (bottleneck and output) for
    small models, e.g. 0.25 for the Fashion-MNIST checkpoint; 1.0 is the paper's model. ``attn_kwargs`` go to
    every :class:`~attnzoo.layers.halo.HaloAttention` (e.g. ``mask_padding=True``).
    """
    if not 0 < width_multiplier <= 1 or 64 * width_multiplier < 8:
        raise ValueError(f"width_multiplier must be in [0.125, 1] (8 to 64 stem channels), got {width_multiplier}")
    block = partial(HaloBottleneck, value_ratio=value_ratio)
    stages = zip((3, 3, stage3_depth, 3), (64, 128, 256, 512), (1, 2, 2, 2), strict=True)
    return ByoModelCfg(
        blocks=tuple(ByoBlockCfg(type=block, d=d, c=make_divisible(c * width_ratio * width_multiplier), s=s, gs=0,
                                 br=1.0 / width_ratio) for d, c, s in stages),
        stem_chs=make_divisible(64 * width_multiplier), stem_type="7x7", stem_pool="maxpool",
        num_features=num_features,
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=block_size, halo_size=halo_size,
                                                             **attn_kwargs))


def _create_halonet(variant: str, pretrained: bool, attn_kwargs: dict[str, Any] | None = None,
                    width_multiplier: float = 1.0, block_size: int | None = None, halo_size: int | None = None,
                    **kwargs: Any) -> ByobNet:
    """Build ``variant``; ``block_size``/``halo_size`` replace the paper's b/h (e.g. b=4, h=1 for 28-px inputs)."""
    b, h, rv, rb, l3, df, _ = HALONET_CONFIGS[variant.rpartition("_")[2]]
    b = b if block_size is None else block_size
    h = h if halo_size is None else halo_size
    cfg = halonet_cfg(b, h, rv, rb, l3, df, width_multiplier=width_multiplier, **(attn_kwargs or {}))
    return build_classifier(ByobNet, variant, pretrained, model_cfg=cfg, **kwargs)


def _default_cfg(name: str) -> dict[str, Any]:
    img = HALONET_CONFIGS[name][-1]
    return classifier_cfg(input_size=(3, img, img), pool_size=(-(-img // 32),) * 2, crop_pct=0.95,
                          first_conv="stem.conv1.conv", classifier="head.fc", paper_ids="arXiv:2103.12731")


default_cfgs = hub_default_cfgs({f"azhalonet_{name}": _default_cfg(name) for name in HALONET_CONFIGS})


@register_model("classification")
def azhalonet_h0(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H0 (b=8, h=3, rb=0.5, 256px): 5.50M params (paper 5.5M)."""
    return _create_halonet("azhalonet_h0", pretrained, **kwargs)


@register_model("classification")
def azhalonet_h1(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H1 (b=8, h=3, rb=1, 256px): 8.10M params (paper 8.1M); timm's ``halonet_h1`` layout."""
    return _create_halonet("azhalonet_h1", pretrained, **kwargs)


@register_model("classification")
def azhalonet_h2(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H2 (b=8, h=3, rb=1.25, 256px): 9.40M params (paper 9.4M)."""
    return _create_halonet("azhalonet_h2", pretrained, **kwargs)


@register_model("classification")
def azhalonet_h3(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H3 (b=10, h=3, rb=1.5, df=1024, 320px): 11.84M params (paper 11.8M)."""
    return _create_halonet("azhalonet_h3", pretrained, **kwargs)


@register_model("classification")
def azhalonet_h4(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H4 (b=12, h=2, rb=3, df=1280, 384px): 19.10M params (paper 19.1M)."""
    return _create_halonet("azhalonet_h4", pretrained, **kwargs)


@register_model("classification")
def azhalonet_h5(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H5 (b=14, h=2, rv=2.5, rb=2, df=1536, 448px): 30.72M params (paper 30.7M)."""
    return _create_halonet("azhalonet_h5", pretrained, **kwargs)


@register_model("classification")
def azhalonet_h6(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H6 (b=8, h=4, rv=3, rb=2.75, df=1536, 512px): 43.46M params (paper 43.4M)."""
    return _create_halonet("azhalonet_h6", pretrained, **kwargs)


@register_model("classification")
def azhalonet_h7(pretrained: bool = False, **kwargs: Any) -> ByobNet:
    """HaloNet-H7 (b=10, h=3, rv=4, rb=3.5, df=2048, 600px): 67.43M params (paper 67.4M)."""
    return _create_halonet("azhalonet_h7", pretrained, **kwargs)
