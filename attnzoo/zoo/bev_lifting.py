"""BEV occupancy from surround cameras with DFA3D lifting (arXiv 2307.12972), registered as 'bev' task models.

``dfa3d_bev_tiny`` is a small end-to-end model for the synthetic scenes of :mod:`attnzoo.data.multiview`: a
shared CNN turns every camera image into a feature pyramid, :class:`MultiViewLifting`
lifts it into BEV queries (BEVFormer's spatial cross-attention with DFA3D inside), a transformer-style FFN and a
small conv head predict one occupancy logit per BEV cell. ``attention='2d'`` swaps DFA3D for BEVFormer's 2-D
deformable attention (the paper's baseline); everything else stays the same, so the two compare like for like.

Depth for DFA3D comes from the input when given (a metric depth map per camera, turned into a one-hot
distribution per feature cell: the paper's GT-depth setting) or else from the lifting module's depth head (supervise
it with :meth:`BEVOccupancyNet.depth_loss`, as the authors supervise theirs with projected LiDAR depth).

:class:`MultiViewLifting` is BEVFormer's spatial cross-attention with DFA3D inside: learned BEV queries, a pillar
of 3-D reference points per BEV cell projected into every camera with ``lidar2img``, per-view deformable
attention over that view's multi-level features (camera and level embeddings added, as BEVFormer), averaged over
the views in which at least one anchor of the pillar lands inside the image. The depth distribution comes from a
small :class:`DepthHead` on the finest level, or is supplied (e.g. :func:`depth_distribution` of a depth map).

As BEVFormer, each view attends only from the pillars it sees (gathered and padded per view, then summed back).
Deliberate differences from the authors' code: the depth distribution is one tensor shared by all heads (they
repeat it per head), the op returns no ``depth_score``/``weight_update`` (BEVFormer's optional "use_empty" path
is not reproduced), the depth is area-pooled (not nearest-resized) to coarser levels, and a point counts as
projected when its camera depth is positive and (u, v) is inside the image.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attnzoo._checks import check_int
from attnzoo.layers.dfa3d import (
    DeformableAttention3D,
    DepthHead,
    MultiScaleDeformableAttention,
    depth_distribution,
    flatten_levels,
    num_depth_bins,
    pillar_points,
)
from attnzoo.layers.scripting import NotScriptable
from attnzoo.zoo._registry import register_model

__all__ = ["BEVOccupancyNet", "MultiViewLifting", "PyramidBackbone"]


def _resize_distribution(dist: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, D, h, w) to ``size``: area average when shrinking (stays a distribution), nearest when growing."""
    if tuple(dist.shape[-2:]) == tuple(size):
        return dist
    if dist.shape[-2] >= size[0] and dist.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(dist, size)
    return F.interpolate(dist, size=size, mode="nearest")


def _seen_first(visible: Tensor) -> Tensor:
    """Per row, the indices of the True entries in order, then those of the False entries in order: a stable
    partition (``argsort(~visible, stable=True)``) from two cumulative sums and a scatter, which ONNX can express.

    Shapes:
        visible (n, Q) bool -> (n, Q) int64.
    """
    seen = visible.long()
    position = torch.where(visible, seen.cumsum(1) - 1, seen.sum(1, keepdim=True) + (1 - seen).cumsum(1) - 1)
    index = torch.arange(visible.shape[1], device=visible.device).expand_as(position)
    return torch.empty_like(position).scatter(1, position, index)


class MultiViewLifting(NotScriptable, nn.Module):
    """BEV queries lifted from multi-camera features by DFA3D (or 2-D deformable attention), BEVFormer-style.

    Args:
        embed_dims: channels C of the BEV queries and of the image features.
        bev_size: (bev_h, bev_w) BEV grid; rows run along ego x, columns along ego y.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) metres covered by the BEV grid and the pillars.
        num_anchors: 3-D reference points per pillar (BEVFormer's ``num_points_in_pillar``).
        num_heads: attention heads.
        num_levels: image feature levels.
        num_points: sampling points per head and level (divisible by ``num_anchors``).
        depth_bound: (d_min, d_max, step) of the depth bins, as BEVFormer-DFA3D's ``d_bound``.
        attention: 'dfa3d' (3-D deformable attention over depth-expanded features) or '2d' (MSDA, no depth).
        depth_head: predict the depth distribution from the finest level when none is supplied ('dfa3d' only).
        max_cameras: size of the learned camera embedding table.
        dropout: dropout of the attention output.
        device, dtype: factory arguments.

    Shapes:
        features [(B, N, C, h_l, w_l)] for L levels, lidar2img (B, N, 4, 4) ego-to-pixel, image_size (H, W),
        depth optional (B, N, D, h, w) distribution -> bev (B, bev_h * bev_w, C) and the depth distribution
        used, (B, N, D, h_0, w_0) (None for '2d').
    """

    def __init__(self, embed_dims: int = 64, bev_size: tuple[int, int] = (32, 32),
                 pc_range: tuple[float, ...] = (-12.0, -12.0, -0.5, 12.0, 12.0, 2.5), num_anchors: int = 4,
                 num_heads: int = 4, num_levels: int = 2, num_points: int = 8,
                 depth_bound: tuple[float, float, float] = (1.0, 31.0, 0.5), attention: str = "dfa3d",
                 depth_head: bool = True, max_cameras: int = 6, dropout: float = 0.1,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        if attention not in ("dfa3d", "2d"):
            raise ValueError(f"attention={attention!r}: expected 'dfa3d' or '2d'")
        if len(pc_range) != 6 or not all(pc_range[i] < pc_range[i + 3] for i in range(3)):
            raise ValueError(f"pc_range={pc_range!r}: expected (x_min, y_min, z_min, x_max, y_max, z_max), min < max")
        if len(bev_size) != 2:
            raise ValueError(f"bev_size={bev_size!r}: expected (bev_h, bev_w)")
        self.embed_dims, self.bev_size, self.pc_range = embed_dims, tuple(bev_size), tuple(pc_range)
        self.num_anchors = check_int("num_anchors", num_anchors)
        self.depth_bound, self.attention = tuple(depth_bound), attention
        if num_points % num_anchors:
            raise ValueError(f"num_points={num_points} must be divisible by num_anchors={num_anchors}")
        self.num_bins = num_depth_bins(depth_bound)
        num_queries = bev_size[0] * bev_size[1]
        self.bev_embed = nn.Parameter(torch.empty(num_queries, embed_dims, **factory))
        self.row_embed = nn.Parameter(torch.empty(bev_size[0], embed_dims // 2, **factory))
        self.col_embed = nn.Parameter(torch.empty(bev_size[1], embed_dims - embed_dims // 2, **factory))
        self.level_embed = nn.Parameter(torch.empty(num_levels, embed_dims, **factory))
        self.cams_embed = nn.Parameter(torch.empty(max_cameras, embed_dims, **factory))
        attn_cls = DeformableAttention3D if attention == "dfa3d" else MultiScaleDeformableAttention
        self.attn = attn_cls(embed_dims, num_heads, num_levels, num_points, dropout, **factory)
        self.depth_head = DepthHead(embed_dims, self.num_bins, **factory) if attention == "dfa3d" and depth_head \
            else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.bev_embed, self.row_embed, self.col_embed, self.level_embed, self.cams_embed):
            nn.init.normal_(p, std=0.02 if p is not self.bev_embed else 1.0)
        self.attn.reset_parameters()
        if self.depth_head is not None:
            self.depth_head.reset_parameters()

    def bev_pos(self) -> Tensor:
        """Learned positional encoding (row and column halves, as mmdet's LearnedPositionalEncoding): (Q, C)."""
        bev_h, bev_w = self.bev_size
        rows = self.row_embed.view(bev_h, 1, -1).expand(-1, bev_w, -1)
        cols = self.col_embed.view(1, bev_w, -1).expand(bev_h, -1, -1)
        return torch.cat([rows, cols], -1).reshape(bev_h * bev_w, -1)

    def project_pillars(self, lidar2img: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Reference points of every pillar anchor in every camera, and which pillars each camera sees.

        Shapes:
            lidar2img (B, N, 4, 4) -> reference points (B, N, Q, Z, 3) as (u / W, v / H, normalised depth),
            visible (B, N, Q) bool.
        """
        # Geometry in float32 whatever the model's dtype: in fp16 the 1 / depth of a point at the camera plane
        # (clamped to 1e-5) overflows to inf, and inf * 0 is NaN. The pillars are recomputed here rather than kept in
        # a non-persistent buffer, so that a model built on the meta device needs nothing restored after loading.
        pillars = pillar_points(self.bev_size, self.pc_range, self.num_anchors, device=lidar2img.device,
                                dtype=torch.float32)  # (Q, Z, 3)
        pts = torch.cat([pillars, torch.ones_like(pillars[..., :1])], -1)  # (Q, Z, 4) homogeneous
        cam = torch.einsum("bnij,qzj->bnqzi", lidar2img.float(), pts)  # (B, N, Q, Z, 4)
        depth = cam[..., 2]
        eps = 1e-5
        uv = cam[..., :2] / depth.clamp(min=eps).unsqueeze(-1)
        uv = uv / torch.tensor([image_size[1], image_size[0]], dtype=uv.dtype, device=uv.device)
        d_min, d_max, _ = self.depth_bound
        z = (depth - d_min) / (d_max - d_min)
        inside = (depth > eps) & (uv > 0).all(-1) & (uv < 1).all(-1)  # (B, N, Q, Z)
        return torch.cat([uv, z.unsqueeze(-1)], -1), inside.any(-1)

    def forward(self, features: list[Tensor], lidar2img: Tensor, image_size: tuple[int, int],
                depth: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if len(features) != self.attn.num_levels:
            raise ValueError(f"features: got {len(features)} levels, expected {self.attn.num_levels}")
        batch, cams = features[0].shape[:2]
        if cams > self.cams_embed.shape[0]:
            raise ValueError(f"features have {cams} cameras but max_cameras={self.cams_embed.shape[0]}")
        if lidar2img.shape != (batch, cams, 4, 4):
            raise ValueError(f"lidar2img {tuple(lidar2img.shape)}: expected ({batch}, {cams}, 4, 4)")
        flat = [f.flatten(0, 1) + self.level_embed[i].view(1, -1, 1, 1) for i, f in enumerate(features)]
        keys, shapes, starts = flatten_levels(flat)  # (B*N, num_keys, C)
        keys = keys + self.cams_embed[:cams].repeat(batch, 1).unsqueeze(1)
        dist = self._depth(flat, depth, batch, cams)
        ref, visible = self.project_pillars(lidar2img, image_size)  # (B, N, Q, Z, 3), (B, N, Q)
        if self.attention == "2d":
            ref = ref[..., :2]
        # BEVFormer's rebatching: every view attends only from the pillars it sees, padded to the longest list.
        # Traced (compile, export, ONNX) the list keeps all Q pillars, a static size instead of a data-dependent
        # one; the padding is masked out, so the result is the same, at the cost of attending from unseen pillars.
        visible = visible.flatten(0, 1)  # (B*N, Q)
        max_len = visible.shape[1] if torch.compiler.is_compiling() else max(int(visible.sum(1).max()), 1)
        order = _seen_first(visible)[:, :max_len]
        kept = visible.gather(1, order).unsqueeze(-1)  # (B*N, max_len, 1), False on padding
        ref = ref.flatten(0, 1).gather(1, order.view(*order.shape, 1, 1).expand(-1, -1, *ref.shape[-2:]))
        key_depth = None if dist is None else flatten_levels(
            [_resize_distribution(dist.flatten(0, 1), tuple(f.shape[-2:])) for f in flat])[0]
        sampled = self.attn.sample(self.bev_embed[order], keys, ref, shapes, starts, key_depth, self.bev_pos()[order])
        num_queries = self.bev_embed.shape[0]
        target = order + torch.arange(batch, device=order.device).repeat_interleave(cams).unsqueeze(1) * num_queries
        fused = sampled.new_zeros(batch * num_queries, sampled.shape[-1]).index_add_(
            0, target.flatten(), (sampled * kept).flatten(0, 1))  # sum over the views that see each pillar
        count = visible.view(batch, cams, num_queries).sum(1).clamp(min=1).unsqueeze(-1)  # (B, Q, 1)
        fused = fused.view(batch, num_queries, -1) / count
        query = self.bev_embed.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, C)
        return self.attn.project(fused, query), dist

    def _depth(self, flat: list[Tensor], depth: Tensor | None, batch: int, cams: int) -> Tensor | None:
        if self.attention == "2d":
            return None
        if depth is not None:
            if depth.dim() != 5 or depth.shape[:3] != (batch, cams, self.num_bins):
                raise ValueError(f"depth {tuple(depth.shape)}: expected ({batch}, {cams}, {self.num_bins}, h, w)")
            return depth
        if self.depth_head is None:
            raise ValueError("depth=None needs depth_head=True (or supply a (B, N, D, h, w) depth distribution)")
        return self.depth_head(flat[0]).view(batch, cams, self.num_bins, *flat[0].shape[-2:])

    def extra_repr(self) -> str:
        return (f"attention={self.attention!r}, bev_size={self.bev_size}, pc_range={self.pc_range}, "
                f"num_anchors={self.num_anchors}, depth_bound={self.depth_bound}, num_bins={self.num_bins}")


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
