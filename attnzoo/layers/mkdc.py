"""MK-UNet: Multi-kernel Lightweight CNN for Medical Image Segmentation (Rahman, Marculescu; ICCV 2025 Workshops).

arXiv: https://arxiv.org/abs/2509.18493

Blocks: the multi-kernel depthwise convolution (:class:`MKDC`) and the multi-kernel inverted residual block
(:class:`MKIR`). The decoder's attention lives in its own modules: CBAM-style channel and spatial attention in
:mod:`attnzoo.layers.cbam`, the grouped attention gate in :mod:`attnzoo.layers.attention_gate`.

Follows the authors' code (SLDGroup/MK-UNet, ``mkunet_network.py``) for every computation: per-kernel depthwise
conv + BN + ReLU6 branches that are summed (or concatenated), the sequential mode in which each branch sees the
input plus the previous branch outputs, the channel shuffle with ``gcd(mkdc channels, out_channels)`` groups just
before the second pointwise conv (ShuffleNet's permutation, ``torch.nn.functional.channel_shuffle``), the
un-normalised 1x1 projection on a channel-changing skip and the initialisation
(:func:`attnzoo.layers.weight_init.init_mkunet_weights`: conv weights N(0, 0.02), zero biases, BN 1/0). Attribute
names follow the authors' too, so their state dicts load unchanged. Activations come from timm's
``create_act_layer``, so ``act_layer`` takes any timm activation name or a module class.

Deliberate differences:

- :class:`MKDC` combines its branches itself (``combine='sum'|'cat'``) and returns one tensor; the authors return
  the list of branch outputs and combine them in the inverted residual block. The arithmetic is the same.
- The sequential mode needs ``stride == 1``: with a stride the running sum ``x + branch(x)`` has mismatched
  shapes and the authors' code would fail at run time; we reject it in the constructor.
- The figure draws the channel shuffle inside MKDC, after the sum; like the code we shuffle in :class:`MKIR`.
  Either way it is a fixed permutation of the dense ``pconv2`` inputs and does not change what can be learnt.
- Bad inputs raise ``ValueError`` (``TypeError`` for a non-int size) naming the argument instead of failing inside
  a convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_act_layer

from attnzoo._checks import check_act_layer, check_int, check_nchw
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.weight_init import init_mkunet_weights

__all__ = ["MKDC", "MKIR"]

ActLayer = str | Callable[..., nn.Module]


class MKDC(NotScriptable, nn.Module):
    """Multi-kernel depthwise convolution: one depthwise conv + BN + activation per kernel size, combined.

    Args:
        channels: input (and per-branch output) channels C.
        kernel_sizes: odd kernel sizes, one branch each (the paper's 1, 3, 5).
        stride: stride of every branch.
        act_layer: activation after each branch's BN (ReLU6 in the paper): a timm activation name or a module class.
        parallel: every branch sees the input (paper default). With False the branches run in order and each
            sees the input plus all previous branch outputs (the authors' ``dw_parallel=False``).
        combine: ``'sum'`` adds the branch outputs (C channels, the paper), ``'cat'`` concatenates them
            (``len(kernel_sizes) * C`` channels).
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, C, H, W); output: (B, C or len(kernel_sizes) * C, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (1, 3, 5), stride: int = 1,
                 act_layer: ActLayer = "relu6", parallel: bool = True, combine: str = "sum",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_int("channels", channels)
        check_int("stride", stride)
        kernel_sizes = tuple(kernel_sizes)
        if not kernel_sizes or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be a non-empty sequence of odd positive ints, got {kernel_sizes!r}")
        if combine not in ("sum", "cat"):
            raise ValueError(f"combine must be 'sum' or 'cat', got {combine!r}")
        if not parallel and stride != 1:
            raise ValueError(f"the sequential mode (parallel=False) adds each branch output to its input and needs "
                             f"stride=1, got stride={stride}")
        self.channels, self.kernel_sizes, self.stride = channels, kernel_sizes, stride
        self.parallel, self.combine = parallel, combine
        self.out_channels = channels * (len(kernel_sizes) if combine == "cat" else 1)
        self.dwconvs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels, bias=False, device=device,
                          dtype=dtype),
                nn.BatchNorm2d(channels, device=device, dtype=dtype),
                create_act_layer(check_act_layer(act_layer), inplace=True),
            )
            for k in kernel_sizes
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_mkunet_weights(self)

    def extra_repr(self) -> str:
        mode = "parallel" if self.parallel else "sequential"
        return (f"{self.channels}, kernel_sizes={self.kernel_sizes}, stride={self.stride}, {mode}, "
                f"combine={self.combine!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.channels)
        outputs = []
        for branch in self.dwconvs:
            y = branch(x)
            outputs.append(y)
            if not self.parallel:
                x = x + y
        if self.combine == "cat":
            return torch.cat(outputs, dim=1)  # (B, len(kernel_sizes) * C, H', W')
        return sum(outputs[1:], outputs[0])  # (B, C, H', W')


class MKIR(NotScriptable, nn.Module):
    """Multi-kernel inverted residual block: 1x1 expand + BN + act, MKDC, channel shuffle, 1x1 project + BN, skip.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1 (with residual; a bias-free 1x1 conv projects the skip when the channel count changes) or 2
            (no residual).
        expansion_factor: hidden width ``int(in_channels * expansion_factor)``.
        kernel_sizes: MKDC kernel sizes.
        parallel: MKDC parallel (True) or sequential (False) mode.
        add: sum the MKDC branches (True, the paper) or concatenate them.
        act_layer: activation after the expansion and after each MKDC branch.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, in_channels, H, W); output: (B, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion_factor: float = 2,
                 kernel_sizes: Sequence[int] = (1, 3, 5), parallel: bool = True, add: bool = True,
                 act_layer: ActLayer = "relu6", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("out_channels", out_channels)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        hidden = int(in_channels * expansion_factor)
        if hidden < 1:
            raise ValueError(f"expansion_factor={expansion_factor!r} gives {hidden} hidden channels; need >= 1")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.hidden_channels, self.expansion_factor = hidden, expansion_factor
        factory = dict(device=device, dtype=dtype)
        self.pconv1 = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False, **factory),
            nn.BatchNorm2d(hidden, **factory),
            create_act_layer(check_act_layer(act_layer), inplace=True),
        )
        self.multi_scale_dwconv = MKDC(hidden, kernel_sizes, stride, act_layer, parallel,
                                       "sum" if add else "cat", **factory)
        combined = self.multi_scale_dwconv.out_channels
        self.shuffle_groups = math.gcd(combined, out_channels)
        self.pconv2 = nn.Sequential(
            nn.Conv2d(combined, out_channels, 1, bias=False, **factory),
            nn.BatchNorm2d(out_channels, **factory),
        )
        self.use_skip = stride == 1
        self.conv1x1 = (nn.Conv2d(in_channels, out_channels, 1, bias=False, **factory)
                        if self.use_skip and in_channels != out_channels else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_mkunet_weights(self)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, hidden={self.hidden_channels}, "
                f"shuffle_groups={self.shuffle_groups}, skip={'proj' if self.conv1x1 is not None else self.use_skip}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        out = self.multi_scale_dwconv(self.pconv1(x))  # (B, combined, H', W')
        out = self.pconv2(F.channel_shuffle(out, self.shuffle_groups))  # (B, out_channels, H', W')
        if not self.use_skip:
            return out
        return (x if self.conv1x1 is None else self.conv1x1(x)) + out
