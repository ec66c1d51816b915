"""MK-UNet: Multi-kernel Lightweight CNN for Medical Image Segmentation (Rahman, Marculescu; ICCV 2025 Workshops).

arXiv: https://arxiv.org/abs/2509.18493

Blocks: the multi-kernel depthwise convolution (:class:`MKDC`), the multi-kernel inverted residual block
(:class:`MKIR`), and the three attention pieces of the MK-UNet decoder: CBAM-style :class:`ChannelAttention`,
:class:`SpatialAttention` (one instance is shared by every decoder stage) and the
:class:`GroupedAttentionGate` on the skip connections.

Follows the authors' code (SLDGroup/MK-UNet, ``mkunet_network.py``) for every computation: per-kernel depthwise
conv + BN + ReLU6 branches that are summed (or concatenated), the sequential mode in which each branch sees the
input plus the previous branch outputs, the channel shuffle with ``gcd(mkdc channels, out_channels)`` groups just
before the second pointwise conv, the un-normalised 1x1 projection on a channel-changing skip, the
``ratio = min(ratio, C)`` rule of the channel attention and the initialisation (conv weights N(0, 0.02), zero
biases, BN 1/0). Attribute names follow the authors' too, so their state dicts load unchanged.

Deliberate differences:

- :class:`MKDC` combines its branches itself (``combine='sum'|'cat'``) and returns one tensor; the authors return
  the list of branch outputs and combine them in the inverted residual block. The arithmetic is the same.
- The sequential mode needs ``stride == 1``: with a stride the running sum ``x + branch(x)`` has mismatched
  shapes and the authors' code would fail at run time; we reject it in the constructor.
- The figure draws the channel shuffle inside MKDC, after the sum; like the code we shuffle in :class:`MKIR`.
  Either way it is a fixed permutation of the dense ``pconv2`` inputs and does not change what can be learnt.
- Bad inputs raise ``ValueError`` naming the argument instead of failing inside a convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from attnzoo._checks import check_nchw
from attnzoo.layers.scripting import NotScriptable

ActLayer = str | Callable[..., nn.Module]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.2, inplace=True),
    "gelu": nn.GELU,
    "hswish": lambda: nn.Hardswish(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
}


def create_act(act_layer: ActLayer) -> nn.Module:
    """An activation module from a name in ``relu|relu6|leakyrelu|gelu|hswish|silu`` or a module class."""
    if isinstance(act_layer, str):
        if act_layer.lower() not in _ACTIVATIONS:
            raise ValueError(f"act_layer={act_layer!r} is not one of {sorted(_ACTIVATIONS)} or an nn.Module class")
        return _ACTIVATIONS[act_layer.lower()]()
    if isinstance(act_layer, type) and issubclass(act_layer, nn.Module):
        return act_layer()
    raise TypeError(f"act_layer must be a str or an nn.Module class, got {act_layer!r}")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: channel ``g * n + i`` moves to ``i * groups + g``.

    Shapes:
        x: (B, C, H, W) with C divisible by ``groups``; output: the same.
    """
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)  # (B, groups, C/groups, H, W)
    return x.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)


def init_authors(module: nn.Module) -> None:
    """The authors' 'normal' scheme on every conv and BN inside ``module``: N(0, 0.02) weights, zero biases, BN 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class MKDC(NotScriptable, nn.Module):
    """Multi-kernel depthwise convolution: one depthwise conv + BN + activation per kernel size, combined.

    Args:
        channels: input (and per-branch output) channels C.
        kernel_sizes: odd kernel sizes, one branch each (the paper's 1, 3, 5).
        stride: stride of every branch.
        act_layer: activation after each branch's BN (ReLU6 in the paper).
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
        _check_positive("channels", channels)
        _check_positive("stride", stride)
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
                create_act(act_layer),
            )
            for k in kernel_sizes
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_authors(self)

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
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
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
            create_act(act_layer),
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
        init_authors(self)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, hidden={self.hidden_channels}, "
                f"shuffle_groups={self.shuffle_groups}, skip={'proj' if self.conv1x1 is not None else self.use_skip}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        out = self.multi_scale_dwconv(self.pconv1(x))  # (B, combined, H', W')
        out = self.pconv2(channel_shuffle(out, self.shuffle_groups))  # (B, out_channels, H', W')
        if not self.use_skip:
            return out
        return (x if self.conv1x1 is None else self.conv1x1(x)) + out


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`` with a shared bias-free 1x1 MLP.

    Returns the attention map; the caller multiplies (MK-UNet decoders do ``x * ca(x)``).

    Args:
        channels: input channels C.
        ratio: reduction ratio; the hidden width is ``C // min(ratio, C)`` (the authors' rule, so narrow stages
            keep at least one hidden unit).
        act_layer: activation between the two 1x1 convs.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, C, H, W); output: (B, C, 1, 1) in (0, 1).
    """

    def __init__(self, channels: int, ratio: int = 16, act_layer: ActLayer = "relu",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        _check_positive("channels", channels)
        _check_positive("ratio", ratio)
        self.channels, self.ratio = channels, ratio
        self.reduced_channels = channels // min(ratio, channels)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, self.reduced_channels, 1, bias=False, device=device, dtype=dtype)
        self.activation = create_act(act_layer)
        self.fc2 = nn.Conv2d(self.reduced_channels, channels, 1, bias=False, device=device, dtype=dtype)
        self.sigmoid = nn.Sigmoid()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_authors(self)

    def extra_repr(self) -> str:
        return f"{self.channels}, ratio={self.ratio}, reduced_channels={self.reduced_channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.channels)
        avg = self.fc2(self.activation(self.fc1(self.avg_pool(x))))  # (B, C, 1, 1)
        peak = self.fc2(self.activation(self.fc1(self.max_pool(x))))  # (B, C, 1, 1)
        return self.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv_kxk([mean_c(x); max_c(x)]))``; channel-agnostic, so shareable.

    Args:
        kernel_size: odd kernel of the 2->1 conv (7 in the paper).
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, C, H, W) for any C; output: (B, 1, H, W) in (0, 1).
    """

    def __init__(self, kernel_size: int = 7, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype)
        self.sigmoid = nn.Sigmoid()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_authors(self)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, None)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return self.sigmoid(self.conv(pooled))


class GroupedAttentionGate(NotScriptable, nn.Module):
    """Attention-U-Net gate with grouped convs: ``x * sigmoid(BN(conv1x1(act(BN(Wg g) + BN(Wx x)))))``.

    Args:
        gate_channels: channels of the gating signal ``g`` (the decoder feature).
        skip_channels: channels of the skip feature ``x`` that is gated.
        inter_channels: width of the intermediate map.
        kernel_size: kernel of ``W_g`` and ``W_x`` (3 in MK-UNet); with 1 the convs are dense (authors' rule).
        groups: groups of ``W_g`` and ``W_x`` (MK-UNet uses ``inter_channels``).
        act_layer: activation on ``W_g g + W_x x``.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        g: (B, gate_channels, H, W); x: (B, skip_channels, H, W); output: (B, skip_channels, H, W).
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int, kernel_size: int = 3,
                 groups: int = 1, act_layer: ActLayer = "relu", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("gate_channels", gate_channels), ("skip_channels", skip_channels),
                            ("inter_channels", inter_channels), ("groups", groups)):
            _check_positive(name, value)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        groups = 1 if kernel_size == 1 else groups
        if any(c % groups for c in (gate_channels, skip_channels, inter_channels)):
            raise ValueError(f"groups={groups} must divide gate_channels={gate_channels}, skip_channels="
                             f"{skip_channels} and inter_channels={inter_channels}")
        self.gate_channels, self.skip_channels, self.inter_channels = gate_channels, skip_channels, inter_channels
        self.kernel_size, self.groups = kernel_size, groups
        factory = dict(device=device, dtype=dtype)

        def branch(channels: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, inter_channels, kernel_size, padding=kernel_size // 2, groups=groups, **factory),
                nn.BatchNorm2d(inter_channels, **factory),
            )

        self.W_g = branch(gate_channels)
        self.W_x = branch(skip_channels)
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1, **factory), nn.BatchNorm2d(1, **factory),
                                 nn.Sigmoid())
        self.activation = create_act(act_layer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_authors(self)

    def extra_repr(self) -> str:
        return (f"gate={self.gate_channels}, skip={self.skip_channels}, inter={self.inter_channels}, "
                f"kernel_size={self.kernel_size}, groups={self.groups}")

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_nchw(g, self.gate_channels, name="g")
        check_nchw(x, self.skip_channels, name="x")
        if g.shape[2:] != x.shape[2:]:
            raise ValueError(f"g and x must have the same spatial size, got {tuple(g.shape)} and {tuple(x.shape)}")
        psi = self.psi(self.activation(self.W_g(g) + self.W_x(x)))  # (B, 1, H, W)
        return x * psi
