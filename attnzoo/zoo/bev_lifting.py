"""BEV occupancy from surround cameras with DFA3D lifting (arXiv 2307.12972), registered as 'bev' task models.

``dfa3d_bev_tiny`` is a small end-to-end model for the synthetic scenes of :mod:`attnzoo.data.multiview`: a
shared CNN turns every camera image into a feature pyramid, :class:`attnzoo.layers.dfa3d.MultiViewLifting`
lifts it into BEV queries (BEVFormer's spatial cross-attention with DFA3D inside), a transformer-style FFN and a
small conv head predict one occupancy logit per BEV cell. ``attention='2d'`` swaps DFA3D for BEVFormer's 2-D
deformable attention (the paper's baseline); everything else stays the same, so the two compare like for like.

Depth for DFA3D comes from the input when given (a metric depth map per camera, turned into a one-hot
distribution per feature cell: the paper's GT-depth setting) or else from the lifting module's depth head (supervise
it with :meth:`BEVOccupancyNet.depth_loss`, as the authors supervise theirs with projected LiDAR depth).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from attnzoo.layers.dfa3d import MultiViewLifting, depth_distribution
from attnzoo.layers.scripting import NotScriptable
from attnzoo.zoo._registry import register_model

__all__ = ["BEVOccupancyNet", "PyramidBackbone"]


def _conv_bn_relu(cin: int, cout: int, stride: int, **factory: Any) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False, **factory), nn.BatchNorm2d(cout, **factory),
                         nn.ReLU(inplace=True))


class PyramidBackbone(nn.Module):
    """A small CNN image encoder: a stride-4 stem, then one stride-2 stage per further level, all ``channels`` wide.

    Args:
        channels: output channels of every level.
        num_levels: pyramid levels (strides 4, 8, 16, ...).
        in_chans: image channels.
        device, dtype: factory arguments.

    Shapes:
        (n, in_chans, H, W) -> [(n, channels, H / 4 / 2^l, W / 4 / 2^l) for l < num_levels].
    """

    def __init__(self, channels: int = 32, num_levels: int = 2, in_chans: int = 3,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.channels, self.num_levels = channels, num_levels
        self.stem = nn.Sequential(_conv_bn_relu(in_chans, channels // 2, 2, **factory),
                                  _conv_bn_relu(channels // 2, channels, 2, **factory),
                                  _conv_bn_relu(channels, channels, 1, **factory))
        self.stages = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(channels, channels, 2, **factory), _conv_bn_relu(channels, channels, 1,
                                                                                         **factory))
            for _ in range(num_levels - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: Tensor) -> list[Tensor]:
        levels = [self.stem(x)]
        for stage in self.stages:
            levels.append(stage(levels[-1]))
        return levels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_levels={self.num_levels}"


class BEVOccupancyNet(NotScriptable, nn.Module):
    """Surround-view images to a BEV occupancy map through DFA3D (or 2-D deformable attention) lifting.

    Args:
        embed_dims: channels of image features and BEV queries.
        bev_size: (bev_h, bev_w) output grid; rows along ego x, columns along ego y.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) in metres.
        num_levels: image feature levels (strides 4, 8, ...).
        num_heads, num_points, num_anchors: deformable-attention heads, points per head and level, pillar anchors.
        depth_bound: (d_min, d_max, step) of the depth bins.
        attention: 'dfa3d' or '2d'.
        depth_head: predict depth when none is supplied ('dfa3d' only).
        dropout: attention and FFN dropout.
        device, dtype: factory arguments.

    Shapes:
        images (B, N, 3, H, W), lidar2img (B, N, 4, 4), depth optional (B, N, H, W) metres (0 = unknown)
        -> logits (B, bev_h, bev_w).
    """

    def __init__(self, embed_dims: int = 32, bev_size: tuple[int, int] = (32, 32),
                 pc_range: tuple[float, ...] = (-12.0, -12.0, -0.5, 12.0, 12.0, 2.5), num_levels: int = 2,
                 num_heads: int = 4, num_points: int = 8, num_anchors: int = 4,
                 depth_bound: tuple[float, float, float] = (1.0, 31.0, 0.5), attention: str = "dfa3d",
                 depth_head: bool = True, dropout: float = 0.1, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.backbone = PyramidBackbone(embed_dims, num_levels, **factory)
        self.lifting = MultiViewLifting(embed_dims, bev_size, pc_range, num_anchors, num_heads, num_levels, num_points,
                                        depth_bound, attention, depth_head, dropout=dropout, **factory)
        self.norm1 = nn.LayerNorm(embed_dims, **factory)
        self.ffn = nn.Sequential(nn.Linear(embed_dims, 2 * embed_dims, **factory), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(2 * embed_dims, embed_dims, **factory))
        self.norm2 = nn.LayerNorm(embed_dims, **factory)
        self.head = nn.Sequential(_conv_bn_relu(embed_dims, embed_dims, 1, **factory),
                                  nn.Conv2d(embed_dims, 1, 1, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.backbone.reset_parameters()
        self.lifting.reset_parameters()
        for m in (*self.ffn, *self.head.modules(), self.norm1, self.norm2):
            if isinstance(m, nn.Linear | nn.Conv2d | nn.LayerNorm | nn.BatchNorm2d):
                m.reset_parameters()

    def _check(self, images: Tensor, lidar2img: Tensor, depth: Tensor | None) -> None:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images {tuple(images.shape)}: expected (B, N, 3, H, W)")
        if lidar2img.shape != (*images.shape[:2], 4, 4):
            raise ValueError(f"lidar2img {tuple(lidar2img.shape)}: expected ({images.shape[0]}, {images.shape[1]}, "
                             "4, 4)")
        if depth is not None and depth.shape != (*images.shape[:2], *images.shape[-2:]):
            raise ValueError(f"depth {tuple(depth.shape)}: expected (B, N, H, W) = "
                             f"{(*images.shape[:2], *images.shape[-2:])} metres")

    def forward_features(self, images: Tensor, lidar2img: Tensor, depth: Tensor | None = None
                         ) -> tuple[Tensor, Tensor | None]:
        """BEV feature map and the depth distribution DFA3D used.

        Shapes: -> (B, C, bev_h, bev_w), (B, N, D, h_0, w_0) or None for '2d'.
        """
        self._check(images, lidar2img, depth)
        batch, cams = images.shape[:2]
        levels = self.backbone(images.flatten(0, 1))  # [(B*N, C, h_l, w_l)]
        features = [f.view(batch, cams, *f.shape[1:]) for f in levels]  # [(B, N, C, h_l, w_l)]
        dist = None
        if depth is not None and self.lifting.attention == "dfa3d":
            dist = depth_distribution(depth, self.lifting.depth_bound, tuple(levels[0].shape[-2:]))
        bev, dist = self.lifting(features, lidar2img, tuple(images.shape[-2:]), dist)
        bev = self.norm1(bev)
        bev = self.norm2(bev + self.ffn(bev))  # (B, Q, C)
        bev_h, bev_w = self.lifting.bev_size
        return bev.transpose(1, 2).reshape(batch, -1, bev_h, bev_w), dist  # (B, Q, C) -> (B, C, bev_h, bev_w)

    def forward_head(self, bev: Tensor) -> Tensor:
        return self.head(bev).squeeze(1)

    def forward(self, images: Tensor, lidar2img: Tensor, depth: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(images, lidar2img, depth)[0])

    def depth_loss(self, predicted: Tensor, depth: Tensor) -> Tensor:
        """Cross-entropy of the predicted depth distribution against the binned depth map, over valid pixels.

        Shapes: predicted (B, N, D, h, w) from :meth:`forward_features` (depth head), depth (B, N, H, W) -> ().
        """
        target = depth_distribution(depth, self.lifting.depth_bound, tuple(predicted.shape[-2:]))
        loss = -(target * predicted.clamp(min=1e-8).log()).sum()
        return loss / target.sum().clamp(min=1e-6)


@register_model("bev")
def dfa3d_bev_tiny(**kwargs: Any) -> BEVOccupancyNet:
    """DFA3D BEV occupancy, 32 channels, 2 levels, 32 x 32 BEV over 24 m x 24 m; ``attention='2d'`` for MSDA."""
    return BEVOccupancyNet(**dict(dict(embed_dims=32, bev_size=(32, 32), num_levels=2, num_heads=4, num_points=8,
                                       num_anchors=4), **kwargs))
