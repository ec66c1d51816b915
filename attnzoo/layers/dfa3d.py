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

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attnzoo._checks import check_int
from attnzoo.kernels.dfa3d import deform_attn_3d, ms_deform_attn
from attnzoo.layers.scripting import NotScriptable

__all__ = ["DeformableAttention3D", "DepthHead", "MultiScaleDeformableAttention", "MultiViewLifting",
           "depth_distribution", "flatten_levels", "pillar_points"]


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


def _resize_distribution(dist: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, D, h, w) to ``size``: area average when shrinking (stays a distribution), nearest when growing."""
    if tuple(dist.shape[-2:]) == tuple(size):
        return dist
    if dist.shape[-2] >= size[0] and dist.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(dist, size)
    return F.interpolate(dist, size=size, mode="nearest")


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


# ------------------------------------------------------------------------------------------- main class


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
