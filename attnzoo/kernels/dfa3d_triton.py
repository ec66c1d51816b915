"""Triton kernels for DFA3D (3-D deformable attention) and multi-scale deformable attention (MSDA).

"3D Deformable Attention For 2D-to-3D Feature Lifting", Li et al., ICCV 2023, https://arxiv.org/abs/2307.12972;
MSDA from "Deformable DETR", Zhu et al., https://arxiv.org/abs/2010.04159. The op boundary, the tensor layout and
the PyTorch references live in :mod:`attnzoo.kernels.dfa3d`; this module holds only the kernels and launchers.

One kernel body serves both ops: ``HAS_DEPTH`` switches the per-corner depth score on (DFA3D) or off (MSDA, where
every score is 1). A program owns ``BLOCK_Q`` queries of one (batch, head) and walks levels x points; every point
has four bilinear corners, each a gathered ``head_dim`` row of ``value`` weighted by attention x bilinear weight x
depth score. The depth score of a corner is the depth distribution of that key linearly interpolated at
``z * D - 0.5`` with zero padding (the paper's factorised trilinear sampling, spec section 2.2), so the
H x W x D x C volume is never built.

The backward recomputes the geometry per point. ``grad_value`` and ``grad_depth`` are scattered with
``tl.atomic_add`` into buffers in the accumulation dtype (fp32, or fp64 for fp64 inputs so gradcheck can run
through the kernel); ``grad_sampling_locations`` (x, y and z) and ``grad_attention_weights`` belong to exactly
one program and are written directly. Unlike the authors' CUDA op the (x, y) gradient of the bilinear gather is
kept and the depth distribution is shared by the heads, as in the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnzoo.kernels._dispatch import accumulation_dtypes

__all__ = ["deform_attn_3d_backward", "deform_attn_3d_forward", "ms_deform_attn_backward", "ms_deform_attn_forward"]


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _level(shapes_ptr, starts_ptr, lvl):
    """Height, width and first key index (int64) of feature level ``lvl``."""
    return tl.load(shapes_ptr + 2 * lvl), tl.load(shapes_ptr + 2 * lvl + 1), tl.load(starts_ptr + lvl).to(tl.int64)


@triton.jit
def _point_geometry(loc_ptr, attn_ptr, point, qmask, h, w, num_bins, HAS_DEPTH: tl.constexpr, ACC: tl.constexpr):
    """Pixel-space corner origin and fractions of one sampling point for a block of queries.

    Returns x0, y0 (int32 floors), fx, fy (fractions), z0, fz (depth floor and fraction; 0 for MSDA) and the
    attention weight, each of shape (BLOCK_Q,).
    """
    NUM_COORDS: tl.constexpr = 2 + HAS_DEPTH
    x = tl.load(loc_ptr + point * NUM_COORDS, mask=qmask, other=0.0).to(ACC) * w.to(ACC) - 0.5
    y = tl.load(loc_ptr + point * NUM_COORDS + 1, mask=qmask, other=0.0).to(ACC) * h.to(ACC) - 0.5
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    if HAS_DEPTH:
        z = tl.load(loc_ptr + point * NUM_COORDS + 2, mask=qmask, other=0.0).to(ACC) * num_bins - 0.5
        z0f = tl.floor(z)
        fz = z - z0f
        z0 = z0f.to(tl.int32)
    else:
        fz = tl.zeros_like(x)
        z0 = tl.zeros_like(x0f).to(tl.int32)
    a = tl.load(attn_ptr + point, mask=qmask, other=0.0).to(ACC)
    return x0f.to(tl.int32), y0f.to(tl.int32), x - x0f, y - y0f, z0, fz, a


@triton.jit
def _corner(x0, y0, fx, fy, DX: tl.constexpr, DY: tl.constexpr, h, w, start, qmask):
    """Key index (int64), in-range mask and the x and y bilinear factors of the corner (x0 + DX, y0 + DY)."""
    xi = x0 + DX
    yi = y0 + DY
    inside = qmask & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    key = start + yi.to(tl.int64) * w + xi
    wx = fx * DX + (1.0 - fx) * (1 - DX)
    wy = fy * DY + (1.0 - fy) * (1 - DY)
    return key, inside, wx, wy


@triton.jit
def _depth_taps(depth_ptr, depth_row, z0, inside, num_bins, ACC: tl.constexpr):
    """The two depth-distribution taps around z (zero outside the bins) and their in-range masks."""
    in0 = inside & (z0 >= 0) & (z0 < num_bins)
    in1 = inside & (z0 + 1 >= 0) & (z0 + 1 < num_bins)
    p0 = tl.load(depth_ptr + depth_row + z0, mask=in0, other=0.0).to(ACC)
    p1 = tl.load(depth_ptr + depth_row + z0 + 1, mask=in1, other=0.0).to(ACC)
    return p0, p1, in0, in1


@triton.jit
def _program_rows(num_queries, num_heads, channels, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's batch, head, query mask, channel range and mask, and flat (b, q, head) row indices."""
    b = tl.program_id(1) // num_heads
    head = tl.program_id(1) % num_heads
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    c = tl.arange(0, BLOCK_C)
    qh = ((b * num_queries + q) * num_heads + head).to(tl.int64)  # (BLOCK_Q,)
    return b, head, q < num_queries, c, c < channels, qh


@triton.jit
def _deform_attn_fwd_kernel(value_ptr, depth_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                            num_queries, num_keys, num_heads, channels, num_levels, num_points, num_bins,
                            HAS_DEPTH: tl.constexpr, ACC: tl.constexpr, BLOCK_Q: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    b, head, qmask, c, cmask, qh = _program_rows(num_queries, num_heads, channels, BLOCK_Q, BLOCK_C)
    acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=ACC)
    for lvl in range(num_levels):
        h, w, start = _level(shapes_ptr, starts_ptr, lvl)
        for pt in range(num_points):
            point = (qh * num_levels + lvl) * num_points + pt
            x0, y0, fx, fy, z0, fz, a = _point_geometry(loc_ptr, attn_ptr, point, qmask, h, w, num_bins,
                                                        HAS_DEPTH, ACC)
            for corner in tl.static_range(4):
                key, inside, wx, wy = _corner(x0, y0, fx, fy, corner % 2, corner // 2, h, w, start, qmask)
                weight = a * wx * wy
                if HAS_DEPTH:
                    p0, p1, in0, in1 = _depth_taps(depth_ptr, (b * num_keys + key) * num_bins, z0, inside,
                                                   num_bins, ACC)
                    weight = weight * ((1.0 - fz) * p0 + fz * p1)
                rows = ((b * num_keys + key) * num_heads + head) * channels  # (BLOCK_Q,) start of value rows
                v = tl.load(value_ptr + rows[:, None] + c[None, :], mask=inside[:, None] & cmask[None, :],
                            other=0.0).to(ACC)
                acc += weight[:, None] * v
    out_offsets = qh[:, None] * channels + c[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=qmask[:, None] & cmask[None, :])


@triton.jit
def _deform_attn_bwd_kernel(grad_out_ptr, value_ptr, depth_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr,
                            grad_value_ptr, grad_depth_ptr, grad_loc_ptr, grad_attn_ptr,
                            num_queries, num_keys, num_heads, channels, num_levels, num_points, num_bins,
                            HAS_DEPTH: tl.constexpr, ACC: tl.constexpr, BLOCK_Q: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    b, head, qmask, c, cmask, qh = _program_rows(num_queries, num_heads, channels, BLOCK_Q, BLOCK_C)
    g = tl.load(grad_out_ptr + qh[:, None] * channels + c[None, :], mask=qmask[:, None] & cmask[None, :],
                other=0.0).to(ACC)  # (BLOCK_Q, BLOCK_C)
    num_coords: tl.constexpr = 2 + HAS_DEPTH
    loc_ty = grad_loc_ptr.dtype.element_ty
    for lvl in range(num_levels):
        h, w, start = _level(shapes_ptr, starts_ptr, lvl)
        for pt in range(num_points):
            point = (qh * num_levels + lvl) * num_points + pt
            x0, y0, fx, fy, z0, fz, a = _point_geometry(loc_ptr, attn_ptr, point, qmask, h, w, num_bins,
                                                        HAS_DEPTH, ACC)
            grad_x = tl.zeros_like(fx)  # d loss / d pixel coordinate, scaled to [0, 1] units at the store
            grad_y = tl.zeros_like(fx)
            grad_z = tl.zeros_like(fx)
            grad_a = tl.zeros_like(fx)
            for corner in tl.static_range(4):
                key, inside, wx, wy = _corner(x0, y0, fx, fy, corner % 2, corner // 2, h, w, start, qmask)
                score = tl.full(fx.shape, 1.0, ACC)
                if HAS_DEPTH:
                    depth_row = (b * num_keys + key) * num_bins
                    p0, p1, in0, in1 = _depth_taps(depth_ptr, depth_row, z0, inside, num_bins, ACC)
                    score = (1.0 - fz) * p0 + fz * p1
                rows = ((b * num_keys + key) * num_heads + head) * channels  # (BLOCK_Q,) start of value rows
                tile = rows[:, None] + c[None, :]
                tile_mask = inside[:, None] & cmask[None, :]
                v = tl.load(value_ptr + tile, mask=tile_mask, other=0.0).to(ACC)
                dot = tl.sum(g * v, axis=1)  # (BLOCK_Q,): grad_out . value row
                bilinear = wx * wy
                tl.atomic_add(grad_value_ptr + tile, (a * bilinear * score)[:, None] * g, mask=tile_mask)
                grad_a += bilinear * score * dot
                # d wx / dx is +1 for the x0 + 1 corner and -1 for the x0 corner (likewise y)
                grad_x += a * score * dot * wy * (2 * (corner % 2) - 1)
                grad_y += a * score * dot * wx * (2 * (corner // 2) - 1)
                if HAS_DEPTH:
                    grad_score = a * bilinear * dot
                    grad_z += grad_score * (p1 - p0)
                    tl.atomic_add(grad_depth_ptr + depth_row + z0, grad_score * (1.0 - fz), mask=in0)
                    tl.atomic_add(grad_depth_ptr + depth_row + z0 + 1, grad_score * fz, mask=in1)
            tl.store(grad_loc_ptr + point * num_coords, (grad_x * w.to(ACC)).to(loc_ty), mask=qmask)
            tl.store(grad_loc_ptr + point * num_coords + 1, (grad_y * h.to(ACC)).to(loc_ty), mask=qmask)
            if HAS_DEPTH:
                tl.store(grad_loc_ptr + point * num_coords + 2, (grad_z * num_bins).to(loc_ty), mask=qmask)
            tl.store(grad_attn_ptr + point, grad_a.to(grad_attn_ptr.dtype.element_ty), mask=qmask)


# -------------------------------------------------------------------------------------------- launchers


def _blocks(num_queries: int, channels: int) -> tuple[int, int, int]:
    """BLOCK_Q, BLOCK_C and num_warps: tiles of about 1024 gathered elements, 8 per thread at 4 warps."""
    block_c = triton.next_power_of_2(channels)
    block_q = max(1, min(1024 // block_c, 64, triton.next_power_of_2(num_queries)))
    return block_q, block_c, 4


def _launch_config(value: Tensor, sampling_locations: Tensor) -> tuple[tuple[int, int], dict]:
    bs, _, num_heads, channels = value.shape
    num_queries, num_levels, num_points = sampling_locations.shape[1], sampling_locations.shape[3], \
        sampling_locations.shape[4]
    block_q, block_c, num_warps = _blocks(num_queries, channels)
    grid = (triton.cdiv(num_queries, block_q), bs * num_heads)
    sizes = dict(num_queries=num_queries, num_keys=value.shape[1], num_heads=num_heads, channels=channels,
                 num_levels=num_levels, num_points=num_points, ACC=accumulation_dtypes(value.dtype)[1], BLOCK_Q=block_q,
                 BLOCK_C=block_c, num_warps=num_warps)
    return grid, sizes


def _forward(value: Tensor, depth: Tensor | None, spatial_shapes: Tensor, level_start_index: Tensor,
             sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    value, spatial_shapes, level_start_index = value.contiguous(), spatial_shapes.contiguous(), \
        level_start_index.contiguous()
    sampling_locations, attention_weights = sampling_locations.contiguous(), attention_weights.contiguous()
    bs, _, num_heads, channels = value.shape
    out = value.new_empty(bs, sampling_locations.shape[1], num_heads * channels)
    grid, sizes = _launch_config(value, sampling_locations)
    has_depth = depth is not None
    depth = depth.contiguous() if has_depth else value  # never read when HAS_DEPTH is False
    _deform_attn_fwd_kernel[grid](value, depth, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, out, num_bins=depth.shape[-1] if has_depth else 1,
                                  HAS_DEPTH=has_depth, **sizes)
    return out


def _backward(grad_output: Tensor, value: Tensor, depth: Tensor | None, spatial_shapes: Tensor,
              level_start_index: Tensor, sampling_locations: Tensor, attention_weights: Tensor
              ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    grad_output, value = grad_output.contiguous(), value.contiguous()
    spatial_shapes, level_start_index = spatial_shapes.contiguous(), level_start_index.contiguous()
    sampling_locations, attention_weights = sampling_locations.contiguous(), attention_weights.contiguous()
    acc = accumulation_dtypes(value.dtype)[0]
    grad_value = torch.zeros(value.shape, dtype=acc, device=value.device)
    has_depth = depth is not None
    depth = depth.contiguous() if has_depth else value  # never read or written when HAS_DEPTH is False
    grad_depth = torch.zeros(depth.shape, dtype=acc, device=value.device) if has_depth else grad_value
    grad_locations = torch.empty_like(sampling_locations)
    grad_weights = torch.empty_like(attention_weights)
    grid, sizes = _launch_config(value, sampling_locations)
    _deform_attn_bwd_kernel[grid](grad_output, value, depth, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, grad_value, grad_depth, grad_locations, grad_weights,
                                  num_bins=depth.shape[-1] if has_depth else 1, HAS_DEPTH=has_depth, **sizes)
    return (grad_value.to(value.dtype), grad_depth.to(value.dtype) if has_depth else None, grad_locations,
            grad_weights)


def deform_attn_3d_forward(value: Tensor, depth: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                           sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """DFA3D forward: (bs, nq, num_heads * head_dim) in value's dtype (layout in :mod:`attnzoo.kernels.dfa3d`)."""
    return _forward(value, depth, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def deform_attn_3d_backward(grad_output: Tensor, value: Tensor, depth: Tensor, spatial_shapes: Tensor,
                            level_start_index: Tensor, sampling_locations: Tensor, attention_weights: Tensor
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """DFA3D backward: gradients of value, depth, sampling_locations and attention_weights."""
    return _backward(grad_output, value, depth, spatial_shapes, level_start_index, sampling_locations,
                     attention_weights)


def ms_deform_attn_forward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                           sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """MSDA forward: (bs, nq, num_heads * head_dim) in value's dtype."""
    return _forward(value, None, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def ms_deform_attn_backward(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                            sampling_locations: Tensor, attention_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """MSDA backward: gradients of value, sampling_locations and attention_weights."""
    grad_value, _, grad_locations, grad_weights = _backward(grad_output, value, None, spatial_shapes,
                                                            level_start_index, sampling_locations,
                                                            attention_weights)
    return grad_value, grad_locations, grad_weights
