"""Reference pieces shared by the MK-UNet block tests (MKDC/MKIR, CBAM-style attention, the attention gate)."""

import torch
import torch.nn as nn


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, eval mode, so parity tests exercise every term."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5)
    return module.eval()


def bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm written out from its running statistics."""
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)
