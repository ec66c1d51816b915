"""ELA: Efficient Local Attention for Deep Convolutional Neural Networks (Wei Xu, Yi Wan, 2024).

Paper: https://arxiv.org/abs/2403.01123

Follows the authors' code (``Xuwei86/ELA_Code``, class ``ELA72`` in ``MbV2/models/attention.py``, same forward in
their YOLOX and DeepLab trees): strip average pooling along W and along H, ONE bias-free ``Conv1d`` shared by both
strips, ONE affine ``GroupNorm`` shared by both strips but applied to each strip separately (so each strip has its
own statistics), a sigmoid with no activation before it, and ``y = x * a_h * a_w``. No channel reduction and no
residual inside the module: the authors' ResNet adds ``out = ELA(out) + out`` around it, which lives in the host
block (``attnzoo.zoo.ela_resnet``), not here.

The four named variants are the paper's T/B/S/L (kernel size, conv groups, GroupNorm groups); their values match
configurations in the authors' code: T (5, C, 32), B (7, C, 16), S (5, C/8, 16), L (7, C/8, 16).

Deliberate differences:

* Channel counts that a variant's group numbers do not divide (the authors' code fails there, e.g. ELA-T on
  MobileNetV2's 144 channels) fall back to the largest divisor of C not above the requested number; the value used
  and the one requested are both shown by ``extra_repr``.
* The whole gate runs as one op, :func:`attnzoo.kernels.ela.ela_gate` (fusable on the GPU).
* Not timm's ``'ela'`` (``EfficientLocalAttn``), which uses separate H and W convs, depthwise only, one-group
  norms per direction and a SiLU before the sigmoid. This class plugs into the same timm slots: ResNet's
  ``attn_layer`` and EfficientNet/MobileNet's ``se_layer`` (it accepts and ignores ``rd_ratio`` and ``act_layer``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from attnzoo._checks import check_int, check_nchw
from attnzoo.kernels.ela import ela_gate
from attnzoo.layers.scripting import NotScriptable

__all__ = ["ELA", "ELA_VARIANTS"]

# variant -> (kernel_size, channels per conv group or None for depthwise, GroupNorm groups)
ELA_VARIANTS: dict[str, tuple[int, int | None, int]] = {
    "T": (5, None, 32),
    "B": (7, None, 16),
    "S": (5, 8, 16),
    "L": (7, 8, 16),
}


def _largest_divisor(n: int, at_most: int) -> int:
    """Largest d <= at_most with n % d == 0 (at least 1)."""
    return next(d for d in range(min(n, max(at_most, 1)), 0, -1) if n % d == 0)


class ELA(NotScriptable, nn.Module):
    """Efficient Local Attention: strip-pooled 1-D conv gates along H and W.

    Args:
        channels: number of input (and output) channels C.
        variant: 'T', 'B', 'S' or 'L' (see :data:`ELA_VARIANTS`); sets the defaults of the next three arguments.
        kernel_size: odd Conv1d kernel size (overrides the variant's).
        groups: Conv1d groups (overrides the variant's: C for T/B, C/8 for S/L).
        norm_groups: GroupNorm groups (overrides the variant's: 32 for T, 16 otherwise).
        eps: GroupNorm epsilon.
        backend: ``ela_gate`` backend, 'auto' | 'torch' | 'triton'.
        rd_ratio: accepted for timm's ``se_layer`` slot and ignored (ELA has no channel reduction).
        act_layer: accepted for timm's ``se_layer`` slot and ignored (ELA has no activation before the sigmoid).
        device: parameter device.
        dtype: parameter dtype.

    ``groups`` and ``norm_groups`` that do not divide C fall back to the largest divisor of C below them.

    Shapes:
        input: (B, C, H, W); output: (B, C, H, W).
    """

    def __init__(self, channels: int, variant: str = "B", kernel_size: int | None = None, groups: int | None = None,
                 norm_groups: int | None = None, eps: float = 1e-5, backend: str = "auto",
                 rd_ratio: float | None = None, act_layer: type[nn.Module] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        channels = check_int("channels", channels, where="ELA")
        if variant not in ELA_VARIANTS:
            raise ValueError(f"ELA: variant must be one of {sorted(ELA_VARIANTS)}, got {variant!r}")
        default_k, per_group, default_norm_groups = ELA_VARIANTS[variant]
        kernel_size = check_int("kernel_size", default_k if kernel_size is None else kernel_size, where="ELA")
        if kernel_size % 2 == 0:
            raise ValueError(f"ELA: kernel_size must be odd (padding k // 2 keeps the strip length), "
                             f"got {kernel_size}")
        if groups is None:
            groups = channels if per_group is None else max(channels // per_group, 1)
        self.requested_groups = check_int("groups", groups, where="ELA")
        self.requested_norm_groups = check_int(
            "norm_groups", default_norm_groups if norm_groups is None else norm_groups, where="ELA")
        self.channels = channels
        self.variant = variant
        self.kernel_size = kernel_size
        self.groups = _largest_divisor(channels, self.requested_groups)
        self.norm_groups = _largest_divisor(channels, self.requested_norm_groups)
        self.backend = backend
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=self.groups,
                              bias=False, **dd)
        self.gn = nn.GroupNorm(self.norm_groups, channels, eps=eps, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.gn.reset_parameters()

    def extra_repr(self) -> str:
        def shown(used: int, requested: int) -> str:
            return str(used) if used == requested else f"{used} (requested {requested})"

        return (f"{self.channels}, variant={self.variant!r}, kernel_size={self.kernel_size}, "
                f"groups={shown(self.groups, self.requested_groups)}, "
                f"norm_groups={shown(self.norm_groups, self.requested_norm_groups)}, backend={self.backend!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.channels, where="ELA")
        return ela_gate(x, self.conv.weight, self.gn.weight, self.gn.bias, self.groups, self.norm_groups, self.gn.eps,
                        self.backend)
