"""Weight-initialisation helpers shared by the layers and the zoo (timm keeps its own in ``timm.layers.weight_init``).

- :func:`reset_children`: the walk a container's ``reset_parameters()`` does, delegating to every child that
  resets itself and descending into those that do not (timm's ``Mlp`` and ``nn.Sequential`` have no
  ``reset_parameters``).
- :func:`init_mkunet_weights`: the MK-UNet authors' ``'normal'`` scheme (SLDGroup/MK-UNet ``_init_weights``), shared
  by MKDC/MKIR, the CBAM-style attention and the grouped attention gate as the authors share it by all their blocks.
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["init_mkunet_weights", "reset_children"]


def reset_children(module: nn.Module) -> None:
    """Call ``reset_parameters()`` on each child of ``module`` that has one; descend into the children that do not.

    A child with its own ``reset_parameters`` resets its whole subtree (it may re-initialise its sub-modules its own
    way, as HaloAttention does its convs), so the walk stops there.
    """
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_children(child)


def init_mkunet_weights(module: nn.Module) -> None:
    """The MK-UNet authors' 'normal' scheme on every conv and BN inside ``module``: N(0, 0.02) conv weights, zero
    biases, BN weight 1 and bias 0 with fresh running statistics."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
