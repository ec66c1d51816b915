"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon; ECCV 2018), as MK-UNet's decoder uses it.

arXiv: https://arxiv.org/abs/1807.06521

:class:`ChannelAttention` and :class:`SpatialAttention` are CBAM's two attention maps, in the form of the
MK-UNet authors' channel and spatial attention blocks (SLDGroup/MK-UNet, ``mkunet_network.py``): they return the
map and leave the multiplication to the caller, the channel attention's hidden width follows the authors'
``ratio = min(ratio, C)`` rule, and both start from the authors' initialisation
(:func:`attnzoo.layers.weight_init.init_mkunet_weights`). Attribute names follow the authors' code, so their state
dicts load unchanged.

Deliberate differences from the paper: the modules return the attention map instead of the refined feature (so
MK-UNet can share one :class:`SpatialAttention` across all decoder stages), and bad inputs raise ``ValueError``
naming the argument instead of failing inside a convolution.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import create_act_layer

from attnzoo._checks import check_act_layer, check_int, check_nchw
from attnzoo.layers.weight_init import init_mkunet_weights

__all__ = ["ChannelAttention", "SpatialAttention"]


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`` with a shared bias-free 1x1 MLP.

    Returns the attention map; the caller multiplies (MK-UNet decoders do ``x * ca(x)``).

    Args:
        channels: input channels C.
        ratio: reduction ratio; the hidden width is ``C // min(ratio, C)`` (the authors' rule, so narrow stages
            keep at least one hidden unit).
        act_layer: activation between the two 1x1 convs: a name of timm's ``get_act_layer`` or a module class.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, C, H, W); output: (B, C, 1, 1) in (0, 1).
    """

    def __init__(self, channels: int, ratio: int = 16, act_layer: str | type[nn.Module] = "relu",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.channels, self.ratio = check_int("channels", channels), check_int("ratio", ratio)
        self.reduced_channels = channels // min(ratio, channels)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, self.reduced_channels, 1, bias=False, device=device, dtype=dtype)
        self.activation = create_act_layer(check_act_layer(act_layer), inplace=True)
        self.fc2 = nn.Conv2d(self.reduced_channels, channels, 1, bias=False, device=device, dtype=dtype)
        self.sigmoid = nn.Sigmoid()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_mkunet_weights(self)

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
        if check_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype)
        self.sigmoid = nn.Sigmoid()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_mkunet_weights(self)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, None)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return self.sigmoid(self.conv(pooled))
