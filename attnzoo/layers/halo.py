"""HaloNet local self-attention as a drop-in for timm's ``HaloAttn``.

Paper: "Scaling Local Self-Attention for Parameter Efficient Visual Backbones", Vaswani, Ramachandran, Srinivas,
Parmar, Hechtman, Shlens, CVPR 2021, https://arxiv.org/abs/2103.12731.

There is no official code. This layer follows timm's ``HaloAttn`` (``timm/layers/halo_attn.py``), the only
implementation with ImageNet weights, so that timm checkpoints load unchanged and outputs match:

* the same constructor arguments, parameters, state_dict keys (``q``, ``kv``, ``pos_embed.height_rel``,
  ``pos_embed.width_rel``) and channel layout (head ``h`` owns ``kv`` channels ``[h * (dqk + dv), (h + 1) *
  (dqk + dv))``, keys first), and the same initialisation;
* keys and values are projected before the window gather and the halo is zero after projection; with the default
  ``mask_padding=False`` those zero keys enter the softmax, as in timm (the paper reportedly uses no masks);
* stride 2 uses strided queries (``block_size // 2`` queries per block side over the full-resolution window), or
  full-resolution attention followed by 2x2 average pooling when ``avg_down`` or an odd block size asks for it;
* no output projection: in a ByobNet self-attention block the following 1x1 conv plays that role.

Deliberate differences from timm:

* any input size: timm asserts that H and W are multiples of ``block_size``; here the missing rows/columns of the
  last blocks are treated like the halo (zero keys, or masked with ``mask_padding=True``) and the output is
  cropped back, so sizes that timm accepts give timm's output exactly;
* the attention runs in the ``attnzoo::halo_attention`` op (see ``attnzoo.kernels.halo``), which adds the
  factorised position logits by broadcasting instead of timm's pad-and-reshape skew, and has its own backward;
* ``mask_padding=True`` (lucidrains' semantics, with the mask the right way round) excludes outside pixels.

:func:`swap_halo_attention` replaces every timm ``HaloAttn`` of a model (e.g. timm's ``halonet26t``) by an equivalent
:class:`HaloAttention` carrying the same weights, in place.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import make_divisible, trunc_normal_
from timm.layers.halo_attn import HaloAttn

from attnzoo._checks import check_int, check_nchw
from attnzoo.kernels.halo import halo_attention
from attnzoo.layers.scripting import NotScriptable

__all__ = ["HaloAttention", "HaloPosEmbed", "swap_halo_attention"]


class HaloPosEmbed(nn.Module):
    """The two factorised relative-position tables of a halo attention layer.

    Kept as a sub-module named ``pos_embed`` so that the parameter names are timm's. Row ``j - i + win - 1`` of a
    table scores window coordinate ``j`` against block coordinate ``i``; rows below ``2 * halo_size`` are never
    read but are kept so that checkpoints line up.

    Args:
        win_size: window side, ``block_size + 2 * halo_size``.
        dim_head: query/key width per head.
        std: standard deviation of the truncated-normal init (timm uses ``dim_head ** -0.5``).
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(self, win_size: int, dim_head: int, std: float, device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.win_size = win_size
        self.dim_head = dim_head
        self.std = std
        self.height_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head, **dd))
        self.width_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.height_rel, std=self.std)
        trunc_normal_(self.width_rel, std=self.std)

    def extra_repr(self) -> str:
        return f"win_size={self.win_size}, dim_head={self.dim_head}"


class HaloAttention(NotScriptable, nn.Module):
    """Blocked local self-attention with haloes (HaloNet), timm ``HaloAttn``-compatible.

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``); must be divisible by ``num_heads``.
        feat_size: ignored; accepted for ByobNet's self-attention layer interface.
        stride: 1, or 2 to halve the resolution.
        num_heads: attention heads.
        dim_head: query/key width per head; default ``make_divisible(dim_out * qk_ratio, 8) // num_heads``.
        block_size: side of the query blocks (at input resolution).
        halo_size: halo width around each block.
        qk_ratio: query/key width relative to ``dim_out`` when ``dim_head`` is not given.
        qkv_bias: bias in the q and kv projections.
        avg_down: with stride 2, attend at full resolution and average-pool instead of striding the queries.
        scale_pos_embed: scale the relative-position logits together with ``q.k``.
        mask_padding: mask window pixels outside the map instead of attending to them as zero keys (timm).
        backend: op backend, 'auto' | 'torch' | 'triton', or None for the process default.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, dim, H, W), any H and W.
        output: (B, dim_out, ceil(H / 2), ceil(W / 2)) with strided queries, (B, dim_out, H // 2, W // 2) with
        average pooling, (B, dim_out, H, W) for stride 1.
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: tuple[int, int] | None = None,
                 stride: int = 1, num_heads: int = 8, dim_head: int | None = None, block_size: int = 8,
                 halo_size: int = 3, qk_ratio: float = 1.0, qkv_bias: bool = False, avg_down: bool = False,
                 scale_pos_embed: bool = False, mask_padding: bool = False, backend: str | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dim_out = dim_out or dim
        for name, value in (("dim", dim), ("dim_out", dim_out), ("num_heads", num_heads),
                            ("block_size", block_size)):
            check_int(name, value)
        check_int("halo_size", halo_size, minimum=0)
        if dim_out % num_heads:
            raise ValueError(f"dim_out={dim_out} must be divisible by num_heads={num_heads}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.dim_out_qk = num_heads * self.dim_head_qk
        self.dim_out_v = num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.mask_padding = mask_padding
        self.backend = backend
        self.block_size = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        self.stride = stride
        # timm's choice: stride the queries when the block splits evenly, else attend at full resolution and pool.
        use_pool = stride > 1 and (avg_down or block_size % stride != 0)
        self.block_stride = 1 if use_pool else stride
        self.block_size_ds = block_size // self.block_stride

        self.q = nn.Conv2d(dim, self.dim_out_qk, 1, stride=self.block_stride, bias=qkv_bias, **dd)
        self.kv = nn.Conv2d(dim, self.dim_out_qk + self.dim_out_v, 1, bias=qkv_bias, **dd)
        self.pos_embed = HaloPosEmbed(self.win_size, self.dim_head_qk, self.scale, **dd)
        self.pool = nn.AvgPool2d(2, 2) if use_pool else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.q.weight.shape[1] ** -0.5  # fan-in of the 1x1 projections
        for conv in (self.q, self.kv):
            conv.reset_parameters()  # biases keep nn.Conv2d's default init, as in timm
            trunc_normal_(conv.weight, std=std)
        self.pos_embed.reset_parameters()

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, dim_head_qk={self.dim_head_qk}, dim_head_v={self.dim_head_v}, "
                f"block_size={self.block_size}, halo_size={self.halo_size}, stride={self.stride}, "
                f"scale_pos_embed={self.scale_pos_embed}, mask_padding={self.mask_padding}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.q.in_channels, where="HaloAttention")
        b, _, h, w = x.shape
        q = self.q(x)
        hq, wq = q.shape[-2:]
        q = q.reshape(b * self.num_heads, self.dim_head_qk, hq, wq)  # (B * heads, dqk, Hq, Wq)
        kv = self.kv(x).reshape(b * self.num_heads, self.dim_head_qk + self.dim_head_v, h, w)
        k, v = kv.split([self.dim_head_qk, self.dim_head_v], dim=1)  # (B * heads, dqk | dv, H, W)
        out = halo_attention(q, k, v, self.pos_embed.height_rel, self.pos_embed.width_rel, self.block_size,
                             self.halo_size, self.block_stride, self.scale, self.scale_pos_embed, self.mask_padding,
                             backend=self.backend)
        out = out.reshape(b, self.dim_out_v, hq, wq)  # (B, dim_out, Hq, Wq)
        return self.pool(out)


def swap_halo_attention(model: nn.Module, mask_padding: bool = False, backend: str | None = None) -> nn.Module:
    """Replace every timm ``HaloAttn`` inside ``model`` by an equivalent :class:`HaloAttention`, in place.

    Weights, device, dtype and train/eval mode are kept, so outputs are unchanged (with the default
    ``mask_padding=False``) while the model gains any-input-size support and attnzoo's op.

    Args:
        model: any module, e.g. ``timm.create_model('halonet26t')``.
        mask_padding: give the new layers masked borders instead of timm's zero keys (changes outputs).
        backend: op backend for the new layers.

    Returns:
        ``model``, changed in place (or the new layer when ``model`` itself is a ``HaloAttn``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, HaloAttn)]
    for name, old in targets:
        pooled = isinstance(old.pool, nn.AvgPool2d)
        weight = old.q.weight
        new = HaloAttention(old.q.in_channels, dim_out=old.dim_out_v, stride=2 if pooled else old.block_stride,
                            num_heads=old.num_heads, dim_head=old.dim_head_qk, block_size=old.block_size,
                            halo_size=old.halo_size, qkv_bias=old.q.bias is not None, avg_down=pooled,
                            scale_pos_embed=old.scale_pos_embed, mask_padding=mask_padding, backend=backend,
                            device=weight.device, dtype=weight.dtype)
        new.load_state_dict(old.state_dict(), strict=True)
        new.train(old.training)
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
        else:
            model = new
    return model
