"""Reducing the Transformer Architecture to a Minimum (Bernhard Bermeitinger, Tomas Hrycej, Massimo Pavone,
Julianus Kath, Siegfried Handschuh; KDIR 2024).

Paper: https://arxiv.org/abs/2410.13732 (text of v2 read; the authors published no code, their experiments were
run in Keras).

Three reductions of the encoder, each tested by the authors on MNIST and CIFAR-10 with 6 encoders:

* **no MLP** (Sec. 2): the softmax of a quadratic form already makes one attention layer at least cubic in its
  input, so the blocks keep attention only: :class:`MinimalBlock` is ``x + attn(norm(x))``;
* **collapsed matrices** (Sec. 3, one head): ``W^QK = W^Q W^K^T`` (N x N) and ``W^VO = W^V W^O``; the authors
  implement the first by fixing ``W^K`` to the unit matrix, so the trained ``W^Q`` *is* ``W^QK``
  (``qk='collapsed'``), and "noWv.Vo" by fixing ``W^V`` and ``W^O`` to unit matrices (``vo='none'``): the output
  is a convex combination of the inputs. ``vo='collapsed'`` keeps one ``W^VO`` (and one bias), the exact single-head
  equivalent of separate ``W^V``, ``W^O``, at half their parameters;
* **symmetric similarity** (Sec. 5): ``W^Q = W^K``, implemented by reusing ``W^Q`` as ``W^K``
  (``qk='symmetric'``, any head count): the similarity ``x_i W W^T x_j^T`` is symmetric and a token is most
  similar to itself in each head's metric.

Everything else follows timm (the paper leaves it open: the equations, width, patching, norms and residuals are
not in the text): pre-norm residual block, timm's LayerNorm, drop path and LayerScale, biases as in Keras'
``MultiHeadAttention`` (every projection has one; ``qkv_bias``/``proj_bias`` switch them), the score scale
``1/sqrt(head width)`` of Keras and timm, and SDPA through :func:`attnzoo.layers._vit_common.attend`.

Deliberate limits:

* ``collapsed`` and ``vo`` other than ``'separate'`` need one head, as in the paper: a collapsed ``W^QK`` per
  head costs ``H N^2`` instead of ``2 N^2`` (Sec. 4), and ``W^V_h W^O_h`` of different heads cannot be merged;
* the Sec. 3 identity that stacked layers' ``W^VO`` collapse into one matrix (``(S + 1) N^2`` parameters) holds
  for pure attention stacks only; with residuals and norms it does not, so each block keeps its own;
* the Cholesky (``T T^T``) and mirrored forms of a single-head symmetric ``W^QK`` with ``N (N + 1) / 2``
  parameters are described in Sec. 5 but were not what the authors ran; they are not implemented.

The paper's published totals (6 encoders: 287,686 parameters with MLP, 101,470 without; 12 encoders: 563,242
and 198,100) fit no stack of identical encoders: the MLP share per encoder would be 31,036 from the 6-encoder pair
and 29,821 from the 12-minus-6 differences; and the odd 16,105 parameters per encoder without MLP rule out square
(N x N) projections with biases (4N^2 + 4N plus norms is even). Width, key size and patching cannot be recovered
from them, so they are not reproduced; the tests check the paper's formulas instead
(``4N^2`` per attention, ``3N^2`` symmetric or collapsed, ``2N^2`` and ``N^2`` when V/O are collapsed or removed,
``2hN^2 + hN + N`` per MLP).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale, Mlp, use_fused_attn
from timm.models.vision_transformer import ATTN_LAYERS

from attnzoo._checks import check_probability
from attnzoo.layers._vit_common import (
    ConfigurableLayer,
    attend,
    check_choice,
    check_heads,
    refuse_flag,
)
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.weight_init import reset_children
from attnzoo.profiling import sdpa_product_macs

__all__ = ["MinimalAttention", "MinimalBlock", "QK_FORMS", "VO_FORMS"]

QK_FORMS = ("separate", "collapsed", "symmetric")
VO_FORMS = ("separate", "collapsed", "none")


class MinimalAttention(NotScriptable, ConfigurableLayer, nn.Module):
    """The paper's reduced attention matrices, a drop-in for ``timm.layers.Attention``.

    Args:
        dim: model width N (input and output channels).
        num_heads: heads H; ``qk='collapsed'`` and ``vo != 'separate'`` need 1.
        qk: ``'separate'`` (``W^Q``, ``W^K``: the paper's "unchanged"), ``'collapsed'`` (one ``W^QK``; keys are the
            inputs, "Wqk") or ``'symmetric'`` (``W^K = W^Q``).
        vo: ``'separate'`` (``W^V``, ``W^O``), ``'collapsed'`` (one ``W^VO``) or ``'none'`` (no value and output
            matrices, "noWv.Vo").
        qkv_bias: bias in the query/key (and value) projections.
        proj_bias: bias in the output projection (``W^O`` or ``W^VO``).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout on the output.
        qk_norm: must be False (not in the paper).
        scale_norm: must be False (not in the paper).
        norm_layer: accepted from timm's Block and unused.

    Shapes:
        x: (B, N_tokens, dim); attn_mask: broadcastable to (B, H, N_tokens, N_tokens), optional; output: same as x.
    """

    def __init__(self, dim: int, num_heads: int = 1, qk: str = "symmetric", vo: str = "separate",
                 qkv_bias: bool = True, proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 qk_norm: bool = False, scale_norm: bool = False, norm_layer: type[nn.Module] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        owner = "MinimalAttention"
        self.head_dim = check_heads(owner, dim, num_heads)
        check_choice(owner, "qk", qk, QK_FORMS)
        check_choice(owner, "vo", vo, VO_FORMS)
        if qk == "collapsed" and num_heads != 1:
            raise ValueError(f"{owner}: qk='collapsed' needs num_heads=1, got {num_heads}: the paper collapses "
                             f"W^Q W^K^T into one N x N matrix for a single head only (per head it would cost N^2 "
                             f"instead of 2 N^2 / H)")
        if vo != "separate" and num_heads != 1:
            raise ValueError(f"{owner}: vo={vo!r} needs num_heads=1, got {num_heads}: W^V_h W^O_h of different "
                             f"heads cannot be merged, and the paper's noWv.Vo variant is single-head")
        refuse_flag(owner, "qk_norm", qk_norm, "not part of the paper's attention")
        refuse_flag(owner, "scale_norm", scale_norm, "not part of the paper's attention")
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.qk, self.vo = dim, num_heads, qk, vo
        self.fused_attn = use_fused_attn()
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias, **dd)  # W^Q, or W^QK when collapsed
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias, **dd) if qk == "separate" else None
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias, **dd) if vo == "separate" else None
        self.attn_drop = nn.Dropout(check_probability("attn_drop", attn_drop, where=owner))
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd) if vo != "none" else None  # W^O, or W^VO
        self.proj_drop = nn.Dropout(check_probability("proj_drop", proj_drop, where=owner))

    def reset_parameters(self) -> None:
        reset_children(self)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, qk={self.qk!r}, vo={self.vo!r}, fused_attn={self.fused_attn}"

    def product_macs(self, batch: int, tokens: int) -> int:
        """MACs of the two attention products (scores and weighted sum) of every head."""
        return sdpa_product_macs(batch, self.num_heads, tokens, tokens, self.head_dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, d)

        q = heads(self.q_proj(x))
        if self.k_proj is not None:
            k = heads(self.k_proj(x))
        else:
            k = q if self.qk == "symmetric" else heads(x)  # collapsed: W^K is the unit matrix
        v = heads(self.v_proj(x) if self.v_proj is not None else x)  # no W^V: the inputs themselves
        out = attend(q, k, v, fused=self.fused_attn, attn_drop=self.attn_drop, attn_mask=attn_mask,
                     is_causal=is_causal).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        if self.proj is not None:
            out = self.proj(out)
        return self.proj_drop(out)


class MinimalBlock(nn.Module):
    """An encoder block without the MLP, ``x + drop_path(ls(attn(norm(x))))``, for timm's ViT ``block_fn=``.

    Takes timm's ``Block`` arguments; the MLP ones (``mlp_ratio``, ``act_layer``, ``mlp_layer``,
    ``scale_mlp_norm``) have nothing to act on and are ignored. ``attn_layer`` builds the attention as timm does,
    so ``block_fn=MinimalBlock`` alone (timm's default ``Attention``) is the paper's "unchanged" matrices without
    MLP, and ``attn_layer=MinimalAttention.configure(qk='symmetric')`` its symmetric variant.

    Args:
        dim: model width.
        num_heads: attention heads.
        qkv_bias: passed to the attention.
        qk_norm: passed to the attention.
        scale_attn_norm: passed to the attention as ``scale_norm``.
        proj_bias: passed to the attention.
        proj_drop: passed to the attention.
        attn_drop: passed to the attention.
        init_values: LayerScale init (None: no LayerScale).
        drop_path: stochastic-depth rate of the residual branch.
        norm_layer: the pre-norm (and the attention's norm).
        attn_layer: attention class (or a name in timm's ``ATTN_LAYERS``); default :class:`MinimalAttention`.

    Shapes:
        x: (B, N, dim); output: (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 1, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, scale_attn_norm: bool = False, scale_mlp_norm: bool = False,
                 proj_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 init_values: float | None = None, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, mlp_layer: type[nn.Module] = Mlp,
                 attn_layer: type[nn.Module] | str = MinimalAttention, depth: int = 0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(attn_layer, str):
            if attn_layer not in ATTN_LAYERS:
                raise ValueError(f"MinimalBlock: attn_layer={attn_layer!r} is not one of {tuple(ATTN_LAYERS)}")
            attn_layer = ATTN_LAYERS[attn_layer]
        self.drop_path_rate = check_probability("drop_path", drop_path, where="MinimalBlock")
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm,
                               scale_norm=scale_attn_norm, proj_bias=proj_bias, attn_drop=attn_drop,
                               proj_drop=proj_drop, norm_layer=norm_layer, **dd)
        self.ls1 = LayerScale(dim, init_values=init_values, **dd) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def reset_parameters(self) -> None:
        reset_children(self)

    def extra_repr(self) -> str:
        return f"no MLP, drop_path={self.drop_path_rate}"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        return x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
