"""MoH: Multi-Head Attention as Mixture-of-Head Attention (Peng Jin, Bo Zhu, Li Yuan, Shuicheng Yan; ICML 2025).

Paper: https://arxiv.org/abs/2410.11842 -- authors' code: https://github.com/SkyworkAI/MoH (read at ``2cefd57``).

Heads are experts: the first ``shared_heads`` heads are always active, a router activates the top-k
(``routed_heads``) of the remaining ``E = num_heads - shared_heads`` heads per token, and the heads' outputs are
summed with per-token weights instead of plainly (``sum_i g_i H_i W_O^i``, the concatenation before ``proj`` times
a gate per head).

Follows the authors' code, ``MoH-ViT/attention.py::Attention`` and ``MoH-DiT/models.py::MoHAttention`` (the
timm-style one), with their parameter names ``qkv``, ``proj``, ``wg``, ``wg_0``, ``wg_1`` so their state dicts load
by name:

* routed gates: ``p = softmax(wg x)`` over the E routed heads, top-k mask, ``g_r = k * p * mask / sum(p * mask)``;
* shared gates: ``g_s = h_s * softmax(wg_1 x)`` (the constant 1 for a single shared head, as in MoH-ViT; the DiT
  class has no ``wg_1`` then and fails);
* two-stage weights when both kinds exist: ``[a_s, a_r] = 2 * softmax(wg_0 x)``, then ``g = [a_s g_s, a_r g_r]``;
* ``routed_heads = 0`` (all heads shared) weights every head by ``h_s * softmax(wg_1 x)``: a weighted sum without
  routing, as in the last MoH-DiT-S/B layers;
* the router input is the attention input (``norm1(x)`` inside timm's Block), every token including the class
  token, each routed independently;
* load-balance loss, in training only: ``l_aux = E^2 * mean_i(P_i f_i)`` with ``P_i`` the mean pre-top-k
  probability of routed head i over the B*N tokens and ``f_i`` the fraction of tokens whose top-k holds i.

The code's factors (``k``, ``h_s``, 2) make every gate 1 at a uniform router, so MoH then equals multi-head
attention restricted to the active heads; the paper's Eq. 5 (``g = a_1 softmax(W_s x)`` for shared heads,
``a_2 softmax(W_r x)`` for the top-k, no renormalisation, no factors; read in a transcription, not the PDF) differs.
This layer follows the code, which is what produced the published checkpoints.

Deliberate differences from the authors' code:

* the loss is kept on the module (``self.aux_loss``) instead of appended to a class-level list shared by every
  model and thread; :func:`moh_load_balance_loss` collects it. The authors' training step is
  ``loss = criterion(out, y) + 0.01 * mean(l_aux over MoH layers)`` (``MoH-ViT/engine.py``; DiT:
  ``--moh-loss-coeff 0.01``)::

      logits = model(images)
      loss = F.cross_entropy(logits, labels) + 0.01 * moh_load_balance_loss(model)

* the top-k mask is a ``scatter`` of ones (the authors' ``one_hot(...).sum``), which exports to ONNX/torch.export;
* the authors clamp the renormalising denominator at ``finfo.eps``; the sum of the top-k of E probabilities is at
  least ``k / E``, so the clamp never acts and is left out;
* invalid head splits raise a ValueError (the authors' defaults ``shared_head=0, routed_head=0`` crash), and the
  split defaults to the MoH-LLaMA3 rule (half the heads shared, top-k of half the rest) when not given;
* ``qk_norm``/``scale_norm``/``attn_head_dim``/masks behave as in ``timm.layers.Attention``.

Like the authors' code, every head is computed and the inactive ones are multiplied by 0: no compute is saved.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import use_fused_attn

from attnzoo._checks import check_int, check_probability
from attnzoo.layers._vit_common import (
    ConfigurableLayer,
    attend,
    check_heads,
)
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.weight_init import reset_children
from attnzoo.profiling import sdpa_product_macs

__all__ = ["MoHAttention", "moh_default_split", "moh_head_gates", "moh_load_balance_loss"]


def moh_default_split(num_heads: int, shared_heads: int | None = None) -> tuple[int, int]:
    """(shared_heads, routed_heads) for what is not given: the MoH-LLaMA3 rule, half the heads shared and the
    top-k half of the rest (at least 1; 0 when every head is shared)."""
    shared = num_heads // 2 if shared_heads is None else shared_heads
    return shared, (max((num_heads - shared) // 2, 1) if shared < num_heads else 0)


def moh_head_gates(x: torch.Tensor, shared_heads: int, routed_heads: int, w_routed: torch.Tensor | None,
                   w_mix: torch.Tensor | None, w_shared: torch.Tensor | None,
                   with_loss: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-token head gates of MoH (authors' code form) and, with ``with_loss``, the load-balance loss.

    Args:
        x: router input.
        shared_heads: h_s, the always-active heads (the first ones).
        routed_heads: k, the routed heads activated per token.
        w_routed: ``wg`` weight, (E, C); None when ``routed_heads == 0``.
        w_mix: ``wg_0`` weight, (2, C); None unless both kinds of heads exist.
        w_shared: ``wg_1`` weight, (h_s, C); None when ``shared_heads <= 1``.
        with_loss: also return ``l_aux``.

    Returns:
        ``(gates, l_aux)``: gates (..., h_s + E), or None when the only head is one shared head (gate 1);
        ``l_aux`` a scalar or None.

    Shapes:
        x: (..., C); gates: (..., num_heads).
    """
    shared = None
    if w_shared is not None:
        shared = torch.softmax(x @ w_shared.t(), dim=-1) * shared_heads  # (..., h_s)
    if routed_heads == 0:
        return shared, None
    probs = torch.softmax(x @ w_routed.t(), dim=-1)  # (..., E)
    experts = probs.shape[-1]
    mask = torch.zeros_like(probs).scatter(-1, probs.topk(routed_heads, dim=-1).indices, 1.0)
    loss = None
    if with_loss:
        # f_i in at least float32, as the authors' mask.float(): token fractions are not exact in half precision
        fraction = mask.reshape(-1, experts).to(torch.promote_types(probs.dtype, torch.float32)).mean(0)
        loss = (probs.reshape(-1, experts).mean(0) * fraction).mean() * experts * experts
    routed = probs * mask
    routed = routed / routed.sum(dim=-1, keepdim=True) * routed_heads  # (..., E)
    if shared_heads == 0:
        return routed, loss
    mix = torch.softmax(x @ w_mix.t(), dim=-1) * 2  # (..., 2)
    shared = mix[..., :1] if shared is None else shared * mix[..., :1]  # a single shared head has the gate 1
    return torch.cat([shared, routed * mix[..., 1:]], dim=-1), loss


def moh_load_balance_loss(model: nn.Module, reduction: str = "mean", clear: bool = True) -> torch.Tensor:
    """The load-balance losses of the last training forward of every :class:`MoHAttention` in ``model``.

    ``reduction='mean'`` averages over the MoH layers, as the authors' training step does before its 0.01
    coefficient; ``'sum'`` adds them. Layers without routed heads have no loss. Returns a zero scalar when no
    layer has one (eval mode, no routed layer).

    Args:
        model: any module containing MoH layers.
        reduction: ``'mean'`` or ``'sum'`` over layers.
        clear: forget the collected losses, so a later call without a new training forward returns zero.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"moh_load_balance_loss: reduction={reduction!r} is not one of ('mean', 'sum')")
    losses = []
    for module in model.modules():
        if isinstance(module, MoHAttention) and module.aux_loss is not None:
            losses.append(module.aux_loss)
            if clear:
                module.aux_loss = None
    if not losses:
        return torch.zeros(())
    total = torch.stack(losses).sum()
    return total / len(losses) if reduction == "mean" else total


class MoHAttention(NotScriptable, ConfigurableLayer, nn.Module):
    """Mixture-of-Head attention, a drop-in for ``timm.layers.Attention`` (timm ViT ``attn_layer=``).

    ``timm.create_model('vit_small_patch16_224', attn_layer=MoHAttention)`` uses the default split in every block;
    ``MoHAttention.configure(shared_heads=3, routed_heads=2)`` fixes one (per-block splits:
    ``attnzoo.zoo.vit_attention``).

    Args:
        dim: input and output channels C.
        num_heads: heads h (experts).
        shared_heads: h_s, always-active heads (the first h_s). Default: ``num_heads // 2``.
        routed_heads: k, heads the router activates among the other ``num_heads - shared_heads``; 0 means every
            head is shared (weighted sum without routing) and then needs ``shared_heads == num_heads``.
            Default: half of the routed heads, at least 1.
        attn_head_dim: per-head width (default ``dim // num_heads``).
        qkv_bias: bias in the fused qkv projection.
        qk_norm: normalise q and k per head with ``norm_layer`` (timm's option).
        scale_norm: normalise the concatenated heads before ``proj`` (timm's option).
        proj_bias: bias in the output projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        norm_layer: norm for ``qk_norm``/``scale_norm``.

    Shapes:
        x: (B, N, C); attn_mask: broadcastable to (B, h, N, N) (additive or boolean), optional; output: (B, N, C).

    Attributes:
        aux_loss: the load-balance loss of the last training forward (None before one, and without routed heads).
    """

    def __init__(self, dim: int, num_heads: int = 8, shared_heads: int | None = None, routed_heads: int | None = None,
                 attn_head_dim: int | None = None, qkv_bias: bool = False, qk_norm: bool = False,
                 scale_norm: bool = False, proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer: type[nn.Module] | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        owner = "MoHAttention"
        head_dim = check_heads(owner, dim, num_heads, attn_head_dim)
        check_int("shared_heads", num_heads // 2 if shared_heads is None else shared_heads, 0, owner)
        shared, default_routed = moh_default_split(num_heads, shared_heads)
        if shared > num_heads:
            raise ValueError(f"{owner}: shared_heads={shared} exceeds num_heads={num_heads}; shared heads are a "
                             f"subset of the heads")
        routed = default_routed if routed_heads is None else routed_heads
        check_int("routed_heads", routed, 0, owner)
        if routed > num_heads - shared:
            raise ValueError(f"{owner}: routed_heads={routed} (top-k) exceeds the {num_heads - shared} routed heads "
                             f"(num_heads={num_heads} - shared_heads={shared})")
        if routed == 0 and shared != num_heads:
            raise ValueError(f"{owner}: routed_heads=0 leaves the {num_heads - shared} non-shared heads unused; with "
                             f"no routing every head must be shared (shared_heads={num_heads}), got {shared}")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError(f"{owner}: qk_norm/scale_norm need a norm_layer")
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.shared_heads, self.routed_heads = shared, routed
        self.attn_dim = num_heads * head_dim
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(check_probability("attn_drop", attn_drop, where=owner))
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(check_probability("proj_drop", proj_drop, where=owner))
        # the authors' router names: wg (routed), wg_0 (shared/routed mix), wg_1 (shared)
        self.wg = nn.Linear(dim, num_heads - shared, bias=False, **dd) if routed > 0 else None
        self.wg_0 = nn.Linear(dim, 2, bias=False, **dd) if routed > 0 and shared > 0 else None
        self.wg_1 = nn.Linear(dim, shared, bias=False, **dd) if shared > 1 else None
        self.aux_loss: torch.Tensor | None = None

    @property
    def active_heads(self) -> int:
        """Heads with a non-zero gate for each token: ``shared_heads + routed_heads``."""
        return self.shared_heads + self.routed_heads

    def reset_parameters(self) -> None:
        reset_children(self)
        self.aux_loss = None

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, shared_heads={self.shared_heads}, "
                f"routed_heads={self.routed_heads}, active={self.active_heads}/{self.num_heads}, "
                f"fused_attn={self.fused_attn}")

    def product_macs(self, batch: int, tokens: int) -> int:
        """MACs outside the Linear layers: the attention products of every head, and the gating multiply."""
        return sdpa_product_macs(batch, self.num_heads, tokens, tokens, self.head_dim) + batch * tokens * self.attn_dim

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gates, loss = moh_head_gates(x, self.shared_heads, self.routed_heads,
                                     None if self.wg is None else self.wg.weight,
                                     None if self.wg_0 is None else self.wg_0.weight,
                                     None if self.wg_1 is None else self.wg_1.weight, with_loss=self.training)
        if loss is not None:
            self.aux_loss = loss
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attend(q, k, v, fused=self.fused_attn, attn_drop=self.attn_drop, attn_mask=attn_mask,
                     is_causal=is_causal).transpose(1, 2)  # (B, N, h, d)
        if gates is not None:
            out = out * gates.unsqueeze(-1)  # one weight per token and head
        out = self.norm(out.reshape(B, N, self.attn_dim))  # (B, N, h*d)
        return self.proj_drop(self.proj(out))
