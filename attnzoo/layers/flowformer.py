"""Flowformer: Linearizing Transformers with Conservation Flows (Haixu Wu, Jialong Wu, Jiehui Xu, Jianmin Wang,
Mingsheng Long; ICML 2022).

Paper: https://arxiv.org/abs/2202.06258 -- authors' code: https://github.com/thuml/Flowformer (``61f5d8c``).

Attention as a flow network from the sources (values) to the sinks (results), with the non-negative feature map
``phi = sigmoid`` on the projected queries and keys. Per head, with L sinks, S sources and ``eps = 1e-6``:

1. incoming flow of sink i, ``I_i = phi(q_i) . sum_j phi(k_j)``; outgoing flow of source j,
   ``O_j = phi(k_j) . sum_i phi(q_i)``;
2. conservation: ``I^_i = phi(q_i) . sum_j phi(k_j) / O_j`` and ``O^_j = phi(k_j) . sum_i phi(q_i) / I_i``, the
   latter clamped to [-1, 1] "for stability";
3. competition among sources ``softmax_j(O^) * S`` re-weights the values; allocation ``sigmoid(I^ * L / S)`` gates
   the sinks;
4. ``R_i = sigmoid(I^_i L/S) / I_i * phi(q_i) sum_j phi(k_j)^T (v_j competition_j)``, computed right to left so
   the cost is ``O((L + S) d^2)`` per head, linear in the number of tokens.

Follows the authors' vision code, ``Flowformer_CV/flowformer.py::Flow_Attention``: fused ``qkv`` with bias,
``proj``, no dropout, and its eps placement (``eps`` added inside and outside every flow sum; the core
``Flow_Attention.py`` adds it inside only, which differs by O(eps) relative). The softmax runs over the sources,
``I`` and ``O`` and their conserved versions follow the code's order of operations.

Deliberate differences:

* the normalisers (flows, conserved flows, competition, allocation) are computed in at least float32, whatever
  the input dtype: ``1 / I`` and ``1 / O`` shrink like 1/(d N) and fp16/bf16 sums of N sigmoids lose the small
  terms; the two products with the values run in the input (or autocast) dtype and the result is cast back;
* timm's Block arguments the method has no counterpart for are refused when set (``attn_drop``: no attention
  matrix exists; ``qk_norm``/``scale_norm``: not in the paper), as are masks and ``is_causal`` (the causal variant
  needs cumulative flows, ``Flow_Attention_Causal``, and is not implemented);
* the head count is the host's (timm passes the ViT's ``num_heads``); the authors' CV model uses its default 12
  heads in every stage, which is this constructor's default too.

Plain PyTorch, no custom op: every step is a sum, a product or an elementwise map, which torch.compile, export
and ONNX take as they are. Padded keys would still enter the sums (``phi(0) = 0.5``); this layer has no mask.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_function

from attnzoo._checks import check_probability
from attnzoo.layers._vit_common import (
    ConfigurableLayer,
    check_heads,
    refuse_flag,
)
from attnzoo.layers.weight_init import reset_children

__all__ = ["FlowAttention", "flow_attention"]


@register_notrace_function  # timm's FX tracer keeps it a leaf: it reads dtypes and token counts
def flow_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Non-causal Flow-Attention on projected queries, keys and values (``phi = sigmoid`` applied here).

    Args:
        q: projected queries (before the feature map).
        k: projected keys (before the feature map).
        v: projected values.
        eps: the authors' 1e-6 stabiliser.

    Shapes:
        q: (B, H, L, d); k: (B, H, S, d); v: (B, H, S, d_v); output: (B, H, L, d_v), in v's dtype.
    """
    compute = torch.promote_types(q.dtype, torch.float32)
    q, k = torch.sigmoid(q.to(compute)), torch.sigmoid(k.to(compute))  # phi: non-negative capacities
    sinks, sources = q.shape[-2], k.shape[-2]
    # (1) incoming flow of every sink, outgoing flow of every source: (B, H, L), (B, H, S)
    incoming = 1.0 / (((q + eps) * (k.sum(dim=-2, keepdim=True) + eps)).sum(dim=-1) + eps)
    outgoing = 1.0 / (((k + eps) * (q.sum(dim=-2, keepdim=True) + eps)).sum(dim=-1) + eps)
    # (2) conservation: what each sink receives when sources emit one unit, what each source emits when sinks
    # receive one unit
    conserved_sink = ((q + eps) * ((k * outgoing.unsqueeze(-1)).sum(dim=-2, keepdim=True) + eps)).sum(dim=-1) + eps
    conserved_source = ((k + eps) * ((q * incoming.unsqueeze(-1)).sum(dim=-2, keepdim=True) + eps)).sum(dim=-1) + eps
    conserved_source = conserved_source.clamp(min=-1.0, max=1.0)
    # (3) allocation of the sinks, competition of the sources
    allocation = torch.sigmoid(conserved_sink * (sinks / sources))  # (B, H, L)
    competition = torch.softmax(conserved_source, dim=-1) * sources  # (B, H, S)
    # (4) phi(q) (phi(k)^T (v * competition)), right to left: O((L + S) d d_v)
    kv = k.transpose(-2, -1).to(v.dtype) @ (v * competition.unsqueeze(-1).to(v.dtype))  # (B, H, d, d_v)
    out = (q.to(v.dtype) @ kv) * (incoming * allocation).unsqueeze(-1)  # (B, H, L, d_v)
    return out.to(v.dtype)


@register_notrace_function  # an FX leaf (timm traces the ViT with attn_mask as a Proxy); FX autowraps public names only
def refuse_flow_mask(attn_mask: torch.Tensor | None, is_causal: bool) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError("FlowAttention: attn_mask/is_causal are not supported: this is the non-causal "
                         "Flow-Attention; masked keys would still enter the flow sums")


class FlowAttention(ConfigurableLayer, nn.Module):
    """Flowformer's non-causal Flow-Attention, a drop-in for ``timm.layers.Attention`` (timm ViT ``attn_layer=``).

    ``timm.create_model('vit_small_patch16_224', attn_layer=FlowAttention)`` is the paper's "DeiT + Flowformer".

    Args:
        dim: input and output channels C.
        num_heads: heads h (the authors' CV default: 12).
        qkv_bias: bias in the fused qkv projection (the authors' code: always).
        proj_bias: bias in the output projection.
        proj_drop: dropout after the output projection (the authors' core module: 0.05; CV code: none).
        eps: the flow stabiliser.
        qk_norm: must be False (not in the paper).
        scale_norm: must be False (not in the paper).
        attn_drop: must be 0 (Flow-Attention forms no attention matrix).
        norm_layer: accepted from timm's Block and unused.

    Shapes:
        x: (B, N, C); output: (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int = 12, qkv_bias: bool = True, proj_bias: bool = True,
                 proj_drop: float = 0.0, eps: float = 1e-6, qk_norm: bool = False, scale_norm: bool = False,
                 attn_drop: float = 0.0, norm_layer: type[nn.Module] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        owner = "FlowAttention"
        self.head_dim = check_heads(owner, dim, num_heads)
        refuse_flag(owner, "qk_norm", qk_norm, "Flow-Attention feeds the projected q, k straight to its sigmoid map")
        refuse_flag(owner, "scale_norm", scale_norm, "not part of Flow-Attention")
        refuse_flag(owner, "attn_drop", attn_drop, "Flow-Attention forms no attention matrix to drop from")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"{owner}: eps={eps!r}, expected a float > 0")
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.eps = dim, num_heads, float(eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(check_probability("proj_drop", proj_drop, where=owner))

    def reset_parameters(self) -> None:
        reset_children(self)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, eps={self.eps}"

    def product_macs(self, batch: int, tokens: int) -> int:
        """MACs outside the Linear layers, per head with L = S = N: the two value products (2 N d^2), the four flow
        dot products and the two weighted sums of the conservation step (6 N d); elementwise maps not counted."""
        return batch * self.num_heads * tokens * (2 * self.head_dim * self.head_dim + 6 * self.head_dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        refuse_flow_mask(attn_mask, is_causal)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        q, k, v = qkv.unbind(0)
        out = flow_attention(q, k, v, self.eps).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(out))
