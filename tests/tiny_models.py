"""Tiny models registered only by the test suite, to exercise the registry and hub without any zoo model.

They live in a module of their own so timm reads this module's ``default_cfgs`` at registration time, as it does
for a real zoo module.
"""

import torch
import torch.nn as nn

from attnzoo.zoo import build_classifier, classifier_cfg, hub_default_cfgs, register_model


class TinyNet(nn.Module):
    """A timm-shaped classifier: conv stem, one stage, global pool, linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, global_pool: str = "avg", width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = width
        self.stem = nn.Conv2d(in_chans, width, 3, padding=1)
        self.stage = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.global_pool = global_pool
        self.fc = nn.Linear(width, num_classes) if num_classes else nn.Identity()
        self.feature_info = [dict(num_chs=width, reduction=1, module="stage")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3)) if self.global_pool else x
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes, self.global_pool = num_classes, global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TinyGNN(nn.Module):
    """A graph-task model: two linear maps, enough to test strict loading of a non-timm model."""

    def __init__(self, in_channels: int = 4, hidden_channels: int = 8, out_channels: int = 2):
        super().__init__()
        self.lin1 = nn.Linear(in_channels, hidden_channels)
        self.lin2 = nn.Linear(hidden_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.lin1(x).relu())


default_cfgs = hub_default_cfgs({
    "aztest_tinynet": classifier_cfg(num_classes=10, input_size=(1, 28, 28), pool_size=(28, 28),
                                     first_conv="stem", classifier="fc", mean=(0.5,), std=(0.5,)),
})


@register_model("classification")
def aztest_tinynet(pretrained: bool = False, **kwargs) -> TinyNet:
    return build_classifier(TinyNet, "aztest_tinynet", pretrained, **kwargs)


@register_model("graph")
def aztest_tinygnn(**kwargs) -> TinyGNN:
    return TinyGNN(**kwargs)
