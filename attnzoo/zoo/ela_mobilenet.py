"""MobileNetV2 with ELA (arXiv 2403.01123), built on timm's ``EfficientNet``: ``ela_mobilenetv2_100``.

Placement and variant follow the authors' ``MbV2/models/mbv2_ela72.py``: in every inverted residual with
expansion t != 1, ELA-L (k=7, C/8 conv groups, GN 16) on the expanded channels after the depthwise 3x3 conv +
BN + ReLU6 and before the linear 1x1 projection; the first (t=1) block gets none. That is exactly timm's
``se_layer`` slot of ``InvertedResidual``, so the model is timm's ``mobilenetv2_100`` with an ``_se`` entry on
every ``ir`` block and :class:`~attnzoo.layers.ela.ELA` as ``se_layer`` (which ignores ``rd_ratio``).
3,916,904 parameters (+411,928 over MobileNetV2's 3,504,872), as the authors' placement gives.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.models.efficientnet import EfficientNet

from attnzoo.layers.ela import ELA
from attnzoo.zoo._registry import build_classifier, classifier_cfg, hub_default_cfgs, register_model
from attnzoo.zoo.ulsam_mobilenet import mobilenetv2_kwargs

default_cfgs = hub_default_cfgs({
    "ela_mobilenetv2_100": classifier_cfg(first_conv="conv_stem", classifier="classifier",
                                          paper_ids="arXiv:2403.01123"),
})


@register_model("classification")
def ela_mobilenetv2_100(pretrained: bool = False, ela_variant: str = "L", **kwargs: Any) -> EfficientNet:
    """MobileNetV2 1.0 with ELA-L after the depthwise conv of every expanded block (3.92M params)."""
    model_kwargs = mobilenetv2_kwargs(ir_suffix="_se0.25", se_layer=partial(ELA, variant=ela_variant), **kwargs)
    return build_classifier(EfficientNet, "ela_mobilenetv2_100", pretrained, **model_kwargs)
