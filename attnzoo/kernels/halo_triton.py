"""Triton kernels for halo attention (HaloNet blocked local self-attention), forward and backward.

"Scaling Local Self-Attention for Parameter Efficient Visual Backbones", Vaswani et al., CVPR 2021,
https://arxiv.org/abs/2103.12731. The op boundary, the layouts and the PyTorch reference live in
:mod:`attnzoo.kernels.halo`; this module holds only the kernels and their launchers.

One program owns the queries of one block (``BLOCK_Q`` of them; big blocks are split over a third grid axis) of one
(batch * head) map. It reads its queries and its ``win x win`` window straight from the image-layout maps (any
strides, nothing unfolded or padded in memory): window pixels outside the key map are loaded as zero keys and values,
which enter the softmax with logit = position term only (timm), or are excluded with ``MASK_PADDING``.

The window is laid out on a ``WINP x WINP`` grid (``WINP`` = next power of two >= max(win, 16)) and walked in chunks
of ``KH`` window rows, key ``j`` of a chunk being window pixel ``(kh0 + j // WINP, j % WINP)``; the forward runs an
online softmax over the chunks (one chunk for win <= 16, the usual case). The relative-position logits are
factorised: one small product ``A_h = q @ height_rel^T`` (all ``2 * win - 1`` table rows) per program, then a per-query
shift ``G_h[i, kh] = A_h[i, kh - qh_i + win - 1]`` (``tl.gather`` along the rows); likewise ``G_w``. They reach the
logits by broadcasting ``G_h[:, :, None] + G_w[:, None, :]`` over the chunk, so timm's skewed ``(bs^2, win^2)``
position tensors are never formed.

The backward recomputes the probabilities (a first pass over the chunks gives the log-sum-exp when the window takes
several chunks, since the op saves only the output) and applies flash attention's formulas: ``dV = P^T dO``,
``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ = scale * dS K + rel``, ``dK = scale * dS^T Q``. Windows of
neighbouring blocks overlap, so dK and dV go to the maps with relaxed ``tl.atomic_add`` into buffers in the
accumulation dtype. The position gradients are row and column sums of ``dS``, shifted back onto table rows (the
inverse gather); each program adds its (rows x dqk) table gradient once into one of ``SPLIT`` copies (summed by the
launcher) to keep atomics on the tiny tables from contending.

Accumulation is fp32 (fp64 for fp64 inputs, so gradcheck can run through the kernels). On a GPU, 16-bit inputs
feed the tensor cores directly (P and dS rounded to the input dtype, as flash attention does); under the
interpreter they are upcast and multiplied in TF32, which is exact for them. fp32 inputs use ``ieee`` products.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnzoo.kernels import _dispatch
from attnzoo.kernels._dispatch import accumulation_dtypes

__all__ = ["halo_attention_backward", "halo_attention_forward"]

# Copies of the relative-table gradient that programs add into (program id modulo SPLIT).
_REL_GRAD_SPLIT = 64
# (direction, fp32/fp64 inputs) -> (most logits, queries x keys, one program holds: sets BLOCK_Q; num_warps).
# 16-bit: on an H100 8 warps doubled the forward's time; in the backward 8 warps keep ptxas (sm_90, win 12, 64
# queries) to 64 bytes of spilled registers, against 480 with 4.
# fp32/fp64 multiply with FMAs ('ieee'), not tensor cores, and hold far more registers: with the 16-bit settings
# ptxas (benchmarks/kernels_compile.py) gave the fp32 kernels 11-17 KB of stack per thread at the halonet26t/50ts
# shapes; a quarter of the tile and 8 forward warps bring that to 0 (forward) and 168-176 bytes (backward);
# 64-channel heads (halonet26t's strided stage 4) still take 6 KB in the forward. Compile-time evidence only: not
# yet timed on a GPU.
_LAUNCH = {("forward", False): (16384, 4), ("backward", False): (16384, 8),
           ("forward", True): (4096, 8), ("backward", True): (4096, 8)}


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _block_queries(pid_blk, pid_q, nbw, hq, wq, QB: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Block grid position (bi, bj) and, for the program's queries, block-local (qh, qw), map (row, col), validity."""
    bi = pid_blk // nbw
    bj = pid_blk % nbw
    i = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qh = i // QB
    qw = i % QB
    row = bi * QB + qh
    col = bj * QB + qw
    valid = (i < QB * QB) & (row < hq) & (col < wq)
    return bi, bj, qh, qw, row, col, valid


@triton.jit
def _load_pixels(base, s_c, s_h, s_w, rows, cols, valid, chans, num_chans, DTYPE: tl.constexpr):
    """(pixels, channels) tile of an image-layout map, zero where ``valid`` is False or past ``num_chans``."""
    ptrs = base + chans[None, :] * s_c + rows[:, None] * s_h + cols[:, None] * s_w
    return tl.load(ptrs, mask=valid[:, None] & (chans[None, :] < num_chans), other=0.0).to(DTYPE)


@triton.jit
def _window_chunk(bi, bj, kh0, h, w, BLOCK: tl.constexpr, HALO: tl.constexpr, WIN: tl.constexpr,
                  WINP: tl.constexpr, KH: tl.constexpr, MASK_PADDING: tl.constexpr):
    """Key-map (row, col) of the chunk's keys, which lie inside the map, and which take part in the softmax."""
    j = tl.arange(0, KH * WINP)
    kh = kh0 + j // WINP
    kw = j % WINP
    ky = bi * BLOCK - HALO + kh
    kx = bj * BLOCK - HALO + kw
    in_win = (kh < WIN) & (kw < WIN)
    in_map = in_win & (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
    if MASK_PADDING:
        key_ok = in_map
    else:
        key_ok = in_win
    return ky, kx, in_map, key_ok


@triton.jit
def _table_products(q, table_ptr, chans, dqk, RP: tl.constexpr, WIN: tl.constexpr, PREC: tl.constexpr,
                    DOT: tl.constexpr):
    """``q @ table^T``: every query against every row of a relative table, (BLOCK_Q, RP), zero past the table."""
    rows = tl.arange(0, RP)
    table = tl.load(table_ptr + rows[None, :] * dqk + chans[:, None],
                    mask=(chans[:, None] < dqk) & (rows[None, :] < 2 * WIN - 1), other=0.0).to(DOT)  # (D, RP)
    return tl.dot(q, table, input_precision=PREC)


@triton.jit
def _rows_to_window(a, local, first, NUM: tl.constexpr, WIN: tl.constexpr):
    """``G[i, c] = a[i, first + c - local_i + WIN - 1]`` for window coordinates first + c < WIN, else 0.

    ``local`` is each query's block-local row (height table) or column (width table): a per-row shift of the
    products, i.e. a gather along the rows of ``a``.
    """
    c = first + tl.arange(0, NUM)
    index = c[None, :] + WIN - 1 - local[:, None]  # (BLOCK_Q, NUM), in [0, 2 * WIN - 1) where c < WIN
    inside = (c[None, :] < WIN) & (index >= 0)
    g = tl.gather(a, tl.minimum(tl.maximum(index, 0), a.shape[1] - 1), 1)
    return tl.where(inside, g, 0.0)


@triton.jit
def _window_to_rows(g, local, first, RP: tl.constexpr, WIN: tl.constexpr):
    """Adjoint of :func:`_rows_to_window`: ``M[i, first + c - local_i + WIN - 1] = g[i, c]``, M (BLOCK_Q, RP).

    The shift is one-to-one for each query, so the scatter is again a gather: ``M[i, r] = g[i, r - first -
    WIN + 1 + local_i]`` where that column exists.
    """
    r = tl.arange(0, RP)
    index = r[None, :] - first - WIN + 1 + local[:, None]  # (BLOCK_Q, RP)
    inside = (index >= 0) & (index < g.shape[1])
    m = tl.gather(g, tl.minimum(tl.maximum(index, 0), g.shape[1] - 1), 1)
    return tl.where(inside, m, 0.0)


@triton.jit
def _logits(q, k, a_h, g_w, qh, kh0, key_ok, scale, rel_scale, WIN: tl.constexpr, WINP: tl.constexpr,
            KH: tl.constexpr, PREC: tl.constexpr):
    """``scale * q.k + rel_scale * (G_h + G_w)`` for one chunk of keys, -inf where a key takes no part."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # (BLOCK_Q, KH * WINP)
    g_h = _rows_to_window(a_h, qh, kh0, KH, WIN)  # (BLOCK_Q, KH)
    rel = tl.reshape(g_h[:, :, None] + g_w[:, None, :], (q.shape[0], KH * WINP))
    s = s * scale + rel * rel_scale
    return tl.where(key_ok[None, :], s, float("-inf"))


@triton.jit
def _halo_fwd_kernel(q_ptr, k_ptr, v_ptr, rh_ptr, rw_ptr, out_ptr,
                     sq_b, sq_c, sq_h, sq_w, sk_b, sk_c, sk_h, sk_w, sv_b, sv_c, sv_h, sv_w,
                     so_b, so_c, so_h, so_w, h, w, hq, wq, nbw, dqk, dv, scale, rel_scale,
                     BLOCK: tl.constexpr, HALO: tl.constexpr, QB: tl.constexpr, WIN: tl.constexpr,
                     WINP: tl.constexpr, KH: tl.constexpr, RP: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, MASK_PADDING: tl.constexpr,
                     PREC: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr):
    pid_bh = tl.program_id(0).to(tl.int64)
    bi, bj, qh, qw, row, col, valid = _block_queries(tl.program_id(1), tl.program_id(2), nbw, hq, wq, QB, BLOCK_Q)
    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    q = _load_pixels(q_ptr + pid_bh * sq_b, sq_c, sq_h, sq_w, row, col, valid, cq, dqk, DOT)  # (BLOCK_Q, DQK)
    a_h = _table_products(q, rh_ptr, cq, dqk, RP, WIN, PREC, DOT)  # (BLOCK_Q, RP)
    g_w = _rows_to_window(_table_products(q, rw_ptr, cq, dqk, RP, WIN, PREC, DOT), qw, 0, WINP, WIN)  # every chunk's
    m = tl.full((BLOCK_Q,), -1.0e30, dtype=ACC)  # finite: a chunk whose keys are all masked must not give NaN
    denom = tl.zeros((BLOCK_Q,), dtype=ACC)
    acc = tl.zeros((BLOCK_Q, BLOCK_DV), dtype=ACC)
    for kh0 in range(0, WIN, KH):
        ky, kx, in_map, key_ok = _window_chunk(bi, bj, kh0, h, w, BLOCK, HALO, WIN, WINP, KH, MASK_PADDING)
        k = _load_pixels(k_ptr + pid_bh * sk_b, sk_c, sk_h, sk_w, ky, kx, in_map, cq, dqk, DOT)  # (KN, DQK)
        v = _load_pixels(v_ptr + pid_bh * sv_b, sv_c, sv_h, sv_w, ky, kx, in_map, cv, dv, DOT)  # (KN, DV)
        s = _logits(q, k, a_h, g_w, qh, kh0, key_ok, scale, rel_scale, WIN, WINP, KH, PREC)
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        denom = denom * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), v, input_precision=PREC)
        m = m_new
    out = acc / denom[:, None]
    ptrs = out_ptr + pid_bh * so_b + cv[None, :] * so_c + row[:, None] * so_h + col[:, None] * so_w
    tl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=valid[:, None] & (cv[None, :] < dv))


@triton.jit
def _halo_bwd_kernel(q_ptr, k_ptr, v_ptr, rh_ptr, rw_ptr, out_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, drel_ptr,
                     sq_b, sq_c, sq_h, sq_w, sk_b, sk_c, sk_h, sk_w, sv_b, sv_c, sv_h, sv_w,
                     so_b, so_c, so_h, so_w, sd_b, sd_c, sd_h, sd_w, h, w, hq, wq, nbw, nb, dqk, dv, scale, rel_scale,
                     BLOCK: tl.constexpr, HALO: tl.constexpr, QB: tl.constexpr, WIN: tl.constexpr,
                     WINP: tl.constexpr, KH: tl.constexpr, RP: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, SPLIT: tl.constexpr,
                     MASK_PADDING: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr):
    pid_bh = tl.program_id(0).to(tl.int64)
    bi, bj, qh, qw, row, col, valid = _block_queries(tl.program_id(1), tl.program_id(2), nbw, hq, wq, QB, BLOCK_Q)
    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    q = _load_pixels(q_ptr + pid_bh * sq_b, sq_c, sq_h, sq_w, row, col, valid, cq, dqk, DOT)
    # invalid (padding) queries load dO = O = 0, so their dS rows vanish and they add nothing to dK, dV or the tables
    do = _load_pixels(do_ptr + pid_bh * sd_b, sd_c, sd_h, sd_w, row, col, valid, cv, dv, DOT)  # (BLOCK_Q, DV)
    o = _load_pixels(out_ptr + pid_bh * so_b, so_c, so_h, so_w, row, col, valid, cv, dv, ACC)
    delta = tl.sum(do.to(ACC) * o, 1)
    a_h = _table_products(q, rh_ptr, cq, dqk, RP, WIN, PREC, DOT)
    g_w = _rows_to_window(_table_products(q, rw_ptr, cq, dqk, RP, WIN, PREC, DOT), qw, 0, WINP, WIN)
    k_base = k_ptr + pid_bh * sk_b
    v_base = v_ptr + pid_bh * sv_b

    lse = tl.zeros((BLOCK_Q,), dtype=ACC)
    if WIN > KH:  # several chunks: a first pass for the log-sum-exp (one chunk: it comes with the logits below)
        m = tl.full((BLOCK_Q,), -1.0e30, dtype=ACC)
        denom = tl.zeros((BLOCK_Q,), dtype=ACC)
        for kh0 in range(0, WIN, KH):
            ky, kx, in_map, key_ok = _window_chunk(bi, bj, kh0, h, w, BLOCK, HALO, WIN, WINP, KH, MASK_PADDING)
            k = _load_pixels(k_base, sk_c, sk_h, sk_w, ky, kx, in_map, cq, dqk, DOT)
            s = _logits(q, k, a_h, g_w, qh, kh0, key_ok, scale, rel_scale, WIN, WINP, KH, PREC)
            m_new = tl.maximum(m, tl.max(s, 1))
            denom = denom * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
            m = m_new
        lse = m + tl.log(denom)

    hw = h * w
    dk_base = dk_ptr + pid_bh * dqk * hw
    dv_base = dv_ptr + pid_bh * dv * hw
    dq = tl.zeros((BLOCK_Q, BLOCK_DQK), dtype=ACC)
    grad_gw = tl.zeros((BLOCK_Q, WINP), dtype=ACC)
    grad_rows_h = tl.zeros((BLOCK_Q, RP), dtype=ACC)
    for kh0 in range(0, WIN, KH):
        ky, kx, in_map, key_ok = _window_chunk(bi, bj, kh0, h, w, BLOCK, HALO, WIN, WINP, KH, MASK_PADDING)
        k = _load_pixels(k_base, sk_c, sk_h, sk_w, ky, kx, in_map, cq, dqk, DOT)
        v = _load_pixels(v_base, sv_c, sv_h, sv_w, ky, kx, in_map, cv, dv, DOT)
        s = _logits(q, k, a_h, g_w, qh, kh0, key_ok, scale, rel_scale, WIN, WINP, KH, PREC)
        if WIN <= KH:
            row_max = tl.max(s, 1)
            lse = row_max + tl.log(tl.sum(tl.exp(s - row_max[:, None]), 1))
        p = tl.exp(s - lse[:, None])  # (BLOCK_Q, KN)
        grad_v = tl.dot(tl.trans(p).to(DOT), do, input_precision=PREC)  # (KN, DV)
        pix = ky * w + kx
        tl.atomic_add(dv_base + cv[None, :] * hw + pix[:, None], grad_v,
                      mask=in_map[:, None] & (cv[None, :] < dv), sem="relaxed")
        ds = (p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])).to(DOT)
        dq += tl.dot(ds, k, input_precision=PREC)
        grad_k = tl.dot(tl.trans(ds), q, input_precision=PREC) * scale  # (KN, DQK)
        tl.atomic_add(dk_base + cq[None, :] * hw + pix[:, None], grad_k,
                      mask=in_map[:, None] & (cq[None, :] < dqk), sem="relaxed")
        # sums of dS over each window row / column, as products with 0/1 matrices: a (BLOCK_Q, KH, WINP) reshape
        # of dS costs the backward hundreds of spilled registers
        j = tl.arange(0, KH * WINP)
        grad_gh = tl.dot(ds, (j[:, None] // WINP == tl.arange(0, KH)[None, :]).to(DOT), input_precision=PREC)
        grad_rows_h += _window_to_rows(grad_gh, qh, kh0, RP, WIN)
        grad_gw += tl.dot(ds, (j[:, None] % WINP == tl.arange(0, WINP)[None, :]).to(DOT), input_precision=PREC)
    grad_rows_w = _window_to_rows(grad_gw, qw, 0, RP, WIN)

    r = tl.arange(0, RP)
    table_mask = (r[:, None] < 2 * WIN - 1) & (cq[None, :] < dqk)
    table_offs = r[:, None] * dqk + cq[None, :]
    rh = tl.load(rh_ptr + table_offs, mask=table_mask, other=0.0).to(DOT)  # (RP, DQK)
    rw = tl.load(rw_ptr + table_offs, mask=table_mask, other=0.0).to(DOT)
    dq = dq * scale + (tl.dot(grad_rows_h.to(DOT), rh, input_precision=PREC)
                       + tl.dot(grad_rows_w.to(DOT), rw, input_precision=PREC)) * rel_scale
    ptrs = dq_ptr + pid_bh * dqk * hq * wq + cq[None, :] * hq * wq + row[:, None] * wq + col[:, None]
    tl.store(ptrs, dq.to(dq_ptr.dtype.element_ty), mask=valid[:, None] & (cq[None, :] < dqk))

    program = (pid_bh * nb + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
    drel = drel_ptr + (program % SPLIT) * RP * dqk + table_offs
    grad_h = tl.dot(tl.trans(grad_rows_h).to(DOT), q, input_precision=PREC) * rel_scale  # (RP, DQK)
    tl.atomic_add(drel, grad_h, mask=table_mask, sem="relaxed")
    grad_w = tl.dot(tl.trans(grad_rows_w).to(DOT), q, input_precision=PREC) * rel_scale
    tl.atomic_add(drel + SPLIT * RP * dqk, grad_w, mask=table_mask, sem="relaxed")


# -------------------------------------------------------------------------------------------- launchers


def _config(q: Tensor, k: Tensor, v: Tensor, block_size: int, halo_size: int, stride: int,
            mask_padding: bool, direction: str) -> tuple[tuple[int, int, int], dict, dict]:
    """Grid, shared scalar arguments and compile-time constants (num_warps included) of ``direction``'s kernel."""
    high = q.dtype in (torch.float32, torch.float64)
    tile, num_warps = _LAUNCH[direction, high]
    bh, dqk, h, w = k.shape
    win = block_size + 2 * halo_size
    qb = block_size // stride
    winp = max(16, triton.next_power_of_2(win))
    kh = 16  # window rows per chunk: tl.dot wants every dimension >= 16
    block_q = min(max(16, triton.next_power_of_2(qb * qb)), max(16, tile // (kh * winp)))
    nbh, nbw = math.ceil(h / block_size), math.ceil(w / block_size)
    grid = (bh, nbh * nbw, triton.cdiv(qb * qb, block_q))
    acc = accumulation_dtypes(q.dtype)[1]
    # 16-bit operands go to the tensor cores as they are (P and dS rounded to them, as flash attention does); the
    # interpreter mis-multiplies bf16, so there they are upcast and multiplied in TF32, which is exact for them.
    native = not high and not _dispatch.triton_interpreting()
    dot = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[q.dtype] if native else acc
    scalars = dict(h=h, w=w, hq=q.shape[2], wq=q.shape[3], nbw=nbw, dqk=dqk, dv=v.shape[1])
    consts = dict(BLOCK=block_size, HALO=halo_size, QB=qb, WIN=win, WINP=winp, KH=kh, BLOCK_Q=block_q,
                  RP=max(16, triton.next_power_of_2(2 * win - 1)),
                  BLOCK_DQK=max(16, triton.next_power_of_2(dqk)), BLOCK_DV=max(16, triton.next_power_of_2(v.shape[1])),
                  MASK_PADDING=mask_padding, PREC="ieee" if high else "tf32", DOT=dot, ACC=acc,
                  num_warps=num_warps)
    return grid, scalars, consts


def _scales(scale: float, scale_pos_embed: bool) -> dict:
    return dict(scale=scale, rel_scale=scale if scale_pos_embed else 1.0)


def halo_attention_forward(q: Tensor, k: Tensor, v: Tensor, height_rel: Tensor, width_rel: Tensor,
                           block_size: int, halo_size: int, stride: int, scale: float, scale_pos_embed: bool,
                           mask_padding: bool) -> Tensor:
    """Halo attention output, (BH, dv, Hq, Wq) in q's dtype; arguments and layouts as :mod:`attnzoo.kernels.halo`."""
    grid, scalars, consts = _config(q, k, v, block_size, halo_size, stride, mask_padding, "forward")
    out = q.new_empty(q.shape[0], v.shape[1], q.shape[2], q.shape[3])
    _halo_fwd_kernel[grid](q, k, v, height_rel.contiguous(), width_rel.contiguous(), out, *q.stride(), *k.stride(),
                           *v.stride(), *out.stride(), **scalars, **_scales(scale, scale_pos_embed), **consts)
    return out


def halo_attention_backward(grad_out: Tensor, out: Tensor, q: Tensor, k: Tensor, v: Tensor, height_rel: Tensor,
                            width_rel: Tensor, block_size: int, halo_size: int, stride: int, scale: float,
                            scale_pos_embed: bool, mask_padding: bool) -> tuple[Tensor, ...]:
    """Gradients (q, k, v, height_rel, width_rel), each in its input's dtype and shape."""
    grid, scalars, consts = _config(q, k, v, block_size, halo_size, stride, mask_padding, "backward")
    acc = accumulation_dtypes(q.dtype)[0]
    split = min(_REL_GRAD_SPLIT, math.prod(grid))
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grad_k = torch.zeros(k.shape, dtype=acc, device=q.device)
    grad_v = torch.zeros(v.shape, dtype=acc, device=q.device)
    # (height | width, copy, table row, channel)
    grad_rel = torch.zeros(2, split, consts["RP"], k.shape[1], dtype=acc, device=q.device)
    _halo_bwd_kernel[grid](q, k, v, height_rel.contiguous(), width_rel.contiguous(), out, grad_out, grad_q, grad_k,
                           grad_v, grad_rel, *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(),
                           nb=grid[1], **scalars, **_scales(scale, scale_pos_embed), **consts, SPLIT=split)
    # summed one table at a time: the op's outputs must not be views of one tensor
    grad_height, grad_width = (g.sum(0)[:height_rel.shape[0]].to(height_rel.dtype) for g in grad_rel)
    return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), grad_height, grad_width
