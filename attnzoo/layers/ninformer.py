"""NiNformer: A Network in Network Transformer with Token Mixing Generated Gating Function (Abdullah Nazhat
Abdullah, Tarkan Aydin, 2024; Neural Computing & Applications 2025).

Paper: https://arxiv.org/abs/2403.02411

Follows the authors' code (``Abdullah-88/NiNformer``, ``ninformer.py``) for the block:

* the inner network is a standard MLP-Mixer layer (token-mixing MLP over the N tokens, then a channel MLP, each
  behind its own pre-norm and residual); token and channel MLPs both have the hidden size ``d_ffn``;
* the gate is ``Linear(d, d)(u) * Mixer(u)`` with ``u = LN(x)``: a plain element-wise product, **no sigmoid**;
* the block is ``x = x + gate(LN(x))`` then ``x = x + FFN(LN(x))``, and the authors use the **same** LayerNorm
  instance for both pre-norms. That is the default here (``shared_norm=True``); ``shared_norm=False`` gives the
  usual two independent norms;
* every MLP is Linear -> GELU -> Dropout -> Linear -> Dropout, with the same dropout probability everywhere.

Because the token-mixing MLP has N inputs, the sequence length is fixed when the block is built; any other N is
rejected with a ValueError (the authors' code fails inside a matmul instead). Additions that default to the
authors' behaviour: ``drop_path`` (stochastic depth on both residual branches, for timm's ``block_fn`` slot) and
configurable ``norm_layer``/``act_layer``. PyTorch's default initialisation is kept, as in the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp

from attnzoo._checks import check_int, check_probability, check_tokens
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.weight_init import reset_children

__all__ = ["MixerGatingUnit", "MixerLayer", "NiNBlock"]


class MixerLayer(nn.Module):
    """One MLP-Mixer layer on a fixed number of tokens (the inner network of NiNformer).

    ``x = x + T(MLP_tokens(T(LN1(x))))`` then ``x = x + MLP_channels(LN2(x))``, T swapping tokens and channels.

    Args:
        dim: channels d.
        seq_len: number of tokens N mixed by the token MLP.
        token_hidden: hidden size of the token-mixing MLP.
        channel_hidden: hidden size of the channel MLP.
        dropout: dropout probability after each MLP layer's activation and output.
        norm_layer: normalisation over channels, called as ``norm_layer(dim)``.
        act_layer: activation of both MLPs.

    Shapes:
        input: (B, N, d); output: (B, N, d).
    """

    def __init__(self, dim: int, seq_len: int, token_hidden: int, channel_hidden: int, dropout: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.seq_len = seq_len
        self.norm_tokens = norm_layer(dim, **dd)
        self.mlp_tokens = Mlp(seq_len, token_hidden, act_layer=act_layer, drop=dropout, **dd)
        self.norm_channels = norm_layer(dim, **dd)
        self.mlp_channels = Mlp(dim, channel_hidden, act_layer=act_layer, drop=dropout, **dd)

    def reset_parameters(self) -> None:
        reset_children(self)

    def extra_repr(self) -> str:
        return f"seq_len={self.seq_len}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp_tokens(self.norm_tokens(x).transpose(1, 2)).transpose(1, 2)  # mix over N: (B, d, N) inside
        return x + self.mlp_channels(self.norm_channels(x))


class MixerGatingUnit(nn.Module):
    """NiNformer's gate: ``Linear(d, d)(u) * MixerLayer(u)``, an element-wise product with no squashing.

    Args:
        dim: channels d.
        seq_len: number of tokens N.
        d_ffn: hidden size of the Mixer's token and channel MLPs.
        dropout: dropout probability inside the Mixer's MLPs.
        norm_layer: normalisation of the Mixer's two pre-norms.
        act_layer: activation of the Mixer's MLPs.

    Shapes:
        input: (B, N, d); output: (B, N, d).
    """

    def __init__(self, dim: int, seq_len: int, d_ffn: int, dropout: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.mixer = MixerLayer(dim, seq_len, d_ffn, d_ffn, dropout, norm_layer, act_layer, device=device,
                                dtype=dtype)

    def reset_parameters(self) -> None:
        reset_children(self)

    def extra_repr(self) -> str:
        return "out = proj(u) * mixer(u)"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.proj(u) * self.mixer(u)


class NiNBlock(NotScriptable, nn.Module):
    """NiNformer block: ``x + MGU(LN x)`` then ``x + FFN(LN x)``, one LayerNorm shared by both by default.

    A drop-in for a transformer block on a fixed-length token sequence (timm ViT ``Block`` layout).

    Args:
        dim: channels d.
        seq_len: number of tokens N, prefix tokens included; fixed at construction.
        d_ffn: hidden size of the FFN and of the Mixer's MLPs (default ``2 * dim``, the authors' 256/512).
        dropout: dropout probability in every MLP (the authors train their CIFAR model with 0.5).
        shared_norm: one LayerNorm for both pre-norms, as in the authors' code; False for two.
        drop_path: stochastic-depth rate on both residual branches.
        norm_layer: normalisation over channels, called as ``norm_layer(dim)``.
        act_layer: activation of every MLP.

    Shapes:
        input: (B, N, d) with N == seq_len; output: (B, N, d).
    """

    def __init__(self, dim: int, seq_len: int, d_ffn: int | None = None, dropout: float = 0.0,
                 shared_norm: bool = True, drop_path: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm,
                 act_layer: type[nn.Module] = nn.GELU, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        d_ffn = 2 * dim if d_ffn is None else d_ffn
        for name, value in (("dim", dim), ("seq_len", seq_len), ("d_ffn", d_ffn)):
            check_int(name, value, where="NiNBlock")
        check_probability("dropout", dropout, where="NiNBlock")
        check_probability("drop_path", drop_path, where="NiNBlock")
        dd = dict(device=device, dtype=dtype)
        self.dim, self.seq_len, self.d_ffn = dim, seq_len, d_ffn
        self.dropout, self.shared_norm, self.drop_path_rate = float(dropout), bool(shared_norm), float(drop_path)
        self.norm1 = norm_layer(dim, **dd)
        self.gate = MixerGatingUnit(dim, seq_len, d_ffn, dropout, norm_layer, act_layer, **dd)
        self.norm2 = None if shared_norm else norm_layer(dim, **dd)
        self.mlp = Mlp(dim, d_ffn, act_layer=act_layer, drop=dropout, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def reset_parameters(self) -> None:
        reset_children(self)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, seq_len={self.seq_len}, d_ffn={self.d_ffn}, dropout={self.dropout}, "
                f"shared_norm={self.shared_norm}, drop_path={self.drop_path_rate}")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """``attn_mask`` and ``is_causal`` are there because timm's ViT passes them to every ``block_fn`` (and so
        does its FX trace); a block without attention cannot apply them, so real ones are refused."""
        if isinstance(attn_mask, torch.Tensor) or is_causal is True:
            raise ValueError("NiNBlock mixes tokens with an MLP, not attention: attn_mask and is_causal cannot apply")
        check_tokens(x, self.seq_len, self.dim, where="NiNBlock")
        x = x + self.drop_path(self.gate(self.norm1(x)))
        norm2 = self.norm1 if self.norm2 is None else self.norm2
        return x + self.drop_path(self.mlp(norm2(x)))
