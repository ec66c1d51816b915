"""Gated Attention for Large Language Models: Non-linearity, Sparsity, and Attention-Sink-Free (Zihan Qiu, Zekun
Wang, Bo Zheng, et al.; 2025).

Paper: https://arxiv.org/abs/2505.06708 -- authors' code: https://github.com/qiuzh20/gated_attention (``49645df``).

The paper's best position, G1: a query-dependent sigmoid gate on the scaled-dot-product-attention output, per
head, before the heads are concatenated and projected::

    out = proj(concat_h(SDPA(q_h, k_h, v_h) * sigmoid(x W_g)_h))

with an ``'elementwise'`` gate (one score per head channel, ``W_g`` is C x h*d) or a ``'headwise'`` one (one
score per head, ``W_g`` is C x h). Follows the authors' ``modeling_qwen3.py::Qwen3Attention`` (eager, SDPA and
flash paths compute the same thing):

* the gate reads the same input as q/k/v, i.e. the pre-normalised block input (``norm1(x)`` in timm's Block);
* plain sigmoid, multiplied into ``[B, N, h, d]`` after the transpose and before ``o_proj``;
* no gate-specific initialisation: the host's Linear init (timm ViT: truncated normal 0.02, zero bias, like the
  authors' normal 0.02) puts the gate near 0.5 at the start, halving the attention branch;
* the gate's bias follows ``qkv_bias``, as the authors' widened ``q_proj`` shares its bias setting.

Deliberate differences:

* the authors widen ``q_proj`` and interleave the gate rows per KV group (MHA: per head, q rows then that head's
  gate rows); here the gate is its own Linear ``gate`` next to timm's fused ``qkv`` (the equivalent form the
  authors endorse in their issue #11). The parameter names are timm's (``qkv``, ``gate``, ``proj``), so a plain
  timm ViT checkpoint loads with ``strict=False`` (only ``gate`` is new) and, for ``gate='elementwise'``, the
  state dict is the one of ``timm.layers.Attention(gated=True)``; :func:`gated_attention_state_dict_from_qwen3`
  converts the authors' ``q_proj/k_proj/v_proj/o_proj`` layout (MHA);
* no RoPE, no causal mask and no grouped KV heads (a ViT has none); ``qk_norm`` is timm's (any ``norm_layer``;
  the authors use RMSNorm per head, on q and k only, never on the gate).

``scale_norm`` (timm's option, not the paper's) normalises the concatenated heads before the gate, in timm's order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import use_fused_attn

from attnzoo._checks import check_probability
from attnzoo.layers._vit_common import (
    ConfigurableLayer,
    attend,
    check_choice,
    check_heads,
)
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.weight_init import reset_children
from attnzoo.profiling import sdpa_product_macs

__all__ = ["GATE_VARIANTS", "GatedAttention", "gated_attention_state_dict_from_qwen3"]

GATE_VARIANTS = ("elementwise", "headwise")


def gated_attention_state_dict_from_qwen3(state_dict: dict[str, torch.Tensor], num_heads: int,
                                          gate: str = "elementwise") -> dict[str, torch.Tensor]:
    """The authors' attention weights (``q_proj`` widened with interleaved gate rows, ``k_proj``, ``v_proj``,
    ``o_proj``; one KV head per query head) as a :class:`GatedAttention` state dict.

    Args:
        state_dict: one ``Qwen3Attention``'s tensors, keys ``q_proj.weight``, ``k_proj.weight``, ... (biases
            optional; ``q_norm``/``k_norm`` pass through, for ``qk_norm=True, norm_layer=timm.layers.RmsNorm``).
        num_heads: heads h.
        gate: ``'elementwise'`` (``q_proj`` has 2 h d rows) or ``'headwise'`` (h d + h rows).
    """
    check_choice("gated_attention_state_dict_from_qwen3", "gate", gate, GATE_VARIANTS)
    rows = state_dict["k_proj.weight"].shape[0]
    head_dim = rows // num_heads
    gate_rows = head_dim if gate == "elementwise" else 1
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        q_key = f"q_proj.{kind}"
        if q_key not in state_dict:
            continue
        per_head = state_dict[q_key].reshape(num_heads, head_dim + gate_rows, *state_dict[q_key].shape[1:])
        query = per_head[:, :head_dim].reshape(num_heads * head_dim, *per_head.shape[2:])  # (h*d, ...)
        out[f"qkv.{kind}"] = torch.cat([query, state_dict[f"k_proj.{kind}"], state_dict[f"v_proj.{kind}"]])
        out[f"gate.{kind}"] = per_head[:, head_dim:].reshape(num_heads * gate_rows, *per_head.shape[2:])
    out.update({f"proj.{kind}": state_dict[f"o_proj.{kind}"] for kind in ("weight", "bias")
                if f"o_proj.{kind}" in state_dict})
    out.update({key: value for key, value in state_dict.items() if key.startswith(("q_norm.", "k_norm."))})
    return out


class GatedAttention(NotScriptable, ConfigurableLayer, nn.Module):
    """Multi-head attention with the paper's G1 output gate, a drop-in for ``timm.layers.Attention``.

    ``timm.create_model('vit_small_patch16_224', attn_layer=GatedAttention)`` (elementwise gate) or
    ``attn_layer=GatedAttention.configure(gate='headwise')``.

    Args:
        dim: input and output channels C.
        num_heads: heads h.
        gate: ``'elementwise'`` (h*d gate scores per token, the paper's best) or ``'headwise'`` (h per token).
        attn_head_dim: per-head width (default ``dim // num_heads``).
        qkv_bias: bias in the qkv projection and in the gate projection.
        qk_norm: normalise q and k per head with ``norm_layer``.
        scale_norm: normalise the concatenated heads before the gate (timm's option, not the paper's).
        proj_bias: bias in the output projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        norm_layer: norm for ``qk_norm``/``scale_norm``.

    Shapes:
        x: (B, N, C); attn_mask: broadcastable to (B, h, N, N), optional; output: (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int = 8, gate: str = "elementwise", attn_head_dim: int | None = None,
                 qkv_bias: bool = False, qk_norm: bool = False, scale_norm: bool = False, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer: type[nn.Module] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        owner = "GatedAttention"
        head_dim = check_heads(owner, dim, num_heads, attn_head_dim)
        check_choice(owner, "gate", gate, GATE_VARIANTS,
                     " (the paper's G1 gates: one score per head channel or one per head)")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError(f"{owner}: qk_norm/scale_norm need a norm_layer")
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.head_dim, self.gate_variant = dim, num_heads, head_dim, gate
        self.attn_dim = num_heads * head_dim
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(check_probability("attn_drop", attn_drop, where=owner))
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim if gate == "elementwise" else num_heads, bias=qkv_bias, **dd)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(check_probability("proj_drop", proj_drop, where=owner))

    def reset_parameters(self) -> None:
        reset_children(self)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, gate={self.gate_variant!r}, "
                f"fused_attn={self.fused_attn}")

    def product_macs(self, batch: int, tokens: int) -> int:
        """MACs outside the Linear layers: the attention products and the gating multiply."""
        return sdpa_product_macs(batch, self.num_heads, tokens, tokens, self.head_dim) + batch * tokens * self.attn_dim

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        score = self.gate(x).reshape(B, N, self.num_heads, -1)  # (B, N, h, d) or (B, N, h, 1)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attend(q, k, v, fused=self.fused_attn, attn_drop=self.attn_drop, attn_mask=attn_mask,
                     is_causal=is_causal)  # (B, h, N, d)
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))  # (B, N, h*d)
        out = out.reshape(B, N, self.num_heads, self.head_dim) * torch.sigmoid(score)  # gate per head (channel)
        return self.proj_drop(self.proj(out.reshape(B, N, self.attn_dim)))
