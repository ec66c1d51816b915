"""``ela_gate``: the whole Efficient Local Attention gate as one op.

ELA (Xu & Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", arXiv 2403.01123)
multiplies a feature map by two strip gates::

    z_h = mean_W(x)                      (B, C, H)
    z_w = mean_H(x)                      (B, C, W)
    a_* = sigmoid(GN(conv1d(z_*)))       one Conv1d and one GroupNorm shared by both strips,
                                         GroupNorm statistics taken per strip (two calls)
    y   = x * a_h[..., None] * a_w[..., None, :]

Everything between ``x`` and ``y`` is one op here (strip pooling, the shared conv, the shared norm, the sigmoid and
the broadcast multiply), so a GPU kernel can fuse it and ``torch.compile`` / ``opcheck`` see a single node.

Layers (see DESIGN.md): :func:`ela_gate_reference` is the pure-PyTorch reference; ``attnzoo::ela_gate`` and
``attnzoo::ela_gate_backward`` are the op boundary (the 'torch' backend runs the reference, its backward
runs :func:`ela_gate_backward_reference`); :func:`ela_gate` validates and dispatches. The 'triton' backend calls
``attnzoo.kernels.ela_triton.ela_gate_forward(x, weight, norm_weight, norm_bias, groups, norm_groups, eps)`` and
``ela_gate_backward(grad_out, <same arguments>) -> (grad_x, grad_weight, grad_norm_weight, grad_norm_bias)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo._checks import check_nchw
from attnzoo.kernels.define import define_op

__all__ = ["ELA_GATE", "ela_gate", "ela_gate_backward_reference", "ela_gate_reference"]


def ela_gate_reference(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                       groups: int, norm_groups: int, eps: float = 1e-5) -> torch.Tensor:
    """ELA in plain PyTorch: ``x * sigmoid(GN(conv1d(mean_W x))) * sigmoid(GN(conv1d(mean_H x)))``.

    Args:
        x: the feature map.
        weight: the shared Conv1d weight, ``groups`` groups, odd kernel size (padding ``k // 2`` keeps lengths).
        norm_weight: the shared GroupNorm scale.
        norm_bias: the shared GroupNorm shift.
        groups: Conv1d groups.
        norm_groups: GroupNorm groups.
        eps: GroupNorm epsilon.

    Shapes:
        x: (B, C, H, W); weight: (C, C // groups, k); norm_weight, norm_bias: (C,); returns (B, C, H, W).
    """
    padding = weight.shape[-1] // 2

    def gate(strip: torch.Tensor) -> torch.Tensor:
        strip = F.conv1d(strip, weight, padding=padding, groups=groups)
        return torch.sigmoid(F.group_norm(strip, norm_groups, norm_weight, norm_bias, eps))

    a_h = gate(x.mean(dim=3))  # (B, C, H)
    a_w = gate(x.mean(dim=2))  # (B, C, W)
    return x * a_h.unsqueeze(3) * a_w.unsqueeze(2)  # (B, C, H, 1) and (B, C, 1, W) broadcast over (B, C, H, W)


def ela_gate_backward_reference(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                norm_weight: torch.Tensor, norm_bias: torch.Tensor, groups: int, norm_groups: int,
                                eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`ela_gate_reference` w.r.t. (x, weight, norm_weight, norm_bias), written out.

    Autograd cannot record inside a custom op's implementation (the autograd dispatch keys are excluded there), so
    the 'torch' backward is this chain rule over aten's own conv and GroupNorm backward kernels::

        grad_x   = g * a_h * a_w + (mean_W backward of d/dz_h) + (mean_H backward of d/dz_w)
        d/da_h   = sum_W(g * x * a_w),  d/dn_h = d/da_h * a_h * (1 - a_h)   (and the same for the W strip)

    The shared conv and norm parameters receive the sum of both strips' gradients.

    Shapes:
        grad_out, x: (B, C, H, W); weight: (C, C // groups, k); norm_weight, norm_bias: (C,); returns tensors
        shaped like x, weight, norm_weight, norm_bias.
    """
    b, c, h, w = x.shape
    padding = weight.shape[-1] // 2
    grad_weight = torch.zeros_like(weight)
    grad_norm_weight = torch.zeros_like(norm_weight)
    grad_norm_bias = torch.zeros_like(norm_bias)
    strips = []
    for strip in (x.mean(dim=3), x.mean(dim=2)):  # (B, C, H), (B, C, W)
        conv = F.conv1d(strip, weight, padding=padding, groups=groups)
        normed, mean, rstd = torch.ops.aten.native_group_norm(conv, norm_weight, norm_bias, b, c, conv.shape[-1],
                                                              norm_groups, eps)
        strips.append((strip, conv, mean, rstd, torch.sigmoid(normed)))
    a_h, a_w = strips[0][-1], strips[1][-1]  # (B, C, H), (B, C, W)
    # full-size temporaries kept to two: grad_out * x (reduced by batched mat-vec products) and grad_x (in place)
    gx = (grad_out * x).reshape(b * c, h, w)  # (B*C, H, W)
    grad_gates = (torch.bmm(gx, a_w.reshape(b * c, w, 1)).reshape(b, c, h),  # sum_W(g * x * a_w): (B, C, H)
                  torch.bmm(a_h.reshape(b * c, 1, h), gx).reshape(b, c, w))  # sum_H(g * x * a_h): (B, C, W)
    del gx
    grad_strips = []
    for (strip, conv, mean, rstd, gate), grad_gate in zip(strips, grad_gates, strict=True):
        grad_normed = grad_gate * gate * (1 - gate)
        grad_conv, gnw, gnb = torch.ops.aten.native_group_norm_backward(
            grad_normed, conv, mean, rstd, norm_weight, b, c, conv.shape[-1], norm_groups, [True, True, True])
        grad_strip, gw, _ = torch.ops.aten.convolution_backward(
            grad_conv, strip, weight, None, [1], [padding], [1], False, [0], groups, [True, True, False])
        grad_weight += gw
        grad_norm_weight += gnw
        grad_norm_bias += gnb
        grad_strips.append(grad_strip)
    grad_x = grad_out * a_h.unsqueeze(3)  # (B, C, H, W)
    grad_x.mul_(a_w.unsqueeze(2)).add_(grad_strips[0].unsqueeze(3) / w).add_(grad_strips[1].unsqueeze(2) / h)
    return grad_x, grad_weight, grad_norm_weight, grad_norm_bias


def _check_param(t: torch.Tensor, name: str, shape: tuple[int, ...], x: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"ela_gate: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"ela_gate: {name} must have shape {shape} for x of shape {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    if t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"ela_gate: {name} must match x's dtype and device ({x.dtype}, {x.device}), "
                         f"got ({t.dtype}, {t.device})")


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                  groups: int, norm_groups: int, eps: float) -> None:
    check_nchw(x, where="ela_gate")
    channels = x.shape[1]
    for name, value in (("groups", groups), ("norm_groups", norm_groups)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or channels % value:
            raise ValueError(f"ela_gate: {name} must be a positive int dividing C={channels}, got {value!r}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3 or weight.shape[-1] % 2 == 0:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"ela_gate: weight must be a 3-D (C, C // groups, k) tensor with odd k, got {got}")
    _check_param(weight, "weight", (channels, channels // groups, weight.shape[-1]), x)
    _check_param(norm_weight, "norm_weight", (channels,), x)
    _check_param(norm_bias, "norm_bias", (channels,), x)
    if not eps > 0:
        raise ValueError(f"ela_gate: eps must be > 0, got {eps!r}")


def _ela_flops(x, weight, norm_weight, norm_bias, groups, norm_groups, eps) -> int:
    """The shared Conv1d over both strips, 2 FLOPs per multiply-add: the one contraction in the gate. Pooling,
    GroupNorm, sigmoid and the gating products are elementwise, which FlopCounterMode counts as 0 for aten ops
    too (it counts matmuls and convolutions), so the two counts stay comparable."""
    b, c, h, w = x
    return 2 * b * c * (h + w) * (c // groups) * weight[-1]


ELA_GATE = define_op(
    "ela_gate",
    "(Tensor x, Tensor weight, Tensor norm_weight, Tensor norm_bias, int groups, int norm_groups, float eps) "
    "-> Tensor",
    reference=ela_gate_reference,
    triton=("ela_triton", "ela_gate_forward"),
    fake=lambda x, *_: torch.empty_like(x, memory_format=torch.contiguous_format),
    keep_layout=True,  # a gate on x: a channels_last network stays channels_last
    backward=ela_gate_backward_reference,
    backward_triton=("ela_triton", "ela_gate_backward"),
    grads_for=("x", "weight", "norm_weight", "norm_bias"),
    autocast="lower",
    validate=_check_inputs,
    flops=_ela_flops,
)


def ela_gate(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
             groups: int, norm_groups: int, eps: float = 1e-5, backend: str | None = "auto") -> torch.Tensor:
    """Apply the ELA gate (see :func:`ela_gate_reference` for the computation).

    Args:
        x: the feature map.
        weight: the shared Conv1d weight; its last dim is the (odd) kernel size.
        norm_weight: GroupNorm scale.
        norm_bias: GroupNorm shift.
        groups: Conv1d groups; must divide C.
        norm_groups: GroupNorm groups; must divide C.
        eps: GroupNorm epsilon.
        backend: 'auto', 'torch' or 'triton' (see :mod:`attnzoo.kernels._dispatch`); None means the default.

    Shapes:
        x: (B, C, H, W); weight: (C, C // groups, k); norm_weight, norm_bias: (C,); returns (B, C, H, W).
    """
    return ELA_GATE(x, weight, norm_weight, norm_bias, groups, norm_groups, float(eps), backend=backend)
