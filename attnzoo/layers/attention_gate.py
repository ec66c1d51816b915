"""The grouped attention gate of MK-UNet's skip connections (Rahman, Marculescu; ICCV 2025 Workshops).

arXiv: https://arxiv.org/abs/2509.18493 (MK-UNet); the gate is Attention U-Net's additive attention gate (Oktay et al.,
https://arxiv.org/abs/1804.03999) with grouped convolutions, EMCAD's LGAG (https://arxiv.org/abs/2405.06880).

Follows the authors' gate (SLDGroup/MK-UNet, ``mkunet_network.py``): grouped ``W_g``/``W_x`` convs with BN, the
activation, a 1x1 ``psi`` conv with BN and sigmoid, dense convs when the kernel is 1, and the authors'
initialisation (:func:`attnzoo.layers.weight_init.init_mkunet_weights`). Attribute names follow theirs, so their
state dicts load unchanged. Deliberate difference: bad arguments and inputs raise ``ValueError`` naming them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import create_act_layer

from attnzoo._checks import check_act_layer, check_int, check_nchw
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.weight_init import init_mkunet_weights

__all__ = ["GroupedAttentionGate"]


class GroupedAttentionGate(NotScriptable, nn.Module):
    """Attention-U-Net gate with grouped convs: ``x * sigmoid(BN(conv1x1(act(BN(Wg g) + BN(Wx x)))))``.

    Args:
        gate_channels: channels of the gating signal ``g`` (the decoder feature).
        skip_channels: channels of the skip feature ``x`` that is gated.
        inter_channels: width of the intermediate map.
        kernel_size: kernel of ``W_g`` and ``W_x`` (3 in MK-UNet); with 1 the convs are dense (authors' rule).
        groups: groups of ``W_g`` and ``W_x`` (MK-UNet uses ``inter_channels``).
        act_layer: activation on ``W_g g + W_x x``: a name of timm's ``get_act_layer`` or a module class.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        g: (B, gate_channels, H, W); x: (B, skip_channels, H, W); output: (B, skip_channels, H, W).
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int, kernel_size: int = 3,
                 groups: int = 1, act_layer: str | type[nn.Module] = "relu", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("gate_channels", gate_channels), ("skip_channels", skip_channels),
                            ("inter_channels", inter_channels), ("groups", groups)):
            check_int(name, value)
        if check_int("kernel_size", kernel_size) % 2 == 0:
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
        self.activation = create_act_layer(check_act_layer(act_layer), inplace=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_mkunet_weights(self)

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
