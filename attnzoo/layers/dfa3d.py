"""DFA3D: 3D Deformable Attention For 2D-to-3D Feature Lifting (Li et al., ICCV 2023).

Paper: https://arxiv.org/abs/2307.12972. Code: ``IDEA-Research/3D-deformable-attention`` (BEVFormer plugin).

:class:`MultiScaleDeformableAttention` is Deformable DETR's / BEVFormer's 2-D multi-scale deformable attention:
value projection, per-head offsets (levels x points x 2) and attention weights (softmax over levels x points)
predicted from the query, output projection, dropout and residual. :class:`DeformableAttention3D` follows the
authors' ``MSDeformableAttention3D_DFA3D``: it adds a depth-offset branch (levels x points x 1 per head, initialised
as theirs: zero weight, bias ``(cos t_h + sin t_h) / 2 * (i + 1)``), keeps the depth of the projected reference
point (x, y, z) and samples the depth-expanded features through :func:`attnzoo.kernels.dfa3d.deform_attn_3d`.
As in BEVFormer, reference points carry ``num_anchors`` points per query (the anchors of a pillar) and every
anchor gets ``num_points / num_anchors`` sampling points; xy offsets are divided by the level's (w, h) and depth
offsets by the number of depth bins.

The BEVFormer-style lifting module built on these layers, ``MultiViewLifting``, is model-level code and lives in
:mod:`attnzoo.zoo.bev_lifting`. Deliberate differences from the authors' code: the op returns no
``depth_score``/``weight_update``, and the depth distribution is one tensor shared by all heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attnzoo._checks import check_int
from attnzoo.kernels.dfa3d import deform_attn_3d, ms_deform_attn
from attnzoo.layers.scripting import NotScriptable

__all__ = ["DeformableAttention3D", "DepthHead", "MultiScaleDeformableAttention", "depth_distribution",
           "flatten_levels", "num_depth_bins", "pillar_points"]


# --------------------------------------------------------------------------------------------- helpers


def num_depth_bins(depth_bound: tuple[float, float, float]) -> int:
    """Bins of a (d_min, d_max, step) depth bound, as BEVFormer-DFA3D's ``d_bound`` ((2, 58, 0.5) -> 112)."""
    d_min, d_max, step = depth_bound
    if not (0 <= d_min < d_max and step > 0):
        raise ValueError(f"depth_bound={depth_bound!r}: expected (d_min, d_max, step), 0 <= d_min < d_max, step > 0")
    return round((d_max - d_min) / step)


def depth_distribution(depth: Tensor, depth_bound: tuple[float, float, float],
                       size: tuple[int, int] | None = None) -> Tensor:
    """Metric depth map to a per-pixel depth distribution: one-hot bin per pixel, area-averaged to ``size``.

    Pixels without depth (<= 0) or outside the bound contribute nothing, so a cell's distribution sums to the
    fraction of its pixels with a valid depth (the GT-depth setting of the paper uses the one-hot depth).

    Shapes:
        depth (..., H, W) -> (..., D, h, w) with D = num_depth_bins(depth_bound), (h, w) = size or (H, W).
    """
    bins = num_depth_bins(depth_bound)
    index = ((depth - depth_bound[0]) / depth_bound[2]).floor()
    valid = (depth > 0) & (index >= 0) & (index < bins)
    one_hot = F.one_hot(index.clamp(0, bins - 1).long(), bins).to(depth.dtype) * valid.unsqueeze(-1)
    dist = one_hot.movedim(-1, -3)  # (..., H, W, D) -> (..., D, H, W)
    if size is None or tuple(size) == tuple(dist.shape[-2:]):
        return dist
    lead = dist.shape[:-3]
    pooled = F.adaptive_avg_pool2d(dist.reshape(-1, bins, *dist.shape[-2:]), size)  # (prod(lead), D, h, w)
    return pooled.reshape(*lead, bins, *size)


def flatten_levels(features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-level (n, C, h, w) maps to the MSDA key layout.

    Shapes:
        features [(n, C, h_l, w_l)] -> keys (n, sum h_l w_l, C), spatial_shapes (L, 2), level_start_index (L,).
    """
    shapes = torch.tensor([f.shape[-2:] for f in features], dtype=torch.long, device=features[0].device)
    sizes = shapes.prod(1)
    keys = torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)  # (n, sum hw, C)
    return keys, shapes, torch.cumsum(sizes, 0) - sizes


def pillar_points(bev_size: tuple[int, int], pc_range: tuple[float, ...], num_anchors: int,
                  device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Metric 3-D reference points: ``num_anchors`` heights per BEV cell centre (rows along x, columns along y).

    Shapes:
        -> (bev_h * bev_w, num_anchors, 3) as (x, y, z) in the ego frame.
    """
    x_min, y_min, z_min, x_max, y_max, z_max = pc_range
    bev_h, bev_w = bev_size

    def centres(n: int, lo: float, hi: float) -> Tensor:
        return lo + (torch.arange(n, device=device, dtype=dtype) + 0.5) / n * (hi - lo)

    x, y = torch.meshgrid(centres(bev_h, x_min, x_max), centres(bev_w, y_min, y_max), indexing="ij")
    z = centres(num_anchors, z_min, z_max)
    xy = torch.stack([x, y], -1).reshape(-1, 1, 2).expand(-1, num_anchors, 2)  # (Q, Z, 2)
    return torch.cat([xy, z.view(1, -1, 1).expand(xy.shape[0], -1, 1)], -1)


def _direction_grid(num_heads: int, device: torch.device | None) -> Tensor:
    theta = torch.arange(num_heads, dtype=torch.float32, device=device) * (2 * math.pi / num_heads)
    return torch.stack([theta.cos(), theta.sin()], -1)  # (nh, 2)


# ------------------------------------------------------------------------------------------ sub-modules


class MultiScaleDeformableAttention(NotScriptable, nn.Module):
    """Multi-scale deformable attention (Deformable DETR / BEVFormer), batch-first.

    Args:
        embed_dims: query and value channels C.
        num_heads: attention heads (C must divide evenly).
        num_levels: feature levels L.
        num_points: sampling points per head and level (shared out over the reference-point anchors).
        dropout: dropout on the projected output, before the residual.
        device, dtype: factory arguments for the parameters.

    Shapes:
        query (bs, nq, C), value (bs, num_keys, C), reference_points (bs, nq, num_anchors, 2) as (x, y) in
        [0, 1], spatial_shapes (L, 2), level_start_index (L,) -> (bs, nq, C).
    """

    coord_dim = 2

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 dropout: float = 0.1, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.embed_dims = check_int("embed_dims", embed_dims)
        self.num_heads = check_int("num_heads", num_heads)
        self.num_levels = check_int("num_levels", num_levels)
        self.num_points = check_int("num_points", num_points)
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims={embed_dims} must be divisible by num_heads={num_heads}")
        samples = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims, samples * 2, **factory)
        if self.coord_dim == 3:  # DFA3D's separate depth-offset branch (the authors' checkpoint layout)
            self.sampling_offsets_depth = nn.Linear(embed_dims, samples, **factory)
        self.attention_weights = nn.Linear(embed_dims, samples, **factory)
        self.value_proj = nn.Linear(embed_dims, embed_dims, **factory)
        self.output_proj = nn.Linear(embed_dims, embed_dims, **factory)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring of directions per head, growing with the point index."""
        grid = _direction_grid(self.num_heads, self.sampling_offsets.weight.device)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=grid.dtype, device=grid.device).view(1, 1, -1, 1)
        bias = grid.view(-1, 1, 1, 2) * scale  # (nh, 1, P, 2) -> broadcast over levels
        with torch.no_grad():
            nn.init.zeros_(self.sampling_offsets.weight)
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.num_levels, -1, -1).reshape(-1))
            nn.init.zeros_(self.attention_weights.weight)
            nn.init.zeros_(self.attention_weights.bias)
            for proj in (self.value_proj, self.output_proj):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)

    def _check(self, query: Tensor, value: Tensor, reference_points: Tensor, spatial_shapes: Tensor) -> int:
        if query.dim() != 3 or query.shape[-1] != self.embed_dims:
            raise ValueError(f"query {tuple(query.shape)}: expected (bs, num_queries, {self.embed_dims})")
        if value.dim() != 3 or value.shape[0] != query.shape[0] or value.shape[-1] != self.embed_dims:
            raise ValueError(f"value {tuple(value.shape)}: expected ({query.shape[0]}, num_keys, {self.embed_dims})")
        if tuple(spatial_shapes.shape) != (self.num_levels, 2):
            raise ValueError(f"spatial_shapes {tuple(spatial_shapes.shape)}: expected ({self.num_levels}, 2)")
        expected = (*query.shape[:2], self.coord_dim)
        rp = reference_points
        if rp.dim() != 4 or (rp.shape[0], rp.shape[1], rp.shape[3]) != expected or self.num_points % rp.shape[2]:
            raise ValueError(f"reference_points {tuple(rp.shape)}: expected ({expected[0]}, {expected[1]}, "
                             f"num_anchors, {self.coord_dim}) with num_anchors dividing num_points={self.num_points}")
        return rp.shape[2]

    def _offsets(self, query: Tensor, spatial_shapes: Tensor, depth: Tensor | None) -> Tensor:
        """Offsets in normalised units. Shapes: (bs, nq, C) -> (bs, nq, nh, L, P, 2)."""
        bs, nq, _ = query.shape
        offsets = self.sampling_offsets(query).view(bs, nq, self.num_heads, self.num_levels, self.num_points, 2)
        return offsets / spatial_shapes.flip(-1).to(query.dtype).view(self.num_levels, 1, 2)  # divide by (w, h)

    def _attend(self, value: Tensor, depth: Tensor | None, spatial_shapes: Tensor, level_start_index: Tensor,
                locations: Tensor, weights: Tensor) -> Tensor:
        return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)

    def sample(self, query: Tensor, value: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
               level_start_index: Tensor, depth: Tensor | None = None, query_pos: Tensor | None = None) -> Tensor:
        """The attention before the output projection: (bs, nq, C) aggregated samples (see the class Shapes)."""
        anchors = self._check(query, value, reference_points, spatial_shapes)
        if query_pos is not None:
            query = query + query_pos
        bs, nq, _ = query.shape
        nh, lv, pts = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(bs, value.shape[1], nh, -1)  # (bs, nk, C) -> (bs, nk, nh, C / nh)
        weights = self.attention_weights(query).view(bs, nq, nh, lv * pts).softmax(-1).view(bs, nq, nh, lv, pts)
        offsets = self._offsets(query, spatial_shapes, depth)
        offsets = offsets.view(bs, nq, nh, lv, pts // anchors, anchors, -1)  # points shared out over the anchors
        locations = reference_points.view(bs, nq, 1, 1, 1, anchors, -1) + offsets
        locations = locations.view(bs, nq, nh, lv, pts, -1)  # (bs, nq, nh, L, P, coord_dim)
        if not torch.is_autocast_enabled(locations.device.type):
            # one dtype for the op; under autocast the op itself runs in float32 (keeping coordinates exact)
            locations = locations.to(value.dtype)
        return self._attend(value, depth, spatial_shapes, level_start_index, locations, weights)

    def project(self, sampled: Tensor, identity: Tensor) -> Tensor:
        """Output projection, dropout and residual. Shapes: (bs, nq, C), (bs, nq, C) -> (bs, nq, C)."""
        return identity + self.dropout(self.output_proj(sampled))

    def forward(self, query: Tensor, value: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, depth: Tensor | None = None, query_pos: Tensor | None = None,
                identity: Tensor | None = None) -> Tensor:
        sampled = self.sample(query, value, reference_points, spatial_shapes, level_start_index, depth, query_pos)
        return self.project(sampled, query if identity is None else identity)

    def extra_repr(self) -> str:
        return (f"embed_dims={self.embed_dims}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
                f"num_points={self.num_points}")


class DeformableAttention3D(MultiScaleDeformableAttention):
    """3-D deformable attention (DFA3D): MSDA over depth-expanded features, with (x, y, z) sampling points.

    Args: as :class:`MultiScaleDeformableAttention`.

    Shapes:
        query (bs, nq, C), value (bs, num_keys, C), reference_points (bs, nq, num_anchors, 3) as (x, y, z) in
        [0, 1] (z = normalised camera depth), spatial_shapes (L, 2), level_start_index (L,), depth
        (bs, num_keys, D) a depth distribution per key -> (bs, nq, C).
    """

    coord_dim = 3

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8,
                 dropout: float = 0.1, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(embed_dims, num_heads, num_levels, num_points, dropout, device, dtype)

    def reset_parameters(self) -> None:
        """MSDA's init plus the authors' depth-offset init (zero weight, bias (cos + sin) / 2 * (i + 1))."""
        super().reset_parameters()
        grid = _direction_grid(self.num_heads, self.sampling_offsets_depth.weight.device).sum(-1) / 2  # (nh,)
        scale = torch.arange(1, self.num_points + 1, dtype=grid.dtype, device=grid.device)
        bias = (grid.view(-1, 1, 1) * scale.view(1, 1, -1)).expand(-1, self.num_levels, -1)  # (nh, L, P)
        with torch.no_grad():
            nn.init.zeros_(self.sampling_offsets_depth.weight)
            self.sampling_offsets_depth.bias.copy_(bias.reshape(-1))

    def _offsets(self, query: Tensor, spatial_shapes: Tensor, depth: Tensor | None) -> Tensor:
        """(bs, nq, C) -> (bs, nq, nh, L, P, 3): xy divided by the level's (w, h), z by the depth bins."""
        if depth is None:
            raise ValueError("DeformableAttention3D needs depth (bs, num_keys, num_depth_bins); got None")
        xy = super()._offsets(query, spatial_shapes, depth)
        z = self.sampling_offsets_depth(query).view(*xy.shape[:-1], 1) / depth.shape[-1]
        return torch.cat([xy, z], -1)

    def _attend(self, value: Tensor, depth: Tensor | None, spatial_shapes: Tensor, level_start_index: Tensor,
                locations: Tensor, weights: Tensor) -> Tensor:
        return deform_attn_3d(value, depth.to(value.dtype), spatial_shapes, level_start_index, locations, weights)


class DepthHead(nn.Module):
    """A small depth network: 3x3 conv, BatchNorm, ReLU, 1x1 conv to depth-bin logits, softmax over bins.

    Args:
        in_channels: channels of the feature map it reads.
        num_bins: depth bins D.
        hidden: channels of the hidden layer (default: in_channels).
        device, dtype: factory arguments.

    Shapes:
        (n, in_channels, h, w) -> (n, D, h, w) probabilities; ``logits`` gives the pre-softmax values.
    """

    def __init__(self, in_channels: int, num_bins: int, hidden: int | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        hidden = hidden or in_channels
        self.in_channels, self.num_bins, self.hidden = in_channels, check_int("num_bins", num_bins), hidden
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False, **factory),
                                    nn.BatchNorm2d(hidden, **factory), nn.ReLU(inplace=True))
        self.classify = nn.Conv2d(hidden, num_bins, 1, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.reduce[0].weight, mode="fan_out", nonlinearity="relu")
        self.reduce[1].reset_parameters()
        self.classify.reset_parameters()

    def logits(self, x: Tensor) -> Tensor:
        return self.classify(self.reduce(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x).softmax(1)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, num_bins={self.num_bins}, hidden={self.hidden}"
