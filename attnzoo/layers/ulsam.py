"""ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks.

Rajat Saini*, Nandan Kumar Jha*, Bedanta Das, Sparsh Mittal, C. Krishna Mohan; WACV 2020.
Paper: https://arxiv.org/abs/2006.15102

Follows the authors' current code (``Nandan91/ULSAM`` ``ulsam.py`` at 9a07d68, i.e. with PR #7's channel split and
PR #9's max-pool-after-depthwise fix). The C input channels are split into g subspaces of G = C / g channels; for
each subspace F_n::

    A_n  = softmax_over_HW(ReLU(BN(PW_{G->1}(maxpool3x3,s1(ReLU(BN(DW_1x1(F_n))))))))
    F'_n = A_n * F_n + F_n          (A_n, one map, broadcast over the G channels)

and the outputs are concatenated. The paper's formula has no BN/ReLU; the code adds them after both convs and we
follow the code. Issue #10: one map per subspace (not G) is intended (paper Sec. 3.2, case 3).

Deliberate differences:

* BatchNorm momentum is PyTorch's default 0.1 (configurable, ``bn_momentum``). The authors' ``momentum=0.9`` is a
  Keras-convention slip: in PyTorch it gives the *current batch* weight 0.9 in the running statistics.
* The g per-subspace branches run as single grouped layers over all C channels (depthwise conv and BN over C,
  a ``groups=g`` pointwise conv to g maps, BN over g). This is the same function with the same parameter count
  (5C + 3g; 2,572 at C=512, g=4) as g separate ``SubSpace`` modules, without a Python loop. Per-subspace authors'
  weights map in by concatenating along the channel dim.
* The authors' unused ``nout, h, w`` arguments and their import-time ``torch.set_default_tensor_type`` are dropped.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnzoo._checks import check_int, check_nchw
from attnzoo.layers.scripting import NotScriptable

__all__ = ["ULSAM"]


class ULSAM(NotScriptable, nn.Module):
    """Ultra-lightweight subspace attention: one softmax spatial map per channel subspace, plus identity.

    Args:
        channels: number of input (and output) channels C (the paper's m).
        num_splits: number of subspaces g; must divide C.
        bn_momentum: BatchNorm momentum in PyTorch's convention (weight of the current batch).
        bn_eps: BatchNorm epsilon.
        rd_ratio: accepted for timm's ``se_layer`` slot and ignored.
        act_layer: accepted for timm's ``se_layer`` slot and ignored (ULSAM uses ReLU as the authors do).
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, C, H, W); output: (B, C, H, W).
    """

    def __init__(self, channels: int, num_splits: int = 4, bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 rd_ratio: float | None = None, act_layer: type[nn.Module] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        for name, value in (("channels", channels), ("num_splits", num_splits)):
            check_int(name, value, where="ULSAM")
        if channels % num_splits:
            raise ValueError(f"ULSAM: num_splits must divide channels={channels}, got num_splits={num_splits}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ValueError(f"ULSAM: bn_momentum must be in [0, 1] (PyTorch convention), got {bn_momentum!r}")
        self.channels = channels
        self.num_splits = num_splits
        self.dw = nn.Conv2d(channels, channels, 1, groups=channels, **dd)
        self.bn_dw = nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_momentum, **dd)
        self.pw = nn.Conv2d(channels, num_splits, 1, groups=num_splits, **dd)
        self.bn_pw = nn.BatchNorm2d(num_splits, eps=bn_eps, momentum=bn_momentum, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.dw, self.bn_dw, self.pw, self.bn_pw):
            module.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.channels}, num_splits={self.num_splits}, subspace_channels={self.channels // self.num_splits}, "
                f"bn_momentum={self.bn_dw.momentum}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.channels, where="ULSAM")
        b, c, h, w = x.shape
        g = self.num_splits
        attn = F.relu(self.bn_dw(self.dw(x)))
        attn = F.max_pool2d(attn, kernel_size=3, stride=1, padding=1)
        attn = F.relu(self.bn_pw(self.pw(attn)))  # (B, g, H, W)
        attn = attn.reshape(b, g, 1, h * w).softmax(dim=-1).reshape(b, g, 1, h, w)  # (B, g, 1, H, W)
        x = x.reshape(b, g, c // g, h, w)  # (B, g, G, H, W)
        return (x * attn + x).reshape(b, c, h, w)  # (B, C, H, W)
