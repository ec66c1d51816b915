"""DFA3D and multi-scale deformable attention: PyTorch references and the op boundary.

"3D Deformable Attention For 2D-to-3D Feature Lifting", Li et al., ICCV 2023, https://arxiv.org/abs/2307.12972.
Multi-scale deformable attention (MSDA) is from "Deformable DETR", Zhu et al., https://arxiv.org/abs/2010.04159.

Tensor layout follows the MSDA convention of the authors' code (and mmcv), plus a per-pixel depth distribution:

- ``value`` (bs, num_keys, num_heads, head_dim): the flattened multi-level feature maps, split into heads;
- ``depth`` (bs, num_keys, num_depth_bins): a depth distribution for every key. Unlike the authors' kernel,
  which takes a copy per head, it is shared by all heads (their module only ever passes the same copy);
- ``spatial_shapes`` (num_levels, 2) as (h, w) and ``level_start_index`` (num_levels,), integer tensors;
- ``sampling_locations`` (bs, num_queries, num_heads, num_levels, num_points, 3) as (x, y, z) in [0, 1];
- ``attention_weights`` (bs, num_queries, num_heads, num_levels, num_points).

Pixel convention as MSDA: x maps to ``x * w - 0.5`` (``grid_sample(align_corners=False)``) with zero padding;
depth z maps to ``z * D - 0.5`` with zero padding, so bin k is centred at z = (k + 0.5) / D.

Two references compute the same function. ``deform_attn_3d_naive`` follows the paper's definition: it
materialises the depth-expanded volume ``F(u, v, d) = P(u, v, d) X(u, v)`` and samples it trilinearly with 3-D
``grid_sample`` (O(H W D C) memory). ``deform_attn_3d_efficient`` uses the paper's mathematically equivalent form,
as the authors' two CUDA kernels do: trilinear sampling factorises over the four bilinear (u, v) corners into a
per-corner depth score ``S_c`` (linear interpolation of P along depth) times the bilinear weight, so DFA3D is an
MSDA gather whose corner weights are multiplied by ``S_c``; the volume is never built. Here the gather is one
``embedding_bag`` over all levels, points and corners, run over bounded chunks of queries (forward and the
chunked autograd VJP of the 'torch' backward), so its working memory does not grow with the number of queries.
Deliberate differences from the authors' op: gradients reach every input, the (x, y) gradient of the bilinear
gather included (their standalone one-stage wrapper drops it), and there is no ``im2col_step``.

The op boundary: ``attnzoo::deform_attn_3d`` and ``attnzoo::ms_deform_attn`` are ``torch.library`` custom ops with
fake kernels and autograd through companion ``*_backward`` ops. The 'torch' backend runs the efficient reference
(and its autograd gradient); the 'triton' backend calls launchers in ``attnzoo.kernels.dfa3d_triton``:
``deform_attn_3d_forward(value, depth, spatial_shapes, level_start_index, sampling_locations,
attention_weights) -> out``, ``deform_attn_3d_backward(grad_out, <same inputs>) -> (grad_value, grad_depth,
grad_sampling_locations, grad_attention_weights)``, and ``ms_deform_attn_forward``/``ms_deform_attn_backward``
with the same arguments less ``depth`` (and less ``grad_depth``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.kernels._dispatch import reference_vjp
from attnzoo.kernels.define import define_op

__all__ = [
    "DEFORM_ATTN_3D",
    "MS_DEFORM_ATTN",
    "deform_attn_3d",
    "deform_attn_3d_efficient",
    "deform_attn_3d_naive",
    "ms_deform_attn",
    "ms_deform_attn_efficient",
    "ms_deform_attn_naive",
]


# --------------------------------------------------------------------------------------------- helpers

# (batch, head, level, point, corner) entries per query chunk of the efficient path: ~10 temporaries of this
# many elements are alive at once, so this bounds its working memory at a few tens of MB
_CHUNK_ENTRIES = 1 << 19


def _coords_dtype(dtype: torch.dtype) -> torch.dtype:
    # Pixel indices above 2048 are not representable in fp16/bf16, so corner arithmetic runs in >= fp32.
    return torch.promote_types(dtype, torch.float32)


def _bilinear_corners(sampling_locations: Tensor, spatial_shapes: Tensor, level_start_index: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """Global key index and zero-padded bilinear weight of the four (u, v) corners of every sampling point.

    Corner order on the last dim: (y0, x0), (y0, x1), (y1, x0), (y1, x1). Out-of-range corners get weight 0 and a
    clamped (in-range) index, so gathers never need masking.

    Shapes:
        sampling_locations (bs, nq, nh, L, P, >=2) -> key (bs, nq, nh, L, P, 4) int64, weight (same) float.
    """
    loc = sampling_locations.to(_coords_dtype(sampling_locations.dtype))
    h_int = spatial_shapes[:, 0].view(-1, 1, 1)  # (L, 1, 1): broadcasts against (..., L, P, 4)
    w_int = spatial_shapes[:, 1].view(-1, 1, 1)
    start = level_start_index.view(-1, 1, 1)
    x = loc[..., 0] * spatial_shapes[:, 1].view(-1, 1).to(loc.dtype) - 0.5  # (bs, nq, nh, L, P)
    y = loc[..., 1] * spatial_shapes[:, 0].view(-1, 1).to(loc.dtype) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    corner = torch.arange(4, device=x.device)  # arange, not a tensor literal: the export lowering stays functional
    xs = x0.long().unsqueeze(-1) + corner % 2  # (bs, nq, nh, L, P, 4): x offsets 0, 1, 0, 1
    ys = y0.long().unsqueeze(-1) + corner // 2  # y offsets 0, 0, 1, 1
    wx = torch.stack([1 - fx, fx, 1 - fx, fx], dim=-1)
    wy = torch.stack([1 - fy, 1 - fy, fy, fy], dim=-1)
    inside = (xs >= 0) & (xs < w_int) & (ys >= 0) & (ys < h_int)
    key = start + torch.minimum(ys.clamp(min=0), h_int - 1) * w_int + torch.minimum(xs.clamp(min=0), w_int - 1)
    return key, wx * wy * inside


def _depth_scores(depth: Tensor, key: Tensor, z: Tensor) -> Tensor:
    """Per-corner depth score S_c: the depth distribution at each corner, linearly interpolated at z (zero padded).

    Shapes:
        depth (bs, nk, D), key (bs, nq, nh, L, P, 4), z (bs, nq, nh, L, P) in [0, 1] -> (bs, nq, nh, L, P, 4).
    """
    bs, nk, num_bins = depth.shape
    z = z.to(_coords_dtype(z.dtype)) * num_bins - 0.5
    z0 = z.floor()
    fz = z - z0
    row = (torch.arange(bs, device=key.device).view(bs, 1, 1, 1, 1, 1) * nk + key) * num_bins
    flat = depth.reshape(-1)  # (bs * nk * D,)
    score = z.new_zeros(key.shape)
    for bin_, weight in ((z0.long(), 1 - fz), (z0.long() + 1, fz)):
        inside = (bin_ >= 0) & (bin_ < num_bins)
        gathered = flat[row + bin_.clamp(0, num_bins - 1).unsqueeze(-1)]  # (bs, nq, nh, L, P, 4)
        score = score + gathered * (weight * inside).unsqueeze(-1)
    return score


def _gather_rows(value: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """Row of every (batch, query, head, level, point, corner) sample in ``value`` flattened to (bs*nk*nh, C)."""
    bs, nk, nh, channels = value.shape
    nq = key.shape[1]
    head = torch.arange(nh, device=key.device).view(1, 1, nh, 1, 1, 1)
    batch = torch.arange(bs, device=key.device).view(bs, 1, 1, 1, 1, 1)
    rows = ((batch * nk + key) * nh + head).reshape(bs * nq * nh, -1)  # one bag of L*P*4 rows per (b, q, head)
    return rows, value.reshape(bs * nk * nh, channels)


def _weighted_gather(value: Tensor, key: Tensor, corner_weight: Tensor, attention_weights: Tensor) -> Tensor:
    """sum over levels, points and corners of attention * corner_weight * value[key], one embedding_bag per query.

    Shapes:
        value (bs, nk, nh, C), key and corner_weight (bs, nq, nh, L, P, 4), attention_weights (bs, nq, nh, L, P)
        -> (bs, nq, nh * C).
    """
    bs, nq = key.shape[:2]
    rows, table = _gather_rows(value, key)
    weights = (attention_weights.unsqueeze(-1) * corner_weight).to(value.dtype).reshape(rows.shape)
    out = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    return out.view(bs, nq, -1)  # (bs * nq * nh, C) -> (bs, nq, nh * C)


def _weighted_gather_dense(value: Tensor, key: Tensor, corner_weight: Tensor, attention_weights: Tensor) -> Tensor:
    """:func:`_weighted_gather` as an indexed gather and a weighted sum (export lowering: ONNX's embedding_bag is
    a loop). It holds every gathered row, (bs*nq*nh, L*P*4, C), where the bag form holds none."""
    bs, nq = key.shape[:2]
    rows, table = _gather_rows(value, key)
    weights = (attention_weights.unsqueeze(-1) * corner_weight).to(value.dtype).reshape(*rows.shape, 1)
    return (table[rows] * weights).sum(1).view(bs, nq, -1)


def _naive_sum(volumes: list[Tensor], grids: Tensor, attention_weights: Tensor, bs: int, nh: int) -> Tensor:
    """MSDA's grid_sample form: sample each level's (bs * nh, C, [D,] h, w) volume and sum with the weights.

    Shapes:
        grids (bs, nq, nh, L, P, 2 or 3) in [-1, 1], attention_weights (bs, nq, nh, L, P) -> (bs, nq, nh * C).
    """
    nq, num_points = grids.shape[1], grids.shape[4]
    out = 0
    for lvl, volume in enumerate(volumes):
        grid = grids[:, :, :, lvl].transpose(1, 2).reshape(bs * nh, nq, num_points, grids.shape[-1])
        if volume.dim() == 5:
            grid = grid.unsqueeze(1)  # (bs * nh, 1, nq, P, 3): 5-D grid_sample with mode='bilinear' is trilinear
        sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(bs * nh, -1, nq, num_points)  # (bs * nh, C, nq, P)
        weight = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(bs * nh, 1, nq, num_points)
        out = out + (sampled * weight).sum(-1)  # (bs * nh, C, nq)
    return out.view(bs, -1, nq).transpose(1, 2).contiguous()  # (bs, nh * C, nq) -> (bs, nq, nh * C)


def _level_maps(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor) -> list[tuple[Tensor, slice]]:
    """Each level's value as a (bs, nh, C, h, w) map with its key slice."""
    bs, _, nh, channels = value.shape
    maps = []
    for (h, w), start in zip(spatial_shapes.tolist(), level_start_index.tolist(), strict=True):
        keys = slice(start, start + h * w)
        maps.append((value[:, keys].permute(0, 2, 3, 1).reshape(bs, nh, channels, h, w), keys))
    return maps


# ------------------------------------------------------------------------------------------ references


def deform_attn_3d_naive(value: Tensor, depth: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                         sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """DFA3D by definition: trilinear sampling of the depth-expanded volume P (x) X (O(h w D C) memory per level).

    Shapes: see the module docstring; returns (bs, num_queries, num_heads * head_dim).
    """
    bs, _, nh, channels = value.shape
    num_bins = depth.shape[-1]
    volumes = []
    for level_value, keys in _level_maps(value, spatial_shapes, level_start_index):
        h, w = level_value.shape[-2:]
        prob = depth[:, keys].transpose(1, 2).reshape(bs, 1, 1, num_bins, h, w)
        volume = level_value.unsqueeze(3) * prob  # (bs, nh, C, D, h, w)
        volumes.append(volume.reshape(bs * nh, channels, num_bins, h, w))
    return _naive_sum(volumes, 2 * sampling_locations - 1, attention_weights, bs, nh)


def _dfa3d_gather(value: Tensor, depth: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor, gather=_weighted_gather) -> Tensor:
    key, bilinear = _bilinear_corners(sampling_locations, spatial_shapes, level_start_index)
    score = _depth_scores(depth, key, sampling_locations[..., 2])
    return gather(value, key, bilinear * score, attention_weights)


def _msda_gather(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                 attention_weights: Tensor, gather=_weighted_gather) -> Tensor:
    key, bilinear = _bilinear_corners(sampling_locations, spatial_shapes, level_start_index)
    return gather(value, key, bilinear, attention_weights)


def _query_chunks(sampling_locations: Tensor) -> list[slice]:
    """Query slices holding at most _CHUNK_ENTRIES (batch, head, level, point, corner) entries each."""
    bs, nq, nh, num_levels, num_points, _ = sampling_locations.shape
    step = max(1, _CHUNK_ENTRIES // max(1, bs * nh * num_levels * num_points * 4))
    return [slice(start, min(start + step, nq)) for start in range(0, max(nq, 1), step)]


def _chunked(gather: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """``gather`` over query chunks (the last two inputs are per query): bounded temporaries, same result."""
    *shared, locations, weights = inputs
    parts = [gather(*shared, locations[:, q], weights[:, q]) for q in _query_chunks(locations)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _chunked_vjp(gather: Callable[..., Tensor], inputs: tuple[Tensor, ...], grad_output: Tensor) -> list[Tensor]:
    """Autograd gradients of ``gather`` by query chunks: shared-input gradients add up, per-query ones concatenate.

    Returns the gradients of the floating-point inputs, in order.
    """
    *shared, locations, weights = inputs
    total: list[Tensor] = []
    per_query: list[list[Tensor]] = [[], []]
    for q in _query_chunks(locations):
        grads = reference_vjp(gather, [*shared, locations[:, q], weights[:, q]], grad_output[:, q])
        shared_grads = [g for g in grads[:-2] if g is not None]
        total = shared_grads if not total else [t + g for t, g in zip(total, shared_grads, strict=True)]
        per_query[0].append(grads[-2])
        per_query[1].append(grads[-1])
    return [*total, torch.cat(per_query[0], 1), torch.cat(per_query[1], 1)]


def deform_attn_3d_efficient(value: Tensor, depth: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                             sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """DFA3D as depth-weighted MSDA: per-corner depth scores times bilinear weights, one weighted gather.

    Queries run in chunks of bounded size, so the temporaries stay small whatever the number of queries.

    Shapes: see the module docstring; returns (bs, num_queries, num_heads * head_dim).
    """
    return _chunked(_dfa3d_gather, value, depth, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights)


def ms_deform_attn_naive(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                         sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention (2-D) with bilinear ``grid_sample`` per level, as Deformable DETR's
    PyTorch fallback computes it.

    Shapes: as :func:`deform_attn_3d_naive` with (x, y) locations; returns (bs, num_queries, num_heads * head_dim).
    """
    bs, _, nh, channels = value.shape
    volumes = [v.reshape(bs * nh, channels, *v.shape[-2:]) for v, _ in
               _level_maps(value, spatial_shapes, level_start_index)]
    return _naive_sum(volumes, 2 * sampling_locations - 1, attention_weights, bs, nh)


def ms_deform_attn_efficient(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                             sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention (2-D) as one weighted gather over all levels, points and corners.

    Shapes: as :func:`ms_deform_attn_naive`.
    """
    return _chunked(_msda_gather, value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


# ------------------------------------------------------------------------------------------ validation


def _describe(name: str, tensor: Tensor) -> str:
    return f"{name} {tuple(tensor.shape)} {tensor.dtype}"


def _check_inputs(value: Tensor, depth: Tensor | None, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor, coord_dim: int) -> None:
    named = {"value": value, "spatial_shapes": spatial_shapes, "level_start_index": level_start_index,
             "sampling_locations": sampling_locations, "attention_weights": attention_weights}
    if depth is not None:
        named["depth"] = depth
    for name, tensor in named.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    floats = {k: v for k, v in named.items() if k not in ("spatial_shapes", "level_start_index")}
    for name, tensor in floats.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{_describe(name, tensor)}: expected a floating-point dtype")
        if tensor.dtype != value.dtype:
            raise ValueError(f"{_describe(name, tensor)} and {_describe('value', value)}: dtypes must match")
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].is_floating_point() or named[name].is_complex() or named[name].dtype == torch.bool:
            raise ValueError(f"{_describe(name, named[name])}: expected an integer dtype")
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(str(d) for d in devices)}")
    if value.dim() != 4:
        raise ValueError(f"{_describe('value', value)}: expected (bs, num_keys, num_heads, head_dim)")
    bs, num_keys, nh, _ = value.shape
    if depth is not None and (depth.dim() != 3 or tuple(depth.shape[:2]) != (bs, num_keys)):
        raise ValueError(f"{_describe('depth', depth)}: expected (bs, num_keys, num_depth_bins) = ({bs}, {num_keys},"
                         f" D) to match {_describe('value', value)}")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"{_describe('spatial_shapes', spatial_shapes)}: expected (num_levels, 2) as (h, w)")
    num_levels = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(f"{_describe('level_start_index', level_start_index)}: expected ({num_levels},) to match "
                         f"{_describe('spatial_shapes', spatial_shapes)}")
    loc = sampling_locations
    if loc.dim() != 6 or loc.shape[-1] != coord_dim:
        xyz = "(x, y, z)" if coord_dim == 3 else "(x, y)"
        raise ValueError(f"{_describe('sampling_locations', loc)}: expected (bs, num_queries, num_heads, num_levels, "
                         f"num_points, {coord_dim}) with {xyz} in [0, 1]")
    if loc.shape[0] != bs or loc.shape[2] != nh or loc.shape[3] != num_levels:
        raise ValueError(f"{_describe('sampling_locations', loc)}: batch, heads and levels must be ({bs}, {nh}, "
                         f"{num_levels}) to match {_describe('value', value)} and spatial_shapes")
    if attention_weights.shape != loc.shape[:-1]:
        raise ValueError(f"{_describe('attention_weights', attention_weights)}: expected {tuple(loc.shape[:-1])} to "
                         f"match {_describe('sampling_locations', loc)}")
    if torch.compiler.is_compiling():
        return  # the checks below read tensor data, which would break the graph
    if num_levels and int(spatial_shapes.min()) < 1:
        raise ValueError(f"spatial_shapes {spatial_shapes.tolist()}: every level's (h, w) must be positive")
    sizes = spatial_shapes.prod(dim=1)
    starts = torch.cumsum(sizes, 0) - sizes
    if int(sizes.sum()) != num_keys:
        raise ValueError(f"spatial_shapes {spatial_shapes.tolist()} hold {int(sizes.sum())} keys but "
                         f"{_describe('value', value)} has num_keys={num_keys}")
    if not torch.equal(starts.to(level_start_index), level_start_index):
        raise ValueError(f"level_start_index {level_start_index.tolist()} must be the running start of the levels "
                         f"of spatial_shapes {spatial_shapes.tolist()}: expected {starts.tolist()}")


# ------------------------------------------------------------------------------------------ op definitions


def _sampling_flops(value, sampling_locations, extra_per_corner: int) -> int:
    """2 FLOPs per (sample corner, channel) multiply-add of the weighted gather, plus ``extra_per_corner``
    multiply-adds per corner for its weight (DFA3D's two depth taps)."""
    bs, nq, nh, num_levels, num_points, _ = sampling_locations
    corners = bs * nq * nh * num_levels * num_points * 4
    return 2 * corners * (value[-1] + extra_per_corner)


_DEFORMABLE = dict(autocast="fp32")  # coordinates: BEVFormer runs MSDA in fp32 under AMP (..._fp32 function)

DEFORM_ATTN_3D = define_op(
    "deform_attn_3d",
    "(Tensor value, Tensor depth, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
    "Tensor attention_weights) -> Tensor",
    reference=deform_attn_3d_efficient,
    lowering=functools.partial(_dfa3d_gather, gather=_weighted_gather_dense),
    triton=("dfa3d_triton", "deform_attn_3d_forward"),
    fake=lambda value, depth, shapes, starts, loc, weights: value.new_empty(
        value.shape[0], loc.shape[1], value.shape[2] * value.shape[3]),
    backward=lambda grad_output, *inputs: _chunked_vjp(_dfa3d_gather, inputs, grad_output),
    backward_triton=("dfa3d_triton", "deform_attn_3d_backward"),
    grads_for=("value", "depth", "sampling_locations", "attention_weights"),
    validate=lambda value, depth, *rest: _check_inputs(value, depth, *rest, coord_dim=3),
    flops=lambda value, depth, shapes, starts, loc, weights: _sampling_flops(value, loc, 2),
    **_DEFORMABLE,
)

MS_DEFORM_ATTN = define_op(
    "ms_deform_attn",
    "(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
    "Tensor attention_weights) -> Tensor",
    reference=ms_deform_attn_efficient,
    lowering=functools.partial(_msda_gather, gather=_weighted_gather_dense),
    triton=("dfa3d_triton", "ms_deform_attn_forward"),
    fake=lambda value, shapes, starts, loc, weights: value.new_empty(
        value.shape[0], loc.shape[1], value.shape[2] * value.shape[3]),
    backward=lambda grad_output, *inputs: _chunked_vjp(_msda_gather, inputs, grad_output),
    backward_triton=("dfa3d_triton", "ms_deform_attn_backward"),
    grads_for=("value", "sampling_locations", "attention_weights"),
    validate=lambda value, *rest: _check_inputs(value, None, *rest, coord_dim=2),
    flops=lambda value, shapes, starts, loc, weights: _sampling_flops(value, loc, 0),
    **_DEFORMABLE,
)


# ------------------------------------------------------------------------------------------ public ops


def deform_attn_3d(value: Tensor, depth: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor, backend: str | None = "auto") -> Tensor:
    """3-D deformable attention (DFA3D): MSDA over the depth-expanded feature volume, without building it.

    Args:
        value: per-key features split into heads.
        depth: per-key depth distribution (shared by all heads), e.g. a softmax over depth bins.
        spatial_shapes: (h, w) of every level, integer.
        level_start_index: first key of every level, integer.
        sampling_locations: (x, y, z) in [0, 1]; x, y as MSDA, z over the depth bins (zero padding outside).
        attention_weights: weight of every sampling point (the module softmaxes them over levels x points).
        backend: 'auto', 'torch' or 'triton' (see :mod:`attnzoo.kernels._dispatch`); None uses the default.

    Shapes:
        value (bs, num_keys, num_heads, head_dim), depth (bs, num_keys, D), spatial_shapes (L, 2),
        level_start_index (L,), sampling_locations (bs, nq, num_heads, L, P, 3), attention_weights
        (bs, nq, num_heads, L, P) -> (bs, nq, num_heads * head_dim).
    """
    return DEFORM_ATTN_3D(value, depth, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                          backend=backend)


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                   attention_weights: Tensor, backend: str | None = "auto") -> Tensor:
    """Multi-scale deformable attention (Deformable DETR): bilinear sampling of every level, weighted sum.

    Args: as :func:`deform_attn_3d` without ``depth``; ``sampling_locations`` holds (x, y).

    Shapes:
        value (bs, num_keys, num_heads, head_dim), spatial_shapes (L, 2), level_start_index (L,),
        sampling_locations (bs, nq, num_heads, L, P, 2), attention_weights (bs, nq, num_heads, L, P)
        -> (bs, nq, num_heads * head_dim).
    """
    return MS_DEFORM_ATTN(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                          backend=backend)
