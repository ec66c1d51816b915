"""ResNets with ELA (arXiv 2403.01123), built on timm's ``ResNet``: ``ela_resnet18`` and ``ela_resnet50``.

Placement follows the authors' ResNet (``Xuwei86/ELA_Code``, ``semantic/network/backbone/resnet.py``), where ELA
sits behind a local residual, ``out = ELA(out) + out``:

* BasicBlock: after ``bn2``, before the identity add. That is timm's own ``attn_layer`` slot, so the block is
  timm's ``BasicBlock`` with :class:`ResidualELA` as its attention layer.
* Bottleneck: after the 3x3 conv's ``bn2`` and ReLU, on the ``width`` channels, before ``conv3`` (not timm's
  slot, which is after ``bn3`` on 4x the channels): :class:`ElaBottleneck`.

``ela_position='timm'`` instead puts a plain :class:`~attnzoo.layers.ela.ELA` (no local residual) in timm's
``attn_layer`` slot, after ``bn2`` (BasicBlock) or ``bn3`` (Bottleneck), as ``block_args=dict(attn_layer=ELA)``
would. Default variants follow the paper's guidance: ELA-B for the shallow ResNet-18, ELA-S for ResNet-50 (B and
S for deeper networks; S is also the authors' best DeepLab config). Overheads with the authors' placement: +17,280
parameters on ResNet-18 (B), +158,592 on ResNet-50 (S).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from attnzoo.layers.ela import ELA
from attnzoo.zoo._registry import build_classifier, classifier_cfg, hub_default_cfgs, register_model

__all__ = ["ELA_POSITIONS", "ElaBottleneck", "ResidualELA"]

ELA_POSITIONS = ("authors", "timm")


@register_notrace_module  # FX patches leaf calls by the traced forward's globals; ELA.forward's are another module's
class ResidualELA(ELA):
    """``x + ELA(x)``: ELA behind the local residual the authors' ResNet blocks put around it.

    Takes :class:`~attnzoo.layers.ela.ELA`'s arguments; parameters and ``state_dict`` keys are ELA's.

    Shapes:
        input: (B, C, H, W); output: (B, C, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x


class ElaBottleneck(Bottleneck):
    """timm's ``Bottleneck`` with an attention module after the 3x3 conv (``bn2`` + ReLU), before ``conv3``.

    Args:
        *args: timm ``Bottleneck`` positional arguments (inplanes, planes, stride, downsample, ...).
        ela_layer: factory ``(channels, device=, dtype=) -> nn.Module`` for the 3x3 conv's ``width`` channels;
            the authors' block uses :class:`ResidualELA`.
        **kwargs: timm ``Bottleneck`` keyword arguments (including its ``attn_layer``, which still goes after
            ``bn3``; None by default).

    Shapes:
        input: (B, inplanes, H, W); output: (B, planes * 4, H / stride, W / stride).
    """

    def __init__(self, *args: Any, ela_layer: type[nn.Module] = ResidualELA, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ela = ela_layer(self.conv2.out_channels, device=self.conv2.weight.device, dtype=self.conv2.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.ela(x)
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act3(x + shortcut)


def _create_ela_resnet(variant: str, pretrained: bool, block: type[nn.Module], layers: list[int],
                       ela_variant: str, ela_position: str = "authors", **kwargs: Any) -> ResNet:
    if ela_position not in ELA_POSITIONS:
        raise ValueError(f"{variant}: ela_position must be one of {ELA_POSITIONS}, got {ela_position!r}")
    block_args = dict(kwargs.pop("block_args", None) or {})
    if ela_position == "timm":
        block_args["attn_layer"] = partial(ELA, variant=ela_variant)
    elif block is Bottleneck:
        block = ElaBottleneck
        block_args["ela_layer"] = partial(ResidualELA, variant=ela_variant)
    else:
        block_args["attn_layer"] = partial(ResidualELA, variant=ela_variant)
    kwargs.setdefault("feature_cfg", {})  # timm's ResNet names its stages as direct children: nothing to flatten
    return build_classifier(ResNet, variant, pretrained, block=block, layers=layers, block_args=block_args, **kwargs)


default_cfgs = hub_default_cfgs({
    "ela_resnet18": classifier_cfg(first_conv="conv1", classifier="fc", paper_ids="arXiv:2403.01123"),
    "ela_resnet50": classifier_cfg(first_conv="conv1", classifier="fc", paper_ids="arXiv:2403.01123"),
})


@register_model("classification")
def ela_resnet18(pretrained: bool = False, ela_variant: str = "B", **kwargs: Any) -> ResNet:
    """ResNet-18 with ELA-B behind a local residual after each BasicBlock's ``bn2`` (11.71M params)."""
    return _create_ela_resnet("ela_resnet18", pretrained, BasicBlock, [2, 2, 2, 2], ela_variant, **kwargs)


@register_model("classification")
def ela_resnet50(pretrained: bool = False, ela_variant: str = "S", **kwargs: Any) -> ResNet:
    """ResNet-50 with ELA-S behind a local residual after each Bottleneck's 3x3 conv (25.72M params)."""
    return _create_ela_resnet("ela_resnet50", pretrained, Bottleneck, [3, 4, 6, 3], ela_variant, **kwargs)
