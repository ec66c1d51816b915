"""Triton kernels for the ELA gate (``attnzoo::ela_gate``).

"ELA: Efficient Local Attention for Deep Convolutional Neural Networks", Xu & Wan, https://arxiv.org/abs/2403.01123.
The op boundary and the PyTorch reference live in :mod:`attnzoo.kernels.ela`; this module holds only the kernels
and their launchers. Results match the reference up to rounding: everything between ``x`` and ``y`` is computed in
fp32 (fp64 for fp64 inputs), where the reference rounds the strips to the input dtype after every step.

ELA is memory-bound: the feature map is ``B*C*H*W`` elements, the strips only ``B*C*(H+W)``. The work is split so
that the big tensors are touched the minimal number of times and everything else runs on the small strips:

forward (``x`` read twice, ``y`` written once)
    1. ``_strip_reduce_kernel``: one pass over ``x`` gives both strip means of every (b, c) plane.
    2. ``_gates_kernel``: per (b, norm group, strip) the shared grouped Conv1d, the GroupNorm statistics of that
       strip and the sigmoid, on the strips only.
    3. ``_gate_apply_kernel``: ``y = x * a_h * a_w``.

backward (``x`` read twice, ``grad_out`` twice, ``grad_x`` written once; the op saves only its inputs, so the
strip means and gates are recomputed by steps 1-2 first)
    4. ``_strip_reduce_kernel`` again, on ``grad_out * x``: ``sum_W(g x a_w)`` and ``sum_H(g x a_h)``, the
       gradients of the two gates, in one pass over (grad_out, x).
    5. ``_gates_backward_kernel``: sigmoid and GroupNorm backward per (b, norm group, strip) into dL/dconv; the
       GroupNorm parameter gradients are summed over batch and strips with ``tl.atomic_add`` into fp32 buffers.
    6. ``_conv_weight_grad_kernel``: the Conv1d weight gradient; one program per (channel block, input channel,
       tap) accumulates over a run of batches and both strips elementwise, then reduces and adds once.
    7. ``_strip_input_grad_kernel``: the Conv1d input gradient (a gather over the output channels of each conv
       group, no atomics), scaled by the mean's ``1 / W`` or ``1 / H``.
    8. ``_gate_apply_kernel`` with the strip shifts: ``grad_x = g a_h a_w + dz_h / W + dz_w / H`` (reads only
       ``grad_out``).

Strip buffers hold both strips of a plane side by side, shape (B, C, H + W): the H strip (row means, length H)
first, then the W strip (column means, length W), so the strip kernels serve both strips from one launch.

Plane tiles are (BLOCK_P planes, BLOCK_H rows, BLOCK_W columns) with BLOCK_W >= W: column sums stay in registers
while the program walks the rows of its planes, so no partial sums go through memory. Small planes are batched
(BLOCK_P > 1) so every program still moves a few thousand elements. H and W are compile-time constants of the
plane kernels (one compilation per feature-map size, a handful per network), so the compiler can prove the row
alignment and use vector loads (up to 8 x bf16 for W = 56) rather than one element per lane.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnzoo.kernels._dispatch import accumulation_dtypes

__all__ = ["ela_gate_backward", "ela_gate_forward"]

# elements per plane tile / per strip tile: 4 warps x 32 lanes x 8-32 elements, enough loads in flight per SM
_PLANE_TILE = 4096
_STRIP_TILE = 2048
# enough programs for the weight-gradient reduction to fill an H100 (132 SMs) a few times over
_WEIGHT_GRAD_PROGRAMS = 1024


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _plane_columns(planes, H, W, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's planes p, columns c, the start of each plane's strips, and the W strips' offsets and mask."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_W)
    strip = p.to(tl.int64) * (H + W)  # (BLOCK_P,): start of each plane's strips (H strip, then W strip)
    col_offsets = strip[:, None] + H + c[None, :]  # (BLOCK_P, BLOCK_W)
    return p, c, strip, col_offsets, (p < planes)[:, None] & (c < W)[None, :]


@triton.jit
def _plane_rows(p, r, c, strip, planes, H, W):
    """Offsets (int64) and mask of the (planes p) x (rows r) x (columns c) tile of a (B*C, H, W) tensor, and the
    offsets and mask of those rows in the H strips."""
    offsets = p.to(tl.int64)[:, None, None] * (H * W) + (r * W)[None, :, None] + c[None, None, :]
    mask = (p < planes)[:, None, None] & (r < H)[None, :, None] & (c < W)[None, None, :]
    return offsets, mask, strip[:, None] + r[None, :], (p < planes)[:, None] & (r < H)[None, :]


@triton.jit
def _strip_reduce_kernel(x_ptr, g_ptr, gate_ptr, out_ptr, planes, H: tl.constexpr, W: tl.constexpr,
                         IS_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_W: tl.constexpr):
    """Both strips of each plane: means of x (IS_GRAD False) or sums of g*x*a_w over W and g*x*a_h over H."""
    p, c, strip, col_offsets, col_mask = _plane_columns(planes, H, W, BLOCK_P, BLOCK_W)
    if IS_GRAD:
        a_w = tl.load(gate_ptr + col_offsets, mask=col_mask, other=0.0)  # (P, BLOCK_W)
    col = tl.zeros([BLOCK_P, BLOCK_W], dtype=ACC)
    for r0 in range(0, H, BLOCK_H):
        r = r0 + tl.arange(0, BLOCK_H)
        offsets, mask, row_offsets, row_mask = _plane_rows(p, r, c, strip, planes, H, W)
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        if IS_GRAD:
            v = v * tl.load(g_ptr + offsets, mask=mask, other=0.0).to(ACC)
            a_h = tl.load(gate_ptr + row_offsets, mask=row_mask, other=0.0)
            row = tl.sum(v * a_w[:, None, :], axis=2)
            col += tl.sum(v * a_h[:, :, None], axis=1)
        else:
            row = tl.sum(v, axis=2) / W
            col += tl.sum(v, axis=1)
        tl.store(out_ptr + row_offsets, row, mask=row_mask)
    if not IS_GRAD:
        col = col / H
    tl.store(out_ptr + col_offsets, col, mask=col_mask)


@triton.jit
def _gate_apply_kernel(x_ptr, gate_ptr, shift_ptr, out_ptr, planes, H: tl.constexpr, W: tl.constexpr,
                       HAS_SHIFT: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_W: tl.constexpr):
    """out = x * a_h * a_w (+ s_h + s_w when HAS_SHIFT), strips broadcast over their plane."""
    p, c, strip, col_offsets, col_mask = _plane_columns(planes, H, W, BLOCK_P, BLOCK_W)
    a_w = tl.load(gate_ptr + col_offsets, mask=col_mask, other=0.0)
    if HAS_SHIFT:
        s_w = tl.load(shift_ptr + col_offsets, mask=col_mask, other=0.0)
    for r0 in range(0, H, BLOCK_H):
        r = r0 + tl.arange(0, BLOCK_H)
        offsets, mask, row_offsets, row_mask = _plane_rows(p, r, c, strip, planes, H, W)
        a_h = tl.load(gate_ptr + row_offsets, mask=row_mask, other=0.0)
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        out = v * a_h[:, :, None] * a_w[:, None, :]
        if HAS_SHIFT:
            out += tl.load(shift_ptr + row_offsets, mask=row_mask, other=0.0)[:, :, None] + s_w[:, None, :]
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _strip_geometry(H, W, norm_groups, BLOCK_L: tl.constexpr):
    """Batch, norm group, strip index, strip length and offset, and the lane index of a per-strip program."""
    b = tl.program_id(0) // norm_groups
    group = tl.program_id(0) % norm_groups
    s = tl.program_id(1)  # 0: the H strip (row means), 1: the W strip (column means)
    length = H + s * (W - H)
    return b, group, s, length, s * H, tl.arange(0, BLOCK_L)


@triton.jit
def _group_chunk(b, group, c0, per_group, lane, length, start, channels, strips, BLOCK_C: tl.constexpr):
    """Channels ``o`` of chunk ``c0`` of a norm group, their mask, and the offsets and mask of their strip tile."""
    o = group * per_group + c0 + tl.arange(0, BLOCK_C)
    o_mask = c0 + tl.arange(0, BLOCK_C) < per_group
    offsets = (b * channels + o).to(tl.int64)[:, None] * strips + start + lane[None, :]  # (BLOCK_C, BLOCK_L)
    return o, o_mask, offsets, o_mask[:, None] & (lane < length)[None, :]


@triton.jit
def _conv_taps(z_ptr, w_ptr, o, o_mask, b, lane, length, start, channels, cin, strips,
               K: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Grouped Conv1d (zero padding K // 2) of the strip at ``start`` for output channels ``o``: (BLOCK_C, BLOCK_L)."""
    first = (o // cin) * cin  # first input channel of each output channel's conv group
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    # taps outside, input channels inside: offsets and masks are built once per tap, the inner loop only steps
    # the pointers (this loop is instruction-bound, not memory-bound)
    for t in tl.static_range(K):
        pos = lane + t - K // 2
        mask = o_mask[:, None] & ((pos >= 0) & (pos < length))[None, :]
        z_ptrs = z_ptr + ((b * channels + first).to(tl.int64) * strips + start)[:, None] + pos[None, :]
        w_ptrs = w_ptr + o * (cin * K) + t
        for j in range(cin):
            w = tl.load(w_ptrs + j * K, mask=o_mask, other=0.0).to(ACC)
            acc += w[:, None] * tl.load(z_ptrs + j * strips, mask=mask, other=0.0)
    return acc


@triton.jit
def _gates_kernel(z_ptr, w_ptr, gamma_ptr, beta_ptr, conv_ptr, stats_ptr, gate_ptr, channels, H, W, cin,
                  norm_groups, eps, K: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_L: tl.constexpr):
    """Per (b, norm group, strip): conv1d, GroupNorm over (group channels x strip), sigmoid; keeps conv, mean, rstd."""
    b, group, s, length, start, lane = _strip_geometry(H, W, norm_groups, BLOCK_L)
    strips = H + W
    per_group = channels // norm_groups
    count = per_group * length
    total = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    for c0 in range(0, per_group, BLOCK_C):
        o, o_mask, offsets, mask = _group_chunk(b, group, c0, per_group, lane, length, start, channels, strips,
                                                BLOCK_C)
        conv = _conv_taps(z_ptr, w_ptr, o, o_mask, b, lane, length, start, channels, cin, strips, K, ACC, BLOCK_C,
                          BLOCK_L)
        tl.store(conv_ptr + offsets, conv, mask=mask)
        total += tl.where(mask, conv, 0.0)
    mean = tl.sum(tl.sum(total, axis=1), axis=0) / count
    tl.debug_barrier()  # the conv tiles written above are read back by other threads of this program
    # two-pass variance (as torch's GroupNorm): no cancellation when |mean| >> std
    squares = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    for c0 in range(0, per_group, BLOCK_C):
        o, o_mask, offsets, mask = _group_chunk(b, group, c0, per_group, lane, length, start, channels, strips,
                                                BLOCK_C)
        conv = tl.load(conv_ptr + offsets, mask=mask, other=0.0)
        squares += tl.where(mask, (conv - mean) * (conv - mean), 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(squares, axis=1), axis=0) / count + eps)
    stats = (tl.program_id(0) * 2 + s) * 2
    tl.store(stats_ptr + stats, mean)
    tl.store(stats_ptr + stats + 1, rstd)
    for c0 in range(0, per_group, BLOCK_C):
        o, o_mask, offsets, mask = _group_chunk(b, group, c0, per_group, lane, length, start, channels, strips,
                                                BLOCK_C)
        conv = tl.load(conv_ptr + offsets, mask=mask, other=0.0)
        gamma = tl.load(gamma_ptr + o, mask=o_mask, other=0.0).to(ACC)
        beta = tl.load(beta_ptr + o, mask=o_mask, other=0.0).to(ACC)
        normed = (conv - mean) * rstd * gamma[:, None] + beta[:, None]
        tl.store(gate_ptr + offsets, 1.0 / (1.0 + tl.exp(-normed)), mask=mask)


@triton.jit
def _normed_grad(grad_gate_ptr, gate_ptr, conv_ptr, gamma_ptr, offsets, mask, o, o_mask, mean, rstd,
                 ACC: tl.constexpr):
    """Sigmoid backward and GroupNorm's affine backward: (dL/dnormed, xhat, dL/dxhat) of one strip tile."""
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0)
    grad_normed = tl.load(grad_gate_ptr + offsets, mask=mask, other=0.0) * gate * (1.0 - gate)
    xhat = tl.where(mask, (tl.load(conv_ptr + offsets, mask=mask, other=0.0) - mean) * rstd, 0.0)
    gamma = tl.load(gamma_ptr + o, mask=o_mask, other=0.0).to(ACC)
    return grad_normed, xhat, grad_normed * gamma[:, None]


@triton.jit
def _gates_backward_kernel(grad_gate_ptr, gate_ptr, conv_ptr, stats_ptr, gamma_ptr, grad_conv_ptr, grad_gamma_ptr,
                           grad_beta_ptr, channels, H, W, norm_groups, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_L: tl.constexpr):
    """Per (b, norm group, strip): dL/dconv from dL/dgate, plus this strip's share of the GroupNorm gradients."""
    b, group, s, length, start, lane = _strip_geometry(H, W, norm_groups, BLOCK_L)
    strips = H + W
    per_group = channels // norm_groups
    count = per_group * length
    stats = (tl.program_id(0) * 2 + s) * 2
    mean = tl.load(stats_ptr + stats)
    rstd = tl.load(stats_ptr + stats + 1)
    sum_dxhat = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    sum_dxhat_xhat = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    for c0 in range(0, per_group, BLOCK_C):
        o, o_mask, offsets, mask = _group_chunk(b, group, c0, per_group, lane, length, start, channels, strips,
                                                BLOCK_C)
        grad_normed, xhat, grad_xhat = _normed_grad(grad_gate_ptr, gate_ptr, conv_ptr, gamma_ptr, offsets, mask, o,
                                                    o_mask, mean, rstd, ACC)
        tl.atomic_add(grad_gamma_ptr + o, tl.sum(grad_normed * xhat, axis=1), mask=o_mask)
        tl.atomic_add(grad_beta_ptr + o, tl.sum(grad_normed, axis=1), mask=o_mask)
        sum_dxhat += grad_xhat
        sum_dxhat_xhat += grad_xhat * xhat
    mean_dxhat = tl.sum(tl.sum(sum_dxhat, axis=1), axis=0) / count
    mean_dxhat_xhat = tl.sum(tl.sum(sum_dxhat_xhat, axis=1), axis=0) / count
    for c0 in range(0, per_group, BLOCK_C):
        o, o_mask, offsets, mask = _group_chunk(b, group, c0, per_group, lane, length, start, channels, strips,
                                                BLOCK_C)
        _, xhat, grad_xhat = _normed_grad(grad_gate_ptr, gate_ptr, conv_ptr, gamma_ptr, offsets, mask, o, o_mask,
                                          mean, rstd, ACC)
        grad_conv = tl.where(mask, rstd * (grad_xhat - mean_dxhat - xhat * mean_dxhat_xhat), 0.0)
        tl.store(grad_conv_ptr + offsets, grad_conv, mask=mask)


@triton.jit
def _conv_weight_grad_kernel(grad_conv_ptr, z_ptr, grad_w_ptr, channels, H, W, cin, batches_per_program,
                             K: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """dL/dweight[o, j, t]: sum over batches, strips and lanes of grad_conv[o, lane] * z[first(o) + j, lane + t - K//2].

    One program owns a (channel block, j, t) slice for a run of batches and accumulates elementwise, reducing and
    adding atomically once at the end (axis 2 of the grid splits the batch only to fill the GPU).
    """
    o = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    o_mask = o < channels
    j = tl.program_id(1) // K
    t = tl.program_id(1) % K
    first = (o // cin) * cin
    lane = tl.arange(0, BLOCK_L)
    strips = H + W
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    b0 = tl.program_id(2) * batches_per_program  # the launcher splits the batch evenly: no tail to mask
    for s in tl.static_range(2):
        length = H + s * (W - H)
        start = s * H
        pos = lane + t - K // 2
        grad_mask = o_mask[:, None] & (lane < length)[None, :]
        z_mask = o_mask[:, None] & ((pos >= 0) & (pos < length))[None, :]
        grad_ptrs = grad_conv_ptr + ((b0 * channels + o).to(tl.int64) * strips + start)[:, None] + lane[None, :]
        z_ptrs = z_ptr + ((b0 * channels + first + j).to(tl.int64) * strips + start)[:, None] + pos[None, :]
        for _ in range(batches_per_program):
            acc += tl.load(grad_ptrs, mask=grad_mask, other=0.0) * tl.load(z_ptrs, mask=z_mask, other=0.0)
            grad_ptrs += channels * strips
            z_ptrs += channels * strips
    tl.atomic_add(grad_w_ptr + (o * cin + j) * K + t, tl.sum(acc, axis=1), mask=o_mask)


@triton.jit
def _strip_input_grad_kernel(grad_conv_ptr, w_ptr, grad_z_ptr, channels, blocks, H, W, cin, K: tl.constexpr,
                             ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """dL/dx's strip term: Conv1d input gradient of each strip divided by the pooled length (mean backward)."""
    b = tl.program_id(0) // blocks
    i = (tl.program_id(0) % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.program_id(1)
    length = H + s * (W - H)
    pooled = W - s * (W - H)  # the H strip is a mean over W, the W strip over H
    start = s * H
    strips = H + W
    lane = tl.arange(0, BLOCK_L)
    i_mask = i < channels
    first = (i // cin) * cin
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    # the conv groups are square (cin output channels read cin input channels): output channel q of i's group is
    # first + q; taps outside, as in _conv_taps
    for t in tl.static_range(K):
        pos = lane - t + K // 2
        mask = i_mask[:, None] & ((pos >= 0) & (pos < length))[None, :]
        grad_ptrs = grad_conv_ptr + ((b * channels + first).to(tl.int64) * strips + start)[:, None] + pos[None, :]
        w_ptrs = w_ptr + (first * cin + i - first) * K + t
        for q in range(cin):
            w = tl.load(w_ptrs + q * (cin * K), mask=i_mask, other=0.0).to(ACC)
            acc += w[:, None] * tl.load(grad_ptrs + q * strips, mask=mask, other=0.0)
    tl.store(grad_z_ptr + (b * channels + i).to(tl.int64)[:, None] * strips + start + lane[None, :], acc / pooled,
             mask=i_mask[:, None] & (lane < length)[None, :])


# -------------------------------------------------------------------------------------------- launchers


def _plane_launch(x: Tensor) -> tuple[tuple[int], dict]:
    """Grid and tile sizes for the plane kernels: whole rows per tile, several small planes per program."""
    b, c, h, w = x.shape
    planes = b * c
    block_w = triton.next_power_of_2(w)
    block_h = max(1, min(triton.next_power_of_2(h), _PLANE_TILE // block_w))
    block_p = max(1, min(_PLANE_TILE // (block_h * block_w), triton.next_power_of_2(planes))) \
        if block_h >= h else 1
    meta = dict(planes=planes, H=h, W=w, ACC=accumulation_dtypes(x.dtype)[1], BLOCK_P=block_p, BLOCK_H=block_h,
                BLOCK_W=block_w, num_warps=8 if block_p * block_h * block_w >= 4096 else 4)
    return (triton.cdiv(planes, block_p),), meta


def _strip_blocks(x: Tensor, per_program: int) -> tuple[int, int]:
    """BLOCK_C x BLOCK_L strip tiles: whole strips (the longer of H and W), channels chunked to about 2K elements."""
    block_l = triton.next_power_of_2(max(x.shape[2], x.shape[3]))
    block_c = max(1, min(triton.next_power_of_2(per_program), _STRIP_TILE // block_l))
    return block_c, block_l


class _Gates:
    """Strip means, conv outputs, GroupNorm statistics and gates of one input (steps 1-2 of the module doc)."""

    def __init__(self, x: Tensor, weight: Tensor, norm_weight: Tensor, norm_bias: Tensor, groups: int,
                 norm_groups: int, eps: float) -> None:
        b, c, h, w = x.shape
        acc = accumulation_dtypes(x.dtype)[0]
        self.strip_shape = (b, c, h + w)
        self.z = torch.empty(self.strip_shape, dtype=acc, device=x.device)
        self.conv = torch.empty_like(self.z)
        self.gates = torch.empty_like(self.z)
        self.stats = torch.empty(b * norm_groups * 2 * 2, dtype=acc, device=x.device)
        grid, meta = _plane_launch(x)
        _strip_reduce_kernel[grid](x, x, x, self.z, IS_GRAD=False, **meta)
        block_c, block_l = _strip_blocks(x, c // norm_groups)
        self.strip_meta = dict(channels=c, H=h, W=w, cin=c // groups, K=weight.shape[-1],
                               ACC=accumulation_dtypes(x.dtype)[1], BLOCK_L=block_l)
        _gates_kernel[(b * norm_groups, 2)](self.z, weight, norm_weight, norm_bias, self.conv, self.stats,
                                            self.gates, norm_groups=norm_groups, eps=eps, BLOCK_C=block_c,
                                            **self.strip_meta)


def _like(x: Tensor, out: Tensor) -> Tensor:
    """``out`` (contiguous) in ``x``'s memory format, as the op's fake kernel (``empty_like(x)``) promises."""
    return out if x.is_contiguous() else torch.empty_like(x).copy_(out)


def ela_gate_forward(x: Tensor, weight: Tensor, norm_weight: Tensor, norm_bias: Tensor, groups: int,
                     norm_groups: int, eps: float) -> Tensor:
    """``x * a_h * a_w`` (see :func:`attnzoo.kernels.ela.ela_gate_reference`), in x's dtype."""
    xc = x.contiguous()
    weight, norm_weight, norm_bias = weight.contiguous(), norm_weight.contiguous(), norm_bias.contiguous()
    gates = _Gates(xc, weight, norm_weight, norm_bias, groups, norm_groups, eps)
    out = torch.empty_like(xc)
    grid, meta = _plane_launch(xc)
    _gate_apply_kernel[grid](xc, gates.gates, gates.gates, out, HAS_SHIFT=False, **meta)
    return _like(x, out)


def ela_gate_backward(grad_out: Tensor, x: Tensor, weight: Tensor, norm_weight: Tensor, norm_bias: Tensor,
                      groups: int, norm_groups: int, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (x, weight, norm_weight, norm_bias); the gates are recomputed from x (steps 1-7)."""
    xc, grad_out = x.contiguous(), grad_out.contiguous()
    weight, norm_weight, norm_bias = weight.contiguous(), norm_weight.contiguous(), norm_bias.contiguous()
    b, c, h, w = xc.shape
    gates = _Gates(xc, weight, norm_weight, norm_bias, groups, norm_groups, eps)
    grid, plane_meta = _plane_launch(xc)
    grad_gates = torch.empty_like(gates.z)
    _strip_reduce_kernel[grid](xc, grad_out, gates.gates, grad_gates, IS_GRAD=True, **plane_meta)
    # summed over batch and strips with atomics; separate buffers since the op's outputs may not alias
    grad_weight = torch.zeros(weight.shape, dtype=gates.z.dtype, device=x.device)
    grad_gamma = torch.zeros(c, dtype=gates.z.dtype, device=x.device)
    grad_beta = torch.zeros_like(grad_gamma)
    grad_conv = torch.empty_like(gates.z)
    meta = gates.strip_meta
    block_c, _ = _strip_blocks(xc, c // norm_groups)
    _gates_backward_kernel[(b * norm_groups, 2)](grad_gates, gates.gates, gates.conv, gates.stats, norm_weight,
                                                 grad_conv, grad_gamma, grad_beta, c, h, w, norm_groups,
                                                 ACC=meta["ACC"], BLOCK_C=block_c, BLOCK_L=meta["BLOCK_L"])
    block_c, _ = _strip_blocks(xc, c)
    blocks = triton.cdiv(c, block_c)
    taps = weight.shape[1] * weight.shape[2]
    # batches per program: the largest divisor of B that still leaves about _WEIGHT_GRAD_PROGRAMS programs
    target = triton.cdiv(b, triton.cdiv(_WEIGHT_GRAD_PROGRAMS, blocks * taps))
    per_program = max(d for d in range(1, target + 1) if b % d == 0)
    _conv_weight_grad_kernel[(blocks, taps, b // per_program)](grad_conv, gates.z, grad_weight,
                                                                batches_per_program=per_program, BLOCK_C=block_c,
                                                                **meta)
    grad_z = grad_gates  # dL/dgate is fully consumed above: reuse its buffer for the strip term of dL/dx
    _strip_input_grad_kernel[(b * blocks, 2)](grad_conv, weight, grad_z, blocks=blocks, BLOCK_C=block_c, **meta)
    grad_x = torch.empty_like(xc)
    _gate_apply_kernel[grid](grad_out, gates.gates, grad_z, grad_x, HAS_SHIFT=True, **plane_meta)
    return (_like(x, grad_x), grad_weight.to(weight.dtype), grad_gamma.to(norm_weight.dtype),
            grad_beta.to(norm_bias.dtype))
