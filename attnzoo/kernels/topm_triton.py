"""Triton kernels for top-m attention over gathered candidates and for the blocked exact top-m (k-NN) search.

TANGNN ("TANGNN: a Concise, Scalable and Effective Graph Neural Networks with Top-m Attention Mechanism for Graph
Representation Learning", https://arxiv.org/abs/2411.15458). The op boundary, the layouts and the PyTorch references
live in :mod:`attnzoo.kernels.topm`; this module holds only the kernels and their launchers.

Attention. A program owns ``BLOCK_N`` queries with all their heads and walks their m candidate slots: each slot is
one gathered ``H x D`` key row and ``H x C`` value row per query (the index is read once for all heads, and a row is
one contiguous read), so the logits are per-head row dot products (no tile is shared between queries, hence no
``tl.dot``). The softmax is the online (running max / running sum) one of flash attention, in fp32; an empty slot
(index -1) is excluded and an all-empty row gives 0, as in the reference. The backward recomputes the logits twice
(the op saves no log-sum-exp): the first pass yields the row max, the sum and ``delta = sum_r p_r (dO·v_r)``, the
second writes ``dQ`` and scatters ``dK``, ``dV`` with relaxed ``tl.atomic_add`` into fp32 buffers (fp64 for fp64
inputs, so gradcheck can run through the kernels), because one candidate serves many queries. When all queries of
the block share the candidate of a slot ('aux' mode: one candidate set per graph) the block first sums its rows and
adds once, which keeps atomics on a handful of hot rows from serialising.

k-NN. A program owns ``BLOCK_Q`` queries and visits only the key range that holds the keys of their graphs (first
and last key of every graph, computed by the launcher without a host sync, so keys need not be sorted). Each
``BLOCK_Q x BLOCK_K`` score tile is a ``tl.dot`` (fp32 ``ieee`` products for fp32 inputs so the choice matches the
fp32 reference; 16-bit inputs go to the tensor cores natively on a GPU, exact products with fp32 accumulation, and
are upcast under the interpreter, which mis-multiplies bf16). Keys of other graphs score -inf. The running top-m of
each query lives in registers; a tile is merged by repeated max extraction, as many rounds as the most tile entries
any query of the block has above its current m-th best (usually a few after the first tiles). Ties go to the lower
key index (the reference's ``torch.topk`` leaves their order unspecified); the result is sorted best first, and a
slot the graph cannot fill (fewer keys than m) is -1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnzoo.kernels import _dispatch
from attnzoo.kernels._dispatch import accumulation_dtypes

__all__ = ["topm_attention_backward", "topm_attention_forward", "topm_knn"]

# A top-m attention program holds (queries x heads x channels) tiles of at most this many elements, with at most
# _ATTN_MAX_BLOCK_N queries. Sized with ptxas for sm_90 at 4 heads of 16 (bf16, 4 warps): the largest tiles that
# do not spill registers (the forward holds q, k, v and the accumulator; the backward also g, dq and two products).
_ATTN_TILE = {"forward": 2048, "backward": 1024}
_ATTN_MAX_BLOCK_N = 128
_ATTN_NUM_WARPS = 4
# k-NN tiles (queries x keys) on a GPU; under the interpreter smaller tiles keep the tests quick and still cross
# several key blocks.
_KNN_TILE = {"gpu": (64, 64), "interpreter": (16, 16)}
# 8 warps hold a 64 x 64 score tile and the running top-16 without spilling (ptxas, sm_90; 4 warps spill in fp32).
_KNN_NUM_WARPS = 8
# Up to _KNN_ONE_CHUNK_F features the queries stay in registers (one score product per key tile); wider features
# go in chunks of _KNN_CHUNK_F (wider chunks spill registers, ptxas sm_90).
_KNN_ONE_CHUNK_F = 128
_KNN_CHUNK_F = 64


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _offsets(rows64, s_n, s_h, s_x, hh, x):
    """Offsets of a (rows, heads, channels) tile of an [N, H, X] tensor with strides (s_n, s_h, s_x)."""
    return rows64[:, None, None] * s_n + hh[None, :, None] * s_h + x[None, None, :] * s_x


@triton.jit
def _slot(idx_ptr, k_ptr, v_ptr, q, rows64, nmask, r, m, s_kn, s_kh, s_kd, s_vn, s_vh, s_vc, hh, d, c, hd_mask,
          hc_mask, scale, ACC: tl.constexpr):
    """Candidate slot r of the block: key indices, validity, (rows, heads, D) keys, (rows, heads, C) values and
    (rows, heads) masked logits."""
    idx = tl.load(idx_ptr + rows64 * m + r, mask=nmask, other=-1)
    valid = idx >= 0
    safe = tl.where(valid, idx, 0)
    k = tl.load(k_ptr + _offsets(safe, s_kn, s_kh, s_kd, hh, d), mask=valid[:, None, None] & hd_mask[None, :, :],
                other=0.0).to(ACC)
    v = tl.load(v_ptr + _offsets(safe, s_vn, s_vh, s_vc, hh, c), mask=valid[:, None, None] & hc_mask[None, :, :],
                other=0.0).to(ACC)
    s = tl.where(valid[:, None], tl.sum(q * k, 2) * scale, float("-inf"))
    return idx, valid, safe, k, v, s


@triton.jit
def _finite_max(m_i):
    return tl.where(m_i == float("-inf"), 0.0, m_i)


@triton.jit
def _online_step(m_i, s, valid):
    """New running max, the factor that rescales what was summed so far, and this slot's unnormalised weight."""
    m_new = tl.maximum(m_i, s)
    # While nothing is valid (max -inf) subtract 0 instead: exp(-inf - -inf) would be nan.
    shift = _finite_max(m_new)
    alpha = tl.exp(m_i - shift)
    p = tl.where(valid[:, None], tl.exp(s - shift), 0.0)
    return m_new, alpha, p


@triton.jit
def _block(q_ptr, s_qn, s_qh, s_qd, num_q, num_heads, head_dim, val_dim, BLOCK_N: tl.constexpr,
           BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """The program's query rows (int64), their mask, the head/channel ranges, the (heads, D) / (heads, C) masks and
    the (rows, heads, D) queries."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    hh = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    c = tl.arange(0, BLOCK_C)
    hd_mask = (hh[:, None] < num_heads) & (d[None, :] < head_dim)
    hc_mask = (hh[:, None] < num_heads) & (c[None, :] < val_dim)
    rows64, nmask = rows.to(tl.int64), rows < num_q
    q = tl.load(q_ptr + _offsets(rows64, s_qn, s_qh, s_qd, hh, d), mask=nmask[:, None, None] & hd_mask[None, :, :],
                other=0.0).to(ACC)
    return rows64, nmask, hh, d, c, hd_mask, hc_mask, q


@triton.jit
def _topm_attn_fwd_kernel(q_ptr, k_ptr, v_ptr, idx_ptr, out_ptr, num_q, m, scale,
                          s_qn, s_qh, s_qd, s_kn, s_kh, s_kd, s_vn, s_vh, s_vc, s_on, s_oh, s_oc,
                          num_heads, head_dim, val_dim, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    rows64, nmask, hh, d, c, hd_mask, hc_mask, q = _block(q_ptr, s_qn, s_qh, s_qd, num_q, num_heads, head_dim,
                                                          val_dim, BLOCK_N, BLOCK_H, BLOCK_D, BLOCK_C, ACC)
    m_i = tl.full([BLOCK_N, BLOCK_H], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_N, BLOCK_H], ACC)
    acc = tl.zeros([BLOCK_N, BLOCK_H, BLOCK_C], ACC)
    for r in range(0, m):
        idx, valid, safe, k, v, s = _slot(idx_ptr, k_ptr, v_ptr, q, rows64, nmask, r, m, s_kn, s_kh, s_kd, s_vn,
                                          s_vh, s_vc, hh, d, c, hd_mask, hc_mask, scale, ACC)
        m_i, alpha, p = _online_step(m_i, s, valid)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, :, None] + p[:, :, None] * v
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, :, None]  # an all-empty row has acc = 0: output 0
    tl.store(out_ptr + _offsets(rows64, s_on, s_oh, s_oc, hh, c), out.to(out_ptr.dtype.element_ty),
             mask=nmask[:, None, None] & hc_mask[None, :, :])


@triton.jit
def _topm_attn_bwd_kernel(g_ptr, q_ptr, k_ptr, v_ptr, idx_ptr, dq_ptr, dk_ptr, dv_ptr, num_q, m, scale,
                          s_gn, s_gh, s_gc, s_qn, s_qh, s_qd, s_kn, s_kh, s_kd, s_vn, s_vh, s_vc,
                          num_heads, head_dim, val_dim, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    rows64, nmask, hh, d, c, hd_mask, hc_mask, q = _block(q_ptr, s_qn, s_qh, s_qd, num_q, num_heads, head_dim,
                                                          val_dim, BLOCK_N, BLOCK_H, BLOCK_D, BLOCK_C, ACC)
    g = tl.load(g_ptr + _offsets(rows64, s_gn, s_gh, s_gc, hh, c), mask=nmask[:, None, None] & hc_mask[None, :, :],
                other=0.0).to(ACC)
    # Pass 1: softmax statistics and delta = sum_r p_r (dO . v_r), the softmax backward's row term.
    m_i = tl.full([BLOCK_N, BLOCK_H], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_N, BLOCK_H], ACC)
    dsum = tl.zeros([BLOCK_N, BLOCK_H], ACC)
    for r in range(0, m):
        idx, valid, safe, k, v, s = _slot(idx_ptr, k_ptr, v_ptr, q, rows64, nmask, r, m, s_kn, s_kh, s_kd, s_vn,
                                          s_vh, s_vc, hh, d, c, hd_mask, hc_mask, scale, ACC)
        m_i, alpha, p = _online_step(m_i, s, valid)
        l_i = l_i * alpha + p
        dsum = dsum * alpha + p * tl.sum(g * v, 2)
    inv_l = 1.0 / tl.where(l_i > 0, l_i, 1.0)  # an all-empty row has p = 0 everywhere: any finite value does
    delta = dsum * inv_l
    shift = _finite_max(m_i)
    # Pass 2: exact weights, dQ in registers, dK and dV scattered onto the candidate rows of the contiguous
    # [S, H, D] / [S, H, C] buffers.
    dq = tl.zeros([BLOCK_N, BLOCK_H, BLOCK_D], ACC)
    for r in range(0, m):
        idx, valid, safe, k, v, s = _slot(idx_ptr, k_ptr, v_ptr, q, rows64, nmask, r, m, s_kn, s_kh, s_kd, s_vn,
                                          s_vh, s_vc, hh, d, c, hd_mask, hc_mask, scale, ACC)
        p = tl.where(valid[:, None], tl.exp(s - shift) * inv_l, 0.0)
        ds = p * (tl.sum(g * v, 2) - delta) * scale
        dq += ds[:, :, None] * k
        grad_k = ds[:, :, None] * q
        grad_v = p[:, :, None] * g
        first = tl.min(tl.where(nmask, idx, 2147483647), 0)
        last = tl.max(tl.where(nmask, idx, -1), 0)
        if first == last:
            row = first.to(tl.int64) * num_heads + hh[:, None]
            tl.atomic_add(dk_ptr + row * head_dim + d[None, :], tl.sum(grad_k, 0), mask=hd_mask & (first >= 0),
                          sem="relaxed")
            tl.atomic_add(dv_ptr + row * val_dim + c[None, :], tl.sum(grad_v, 0), mask=hc_mask & (first >= 0),
                          sem="relaxed")
        else:
            tl.atomic_add(dk_ptr + _offsets(safe.to(tl.int64), num_heads * head_dim, head_dim, 1, hh, d), grad_k,
                          mask=valid[:, None, None] & hd_mask[None, :, :], sem="relaxed")
            tl.atomic_add(dv_ptr + _offsets(safe.to(tl.int64), num_heads * val_dim, val_dim, 1, hh, c), grad_v,
                          mask=valid[:, None, None] & hc_mask[None, :, :], sem="relaxed")
    tl.store(dq_ptr + _offsets(rows64, num_heads * head_dim, head_dim, 1, hh, d), dq.to(dq_ptr.dtype.element_ty),
             mask=nmask[:, None, None] & hd_mask[None, :, :])


@triton.jit
def _topm_knn_kernel(q_ptr, k_ptr, bq_ptr, bk_ptr, first_ptr, last_ptr, out_ptr, num_q, num_k, feat, m,
                     s_qn, s_qf, s_kn, s_kf, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr,
                     BLOCK_M: tl.constexpr, ONE_CHUNK: tl.constexpr, DOT: tl.constexpr, DOT_ACC: tl.constexpr,
                     PREC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = rows < num_q
    rows64 = rows.to(tl.int64)
    bq = tl.load(bq_ptr + rows, mask=qmask, other=0)
    # The keys of every graph in the block lie in [first, last) of that graph; other keys in the range score -inf.
    lo = tl.min(tl.where(qmask, tl.load(first_ptr + bq, mask=qmask, other=0), num_k), 0)
    hi = tl.max(tl.where(qmask, tl.load(last_ptr + bq, mask=qmask, other=0), 0), 0)
    slots = tl.arange(0, BLOCK_M)
    slot_ok = slots[None, :] < m
    best_val = tl.full([BLOCK_Q, BLOCK_M], float("-inf"), DOT_ACC)
    # Empty slots hold distinct negative indices, so that "the worst slot" below is always exactly one slot.
    best_idx = tl.zeros([BLOCK_Q, BLOCK_M], tl.int32) - 1 - slots[None, :]
    f = tl.arange(0, BLOCK_F)
    # With one feature chunk (ONE_CHUNK) the queries stay in registers for the whole key loop.
    q_first = tl.load(q_ptr + rows64[:, None] * s_qn + f[None, :] * s_qf,
                      mask=qmask[:, None] & (f < feat)[None, :], other=0.0).to(DOT)
    for k0 in range(lo, hi, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        kmask = cols < hi
        cols64 = cols.to(tl.int64)
        if ONE_CHUNK:
            kt = tl.load(k_ptr + cols64[None, :] * s_kn + f[:, None] * s_kf,
                         mask=kmask[None, :] & (f < feat)[:, None], other=0.0).to(DOT)  # (BLOCK_F, BLOCK_K)
            s = tl.dot(q_first, kt, input_precision=PREC, out_dtype=DOT_ACC)
        else:
            s = tl.zeros([BLOCK_Q, BLOCK_K], DOT_ACC)
            for f0 in range(0, feat, BLOCK_F):
                fmask = (f0 + f) < feat
                qt = tl.load(q_ptr + rows64[:, None] * s_qn + (f0 + f)[None, :] * s_qf,
                             mask=qmask[:, None] & fmask[None, :], other=0.0).to(DOT)
                kt = tl.load(k_ptr + cols64[None, :] * s_kn + (f0 + f)[:, None] * s_kf,
                             mask=kmask[None, :] & fmask[:, None], other=0.0).to(DOT)
                s += tl.dot(qt, kt, input_precision=PREC, out_dtype=DOT_ACC)
        bk = tl.load(bk_ptr + cols, mask=kmask, other=-1)
        s = tl.where((bq[:, None] == bk[None, :]) & kmask[None, :] & qmask[:, None], s, float("-inf"))
        worst = tl.min(tl.where(slot_ok, best_val, float("inf")), 1)
        rounds = tl.minimum(tl.max(tl.sum((s > worst[:, None]).to(tl.int32), 1), 0), m)
        for _ in range(0, rounds):
            top = tl.max(s, 1)
            pos = tl.min(tl.where(s == top[:, None], cols[None, :], 2147483647), 1)  # lowest key among the maxima
            worst = tl.min(tl.where(slot_ok, best_val, float("inf")), 1)
            # Of the slots tied at the worst score the highest key index goes, so ties keep the lower index.
            at_worst = slot_ok & (best_val == worst[:, None])
            evict = tl.max(tl.where(at_worst, best_idx, -2147483647), 1)
            replace = (top > worst)[:, None] & at_worst & (best_idx == evict[:, None])
            best_val = tl.where(replace, top[:, None], best_val)
            best_idx = tl.where(replace, pos[:, None], best_idx)
            s = tl.where(cols[None, :] == pos[:, None], float("-inf"), s)
    # Best first; among equal scores the lower key index first.
    left = slot_ok & (best_idx >= 0)
    for t in range(0, m):
        top = tl.max(tl.where(left, best_val, float("-inf")), 1)
        tie = left & (best_val == top[:, None])
        pick = tl.min(tl.where(tie, best_idx, 2147483647), 1)
        tl.store(out_ptr + rows64 * m + t, tl.where(pick == 2147483647, -1, pick).to(tl.int64), mask=qmask)
        left = left & (best_idx != pick[:, None])


# ---------------------------------------------------------------------------------------------- launchers


def _attn_config(query: Tensor, value: Tensor, direction: str) -> tuple[tuple[int], dict]:
    """Grid and arguments of the ``direction`` ('forward' or 'backward') attention kernel."""
    heads, head_dim, val_dim = query.shape[1:] + value.shape[2:]
    block_h, block_d, block_c = (triton.next_power_of_2(n) for n in (heads, head_dim, val_dim))
    block_n = max(1, min(_ATTN_MAX_BLOCK_N, _ATTN_TILE[direction] // (block_h * max(block_d, block_c))))
    consts = dict(BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_C=block_c,
                  ACC=accumulation_dtypes(query.dtype)[1])
    return (triton.cdiv(query.shape[0], block_n),), dict(num_heads=heads, head_dim=head_dim, val_dim=val_dim,
                                                         **consts)


def topm_attention_forward(query: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float) -> Tensor:
    """Attention output ``[N, H, C]`` in the input dtype; arguments and layouts as :mod:`attnzoo.kernels.topm`."""
    out = value.new_empty(query.shape[0], value.shape[1], value.shape[2])
    if out.numel() == 0:
        return out
    index = index.contiguous()
    grid, consts = _attn_config(query, value, "forward")
    _topm_attn_fwd_kernel[grid](query, key, value, index, out, query.shape[0], index.shape[1], scale,
                                *query.stride(), *key.stride(), *value.stride(), *out.stride(), **consts,
                                num_warps=_ATTN_NUM_WARPS)
    return out


def topm_attention_backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, index: Tensor,
                            scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (query, key, value), each in its input's dtype and shape."""
    acc = accumulation_dtypes(query.dtype)[0]
    grad_q = torch.zeros(query.shape, dtype=query.dtype, device=query.device)
    grad_k = torch.zeros(key.shape, dtype=acc, device=key.device)
    grad_v = torch.zeros(value.shape, dtype=acc, device=value.device)
    if query.numel() and value.numel() and index.numel():
        index = index.contiguous()
        grid, consts = _attn_config(query, value, "backward")
        _topm_attn_bwd_kernel[grid](grad_out, query, key, value, index, grad_q, grad_k, grad_v, query.shape[0],
                                    index.shape[1], scale, *grad_out.stride(), *query.stride(), *key.stride(),
                                    *value.stride(), **consts, num_warps=_ATTN_NUM_WARPS)
    return grad_q, grad_k.to(key.dtype), grad_v.to(value.dtype)


def topm_knn(query: Tensor, key: Tensor, m: int, batch_query: Tensor, batch_key: Tensor) -> Tensor:
    """Exact top-``min(m, S)`` keys by dot product per query within its graph: int64 ``[N, min(m, S)]``, best
    first, -1 where the graph has fewer keys."""
    num_q, num_k = query.shape[0], key.shape[0]
    m = min(m, num_k)
    out = torch.full((num_q, m), -1, dtype=torch.long, device=query.device)
    if num_q == 0 or m == 0:
        return out
    if num_k >= 2**31 - 1:
        raise ValueError(f"key must have fewer than 2**31 - 1 rows (int32 positions), got {num_k}")
    # Key range of every graph id (ids are below max(N, S), checked by the op): no sort or host sync needed.
    # int32 keeps every key position in the kernel one type (loop-carried values must not change type).
    graphs = max(num_q, num_k)
    positions = torch.arange(num_k, dtype=torch.int32, device=key.device)
    first = torch.full((graphs,), num_k, dtype=torch.int32, device=key.device)
    first.scatter_reduce_(0, batch_key, positions, "amin")
    last = torch.zeros(graphs, dtype=torch.int32, device=key.device).scatter_reduce_(0, batch_key, positions + 1,
                                                                                      "amax")
    interpreting = _dispatch.triton_interpreting()
    block_q, block_k = _KNN_TILE["interpreter" if interpreting else "gpu"]
    feat = query.shape[1]
    high = query.dtype in (torch.float32, torch.float64)
    # 16-bit operands feed the tensor cores natively (exact products, fp32 sums); the interpreter mis-multiplies
    # bf16, so there they are upcast, and 'tf32' on upcast 16-bit values is exact too.
    acc = accumulation_dtypes(query.dtype)[1]
    dot = acc if high or interpreting else {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[query.dtype]
    block_f = max(16, triton.next_power_of_2(feat)) if feat <= _KNN_ONE_CHUNK_F else _KNN_CHUNK_F
    _topm_knn_kernel[(triton.cdiv(num_q, block_q),)](
        query, key, batch_query.contiguous(), batch_key.contiguous(), first, last, out, num_q, num_k, feat, m,
        *query.stride(), *key.stride(), BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_F=block_f,
        BLOCK_M=max(2, triton.next_power_of_2(m)), ONE_CHUNK=feat <= block_f, DOT=dot, DOT_ACC=acc,
        PREC="ieee" if high else "tf32", num_warps=_KNN_NUM_WARPS)
    return out
