"""NAT's neighborhood attention layer, with NATTEN's parameters and state_dict names.

Papers: "Neighborhood Attention Transformer", Hassani, Walton, Li, Li, Shi, CVPR 2023,
https://arxiv.org/abs/2204.07143; "Dilated Neighborhood Attention Transformer", Hassani and Shi,
https://arxiv.org/abs/2209.15001.

This follows NATTEN's ``NeighborhoodAttention2D`` (``SHI-Labs/NATTEN``, ``src/natten/na2d.py`` of v0.17 for the
arguments, ``natten2d.py`` of v0.14 for the forward), the module NAT and DiNAT were trained with:

* parameters ``qkv`` (Linear C -> 3C), ``rpb`` (heads, 2k - 1, 2k - 1) when ``rel_pos_bias``, ``proj`` (C -> C), and
  dropouts ``attn_drop``/``proj_drop``, so the authors' checkpoints load by name; ``rpb`` is initialised with
  ``trunc_normal_(std=0.02, a=-2, b=2)``, the Linears keep PyTorch's default (NAT's model re-initialises them);
* ``qkv`` output channels are ordered (3, heads, head_dim), scale ``qk_scale or head_dim ** -0.5`` multiplies q
  before the bias is added;
* inputs smaller than the window (``kernel_size * dilation``) are zero-padded at the bottom/right before ``qkv``
  and the output is cropped, as NATTEN 0.14 (and Hugging Face's NAT/DiNAT port) do: the padded tokens are real keys
  holding ``qkv``'s bias. NATTEN >= 0.17 raises instead; padding keeps every input size usable (any image size
  for the models).

Deliberate differences: the attention runs in ``attnzoo::neighborhood_attention`` on the heads-last slices of ``qkv``
(no permute), with any stride (GNA) and per-dimension causal masking as NATTEN >= 0.17/0.20 allow; attention
dropout (NATTEN's fused ops ignore it with a warning) is applied, by the op's unfused lowering, only when it is
nonzero and the module is training.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_

from attnzoo._checks import check_int
from attnzoo.kernels.neighborhood import neighborhood_attention, neighborhood_attention_lowering
from attnzoo.layers.scripting import NotScriptable

__all__ = ["NeighborhoodAttention2D"]


def _pair(value, name: str, kind: type) -> tuple:
    items = tuple(value) if isinstance(value, tuple | list) else (value, value)
    ok = all(isinstance(i, bool) if kind is bool else isinstance(i, int) and not isinstance(i, bool) for i in items)
    if len(items) != 2 or not ok:
        raise ValueError(f"{name} must be a {kind.__name__} or a pair of them, got {value!r}")
    return items


# timm's FX feature extraction keeps the layer whole: its forward pads by sizes read from the input
@register_notrace_module
class NeighborhoodAttention2D(NotScriptable, nn.Module):
    """2-D (dilated, strided) neighborhood attention over a channels-last map, NAT's attention layer.

    Args:
        dim: channels ``C``; must be divisible by ``num_heads``.
        num_heads: attention heads.
        kernel_size: window size, one int or (kh, kw), ``>= 2`` (odd with ``rel_pos_bias``, NATTEN's rule).
        dilation: dilation, one int or a pair.
        stride: GNA stride, one int or a pair, ``<= kernel_size`` (1 in NAT/DiNAT).
        is_causal: causal masking, one bool or a pair (not with ``rel_pos_bias``).
        rel_pos_bias: learn NAT's relative positional bias ``rpb``.
        qkv_bias: bias in the ``qkv`` projection.
        qk_scale: logit scale; default ``head_dim ** -0.5``.
        attn_drop: dropout on the attention probabilities (training only).
        proj_drop: dropout after ``proj``.
        backend: op backend, 'auto' | 'torch' | 'flex' | 'triton', or None for the process default.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, H, W, dim), any H and W (maps smaller than ``kernel_size * dilation`` are padded, see above).
        output: (B, H, W, dim).
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int | tuple[int, int] = 7,
                 dilation: int | tuple[int, int] = 1, stride: int | tuple[int, int] = 1,
                 is_causal: bool | tuple[bool, bool] = False, rel_pos_bias: bool = True, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 backend: str | None = None, device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            check_int(name, value)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.kernel_size = _pair(kernel_size, "kernel_size", int)
        self.dilation = _pair(dilation, "dilation", int)
        self.stride = _pair(stride, "stride", int)
        self.is_causal = _pair(is_causal, "is_causal", bool)
        for k, d, s in zip(self.kernel_size, self.dilation, self.stride, strict=True):
            if k < 2 or d < 1 or not 1 <= s <= k:
                raise ValueError(f"kernel_size={self.kernel_size}, dilation={self.dilation}, stride={self.stride}: "
                                 "NATTEN needs kernel_size >= 2, dilation >= 1 and 1 <= stride <= kernel_size")
        if rel_pos_bias and any(self.is_causal):
            raise ValueError("rel_pos_bias with is_causal: causal neighborhood attention is undefined with positional "
                             "biases (NATTEN refuses it too)")
        if rel_pos_bias and any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"rel_pos_bias with kernel_size={self.kernel_size}: NATTEN supports the bias only with "
                             "odd kernels")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.window_size = tuple(k * d for k, d in zip(self.kernel_size, self.dilation, strict=True))
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.empty(num_heads, *(2 * k - 1 for k in self.kernel_size), **dd))
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        if self.rpb is not None:
            trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, stride={self.stride}, is_causal={self.is_causal}, "
                f"rel_pos_bias={self.rpb is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"NeighborhoodAttention2D expects a channels-last map (B, H, W, {self.dim}), got {shape}")
        b, h, w, c = x.shape
        # NATTEN 0.14's padding of maps smaller than the window; sym_max keeps traced sizes free of branches
        pad_h, pad_w = (torch.sym_max(0, ws - n) for ws, n in zip(self.window_size, (h, w), strict=True))
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = x.shape[1:3]
        q, k, v = self.qkv(x).reshape(b, hp, wp, 3, self.num_heads, self.head_dim).unbind(3)  # (B, H, W, heads, D)
        if self.training and self.attn_drop.p > 0:
            bias = q.new_zeros(0) if self.rpb is None else self.rpb.to(q.dtype)
            out = neighborhood_attention_lowering(q, k, v, self.kernel_size, self.dilation, self.stride,
                                                  self.is_causal, bias, self.scale, attn_dropout=self.attn_drop.p)
        else:
            out = neighborhood_attention(q, k, v, self.kernel_size, self.dilation, self.stride, self.is_causal,
                                         self.rpb, self.scale, backend=self.backend)
        out = out.reshape(b, hp, wp, c)
        # crop by gathers: slicing a padded size back to H adds a guard on whether padding happened
        out = out.index_select(1, torch.arange(h, device=x.device)).index_select(2, torch.arange(w, device=x.device))
        # (B, H, W, C)
        return self.proj_drop(self.proj(out))
