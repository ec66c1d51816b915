"""Neighborhood attention (NA, DiNA, strided/blocked GNA) over 1-D, 2-D and 3-D maps, as one op.

Papers: "Neighborhood Attention Transformer", Hassani et al., CVPR 2023, https://arxiv.org/abs/2204.07143;
"Dilated Neighborhood Attention Transformer", Hassani and Shi, https://arxiv.org/abs/2209.15001;
"Generalized Neighborhood Attention: Multi-dimensional Sparse Attention at the Speed of Light", Hassani et al.,
https://arxiv.org/abs/2504.16922.

Semantics are NATTEN's (``SHI-Labs/NATTEN``: the reference mask ``csrc/include/natten/cuda/reference/mask.hpp`` of
NATTEN >= 0.20, which agrees with the 0.17 CPU kernels for stride 1), per spatial dimension of length ``L`` with
kernel ``k``, dilation ``d``, stride ``s``, and a query at position ``i``:

* dilation groups: the query sees only keys ``j`` with ``j % d == i % d``; all window arithmetic is done in group
  coordinates ``i' = i // d`` over the group's length ``L'`` (``ceil((L - i % d) / d)``);
* stride groups (GNA): queries ``i' // s`` share the window of their group's leader ``min((i' // s) * s + s // 2,
  L' - 1)``; stride 1 is NA, ``s == k`` is blocked (Swin-window) attention;
* non-causal: the window is ``k`` consecutive group keys centred on the leader (``k // 2`` left and ``k // 2 + k % 2
  - 1`` right, so an even kernel sees one more key on the left), shifted to stay inside the map at the borders: every
  query sees exactly ``k`` keys per dimension;
* causal (per dimension): the leader is the group's last query, the window starts at ``max(leader - k + 1, 0)`` and
  ends at the query itself, so a query sees at most ``k`` keys;
* a (query, key) pair is allowed iff it is allowed along every dimension;
* optional relative positional bias (NAT's ``rpb``, NATTEN <= 0.17): ``rpb[h, (j'_0 - i'_0) + k_0 - 1, ...]`` is added
  to ``scale * q.k``; the emulated NATTEN 0.17 kernels index their table this way at every border (and so does this
  op, with any stride). NATTEN refuses it with causal masking and with even kernels, and so does this op.

Layout is NATTEN >= 0.20's heads-last ``q, k, v: (B, *spatial, heads, D)``: a NAT layer's fused ``qkv`` projection
of a channels-last map reshapes to ``(B, H, W, 3, heads, D)`` and its three slices are the op's inputs with no
permute or copy; the output ``(B, *spatial, heads, Dv)`` reshapes straight back to channels for ``proj``.

Backends (``backend=`` of :func:`neighborhood_attention`):

* 'torch' (and 'auto', on every device for now): the blocked PyTorch path, :func:`neighborhood_attention_reference`.
  Queries are cut into small blocks per dimension (in dilation-group order); each block attends to the union of its
  queries' windows with one batched GEMM and a mask, then the next GEMM applies the probabilities to the values.
  Blocks run in chunks, so memory is O(N * k^d) with a bounded constant, never N x N. Its backward is autograd of the
  same chunks, recomputed chunk by chunk (:func:`attnzoo.kernels._dispatch.reference_vjp`).
* 'flex': ``torch.nn.attention.flex_attention`` (compiled) with a NATTEN block mask built once per shape and cached,
  and the bias as a ``score_mod``. FlexAttention has no CPU backward, so on CPU the backward of the 'flex' path is the
  'torch' path's (the same function); on CUDA it is FlexAttention's. ``set_backend``/``ATTNZOO_BACKEND`` take only the
  shared names, so 'flex' is asked for per call.
* 'triton': there is no hand-written Triton kernel (no GPU run has shown one beating FlexAttention, whose CUDA kernels
  inductor generates in Triton); 'triton' runs the 'flex' path on the devices where 'triton' is allowed.

The export lowering (:func:`neighborhood_attention_lowering`) gathers every query's ``k^d`` keys with index tensors
computed from ``arange`` of the (symbolic) sizes: no ``as_strided``, padding, slicing or Python loop over sizes.

Correspondence with ``attnzoo.kernels.halo.halo_attention`` (HaloNet: a map cut into ``b x b`` blocks, each block's
queries attending to its ``(b + 2h) x (b + 2h)`` window, relative logits ``q.R_h + q.R_w``):

* windows: with stride 1, a halo block's window is GNA's window of stride ``s = b`` and kernel ``k = b + 2h`` (the
  same keys for every block whose window lies inside the map, for any ``b``; ``s <= k`` always holds). At the
  borders they differ: halo attention keeps the window centred on the block and pads it with zero keys that take
  part in the softmax (timm's default) or are masked out (``mask_padding=True``, then a border query sees fewer than
  ``k`` keys), whereas NA shifts the window inside the map so that every query sees ``k`` real keys. The same holds
  for the partial last blocks of maps that are not multiples of ``b``. Only with ``h = 0`` and sides that are
  multiples of ``b`` does no window reach outside the map: then the windows are exactly NA's blocked attention
  (``kernel_size = stride = b``);
* position terms: halo's is content-dependent (``q.R``, factorised tables of vectors), NA's ``rpb`` a learned scalar
  per head and offset; neither can express the other, and halo attention with nonzero tables is never NA;
* halo's stride 2 subsamples the queries, which NA's stride does not (NA's stride groups queries; every query
  still produces an output);
* hence the only halo configurations that are configurations of this op with identical results are ``halo_size=0``
  on maps whose sides are multiples of ``block_size`` with zero position tables (NA with ``kernel_size = stride =
  block_size``, either ``mask_padding``), which no HaloNet uses; the tests check this, the interior-window identity
  and the border differences.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.kernels._dispatch import get_backend, reference_vjp, resolve_backend
from attnzoo.kernels.define import define_op

__all__ = [
    "NEIGHBORHOOD_ATTENTION",
    "PATHS",
    "neighborhood_attention",
    "neighborhood_attention_lowering",
    "neighborhood_attention_reference",
    "neighborhood_windows",
]

PATHS = ("gather", "flex")  # what runs inside the op: the blocked PyTorch path or FlexAttention
# Logit (and gathered key) elements per chunk of the PyTorch path: bounds its temporaries at a few tens of MiB.
CHUNK_ELEMENTS = 1 << 22
MIN_QUERIES_PER_BLOCK = 16  # below this the batched GEMMs get too small to pay for their launch


# ---------------------------------------------------------------------------------------------------------------
# Windows along one dimension (shared by every path; tensor ops only, so sizes may be symbolic)
# ---------------------------------------------------------------------------------------------------------------


def neighborhood_windows(length, kernel: int, dilation: int = 1, stride: int = 1, causal: bool = False,
                         device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every query's window along one dimension, in dilation-group coordinates.

    Args:
        length: the dimension's size ``L`` (an int, or a SymInt while tracing).
        kernel: ``k``; dilation: ``d``; stride: ``s``; causal: causal masking along this dimension.

    Returns:
        ``(start, end, group, gpos)``, each ``(L,)`` long: query ``i`` sees the keys ``j' * d + group[i]`` for ``j'``
        in ``[start[i], end[i])``; ``gpos[i] = i // d`` is its own group coordinate.
    """
    i = torch.arange(length, device=device)
    group, gpos = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation  # L' of the query's dilation group
    if causal:
        leader = torch.minimum((gpos // stride) * stride + stride - 1, group_len - 1)
        start = (leader - (kernel - 1)).clamp(min=0)
        return start, gpos + 1, group, gpos
    left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
    leader = torch.minimum((gpos // stride) * stride + stride // 2, group_len - 1)
    start = torch.minimum(leader.clamp(min=left), group_len - 1 - right) - left  # centre clamped inside the group
    return start, start + kernel, group, gpos


def _per_dim(value, nd: int, name: str, kind: type) -> tuple:
    """An int/bool or a sequence of ``nd`` of them -> a tuple of ``nd``."""
    items = tuple(value) if isinstance(value, Sequence) else (value,) * nd
    if len(items) != nd:
        raise ValueError(f"{name}={value!r} must be one value or {nd} (one per spatial dimension)")
    for item in items:
        ok = isinstance(item, bool) if kind is bool else isinstance(item, int) and not isinstance(item, bool)
        if not ok:
            raise TypeError(f"{name}={value!r} must be {kind.__name__}s, got {type(item).__name__} {item!r}")
    return items


# ---------------------------------------------------------------------------------------------------------------
# The blocked PyTorch path
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Axis:
    """One dimension of a blocked plan: query blocks, each block's key span, masks and bias rows.

    ``qpos`` (nb, bq): the positions of each block's queries (blocks never mix dilation groups; slots past a group's
    end repeat its last query and are dropped). ``kpos`` (nb, span): the positions of each block's keys, the union of
    its queries' windows (clamped copies past the group's end are masked). ``valid`` (nb, bq, span): the pair is in
    the query's window. ``rel`` (nb, bq, span): the bias row ``j' - i' + k - 1`` (clamped where not valid).
    ``slot_of`` (L,): each position's flat slot ``block * bq + t``. ``order`` (L,): the real slots in block order,
    ``order_pos`` (L,) their positions and ``rank_of`` (L,) each position's index in that list; ``row_start``
    (nb + 1,): where each block starts in it.
    """

    block: int
    span: int
    qpos: Tensor
    kpos: Tensor
    valid: Tensor
    rel: Tensor
    slot_of: Tensor
    order: Tensor
    order_pos: Tensor
    rank_of: Tensor
    row_start: tuple[int, ...]
    identity: bool  # block order is position order (no dilation): no final reordering

    @property
    def num_blocks(self) -> int:
        return self.qpos.shape[0]


@functools.lru_cache(maxsize=256)
def _axis(length: int, kernel: int, dilation: int, stride: int, causal: bool, block: int,
          device: torch.device) -> _Axis:
    with torch.inference_mode(False), torch.no_grad():  # cached tensors must be usable by autograd later
        start, end, group, gpos = neighborhood_windows(length, kernel, dilation, stride, causal)
        qrows, bases, widths = [], [], []
        for g in range(dilation):
            members = torch.nonzero(group == g).flatten()  # positions of group g, by group coordinate
            for b0 in range(0, members.numel(), block):
                row = members[torch.arange(b0, b0 + block).clamp(max=members.numel() - 1)]
                qrows.append(row)
                bases.append(int(start[row[0]]))
                widths.append(int(end[row].max()) - bases[-1])
        span = max(widths)
        qpos = torch.stack(qrows)  # (nb, bq)
        base = torch.tensor(bases).unsqueeze(1)  # (nb, 1)
        keys = base + torch.arange(span)  # (nb, span) group coordinates, may run past the group's end
        g = group[qpos[:, :1]]  # (nb, 1)
        group_len = (length - g + dilation - 1) // dilation
        kpos = keys.clamp(max=group_len - 1) * dilation + g
        qs, qe, qg = start[qpos].unsqueeze(-1), end[qpos].unsqueeze(-1), gpos[qpos].unsqueeze(-1)
        keys3 = keys.unsqueeze(1)  # (nb, 1, span)
        valid = (keys3 >= qs) & (keys3 < qe)
        rel = (keys3 - qg + kernel - 1).clamp(0, 2 * kernel - 2)
        real = torch.ones_like(qpos, dtype=torch.bool)
        real[:, 1:] = qpos[:, 1:] != qpos[:, :-1]  # padded slots repeat the previous position
        order = torch.nonzero(real.flatten()).flatten()
        order_pos = qpos.flatten()[order]
        slot_of, rank_of = torch.empty(length, dtype=torch.long), torch.empty(length, dtype=torch.long)
        slot_of[order_pos] = order
        rank_of[order_pos] = torch.arange(length)
        row_start = (0, *torch.cumsum(real.sum(1), 0).tolist())
        identity = bool(torch.equal(order_pos, torch.arange(length)))
        tensors = [t.to(device) for t in (qpos, kpos, valid, rel, slot_of, order, order_pos, rank_of)]
    return _Axis(block, span, *tensors, row_start, identity)


def _block_sizes(kernel: tuple[int, ...], stride: tuple[int, ...], group_lens: tuple[int, ...]) -> tuple[int, ...]:
    """Query block side per dimension: about half the kernel (measured fastest on CPU for k = 7 in 2-D), a multiple
    of the stride (so a block holds whole stride groups and its key span is tight), at least
    ``MIN_QUERIES_PER_BLOCK`` queries in all, and no larger than a dilation group."""
    sides = [min(max(1, -(-k // 2)), n) for k, n in zip(kernel, group_lens, strict=True)]
    sides = [min(-(-b // s) * s, n) for b, s, n in zip(sides, stride, group_lens, strict=True)]
    while math.prod(sides) < MIN_QUERIES_PER_BLOCK:
        growable = [i for i, n in enumerate(group_lens) if sides[i] < n]
        if not growable:
            break
        i = min(growable, key=lambda j: sides[j])
        sides[i] = min(sides[i] * 2, group_lens[i])
    return tuple(sides)


def _plan(spatial: tuple[int, ...], kernel, dilation, stride, causal, device) -> tuple[_Axis, ...]:
    group_lens = tuple(-(-n // d) for n, d in zip(spatial, dilation, strict=True))
    blocks = _block_sizes(kernel, stride, group_lens)
    return tuple(_axis(*args, device) for args in zip(spatial, kernel, dilation, stride, causal, blocks, strict=True))


def _placed(t: Tensor, axis: int, nd: int) -> Tensor:
    """(nb, bq, span) tensor of dimension ``axis`` viewed for broadcasting into (nb_0.., bq_0.., span_0..)."""
    shape = [1] * (3 * nd)
    shape[axis], shape[nd + axis], shape[2 * nd + axis] = t.shape
    return t.view(shape)


def _blocks(x: Tensor, index: Sequence[Tensor]) -> Tensor:
    """(B, h, *spatial, D) -> (B, h, prod nb, prod width, D): ``index[i]`` (nb_i, width_i) positions per dimension."""
    nd = len(index)
    for i, idx in enumerate(index):
        x = x.index_select(2 + i, idx.flatten())
    b, h, d = x.shape[0], x.shape[1], x.shape[-1]
    x = x.view(b, h, *(s for idx in index for s in idx.shape), d)  # (B, h, nb0, w0, nb1, w1, .., D)
    x = x.permute(0, 1, *(2 + 2 * i for i in range(nd)), *(3 + 2 * i for i in range(nd)), 2 + 2 * nd)
    return x.reshape(b, h, math.prod(idx.shape[0] for idx in index), math.prod(idx.shape[1] for idx in index), d)


def _attend_rows(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor, axes: Sequence[_Axis], rows: tuple[int, int],
                 scale: float) -> Tensor:
    """Outputs of the queries in blocks ``rows`` of dimension 0: (B, n, *spatial[1:], heads, Dv), in block order."""
    nd = len(axes)
    r0, r1 = rows
    qh, kh, vh = (t.movedim(-2, 1).contiguous() for t in (q, k, v))  # (B, h, *spatial, D): fast row gathers
    qidx = [axes[0].qpos[r0:r1], *(a.qpos for a in axes[1:])]
    kidx = [axes[0].kpos[r0:r1], *(a.kpos for a in axes[1:])]
    qb = _blocks(qh, qidx) * scale  # (B, h, NB, Wq, D)
    logits = torch.matmul(qb, _blocks(kh, kidx).transpose(-1, -2))  # (B, h, NB, Wq, Wk)
    num_blocks, wq, wk = logits.shape[2:]
    sliced = [(a.valid[r0:r1], a.rel[r0:r1]) if i == 0 else (a.valid, a.rel) for i, a in enumerate(axes)]
    valid = functools.reduce(torch.logical_and, (_placed(m, i, nd) for i, (m, _) in enumerate(sliced)))
    valid = valid.reshape(num_blocks, wq, wk)
    if rpb.numel():
        rows_per_dim = rpb.shape[1:]
        flat = sum(_placed(r, i, nd) * math.prod(rows_per_dim[i + 1:]) for i, (_, r) in enumerate(sliced))
        # index_select rather than advanced indexing: its backward is index_add_, much faster than index_put_
        bias = rpb.reshape(rpb.shape[0], -1).index_select(1, flat.reshape(-1)).view(-1, num_blocks, wq, wk)
        logits = logits + bias  # bias: (h, NB, Wq, Wk)
    probs = logits.masked_fill(~valid, float("-inf")).softmax(-1)
    out = torch.matmul(probs, _blocks(vh, kidx))  # (B, h, NB, Wq, Dv)
    b, h, dv = out.shape[0], out.shape[1], out.shape[-1]
    nbs = [r1 - r0, *(a.num_blocks for a in axes[1:])]
    out = out.view(b, h, *nbs, *(a.block for a in axes), dv)
    out = out.permute(0, *(x for i in range(nd) for x in (2 + i, 2 + nd + i)), 1, 2 + 2 * nd)
    out = out.reshape(b, *(n * a.block for n, a in zip(nbs, axes, strict=True)), h, dv)  # slots per dimension
    first = axes[0]
    out = out.index_select(1, first.order[first.row_start[r0]:first.row_start[r1]] - r0 * first.block)
    for i, a in enumerate(axes[1:], start=2):
        out = out.index_select(i, a.slot_of)
    return out


def _row_chunks(q: Tensor, v: Tensor, axes: Sequence[_Axis]) -> list[tuple[int, int]]:
    """Chunks of dimension-0 block rows whose logits and gathered keys stay under ``CHUNK_ELEMENTS``."""
    b, heads, d, dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    per_row = math.prod(a.num_blocks for a in axes[1:]) * math.prod(a.block for a in axes) * \
        math.prod(a.span for a in axes)
    per_row_keys = math.prod(a.num_blocks for a in axes[1:]) * math.prod(a.span for a in axes) * (d + dv)
    per_row = b * heads * max(per_row, per_row_keys)
    step = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    rows = axes[0].num_blocks
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _gather_forward(q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, stride, is_causal, rpb: Tensor,
                    scale: float) -> Tensor:
    axes = _plan(tuple(q.shape[1:-2]), tuple(kernel_size), tuple(dilation), tuple(stride), tuple(is_causal),
                 q.device)
    chunks = [_attend_rows(q, k, v, rpb, axes, rows, scale) for rows in _row_chunks(q, v, axes)]
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, 1)
    if not axes[0].identity:
        out = out.index_select(1, axes[0].rank_of)  # block order of dimension 0 -> positions
    return out


def _gather_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, stride, is_causal,
                     rpb: Tensor, scale: float) -> list[Tensor]:
    """Gradients of q, k, v, rpb: autograd of each chunk, recomputed one chunk at a time (memory of one chunk)."""
    axes = _plan(tuple(q.shape[1:-2]), tuple(kernel_size), tuple(dilation), tuple(stride), tuple(is_causal),
                 q.device)
    first = axes[0]
    total: list[Tensor] | None = None
    for rows in _row_chunks(q, v, axes):
        positions = first.order_pos[first.row_start[rows[0]]:first.row_start[rows[1]]]
        grads = reference_vjp(_attend_rows, [q, k, v, rpb], grad_out.index_select(1, positions), axes, rows, scale)
        total = grads if total is None else [t + g for t, g in zip(total, grads, strict=True)]
    return total


# ---------------------------------------------------------------------------------------------------------------
# FlexAttention path
# ---------------------------------------------------------------------------------------------------------------


FLEX_MASK_CACHE = 64  # block masks kept (one per shape and window configuration)


@functools.cache
def _compiled_flex():
    """FlexAttention compiled once per shape, in a region of its own.

    Dynamo counts recompilations per code object: every ``torch.compile(flex_attention)`` in the process (the user's,
    other libraries', earlier tests') shares ``flex_attention``'s default limit of 8, and past it dynamo silently runs
    ``flex_attention`` eagerly, which is its dense O(N^2) math path under ``vmap`` (and fails inside opcheck's
    schema-check mode). Isolated, with a limit of one compilation per cached block mask (and as many for the bias
    variant), the shapes this op sees compile whatever else was compiled before.
    """
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False, recompile_limit=2 * FLEX_MASK_CACHE, isolate_recompiles=True)


def _coords(index: Tensor, spatial: Sequence[int]) -> list[Tensor]:
    """Row-major flat token index -> one coordinate per dimension."""
    coords = []
    for size in reversed(spatial):
        coords.append(index % size)
        index = index // size
    return coords[::-1]


@functools.lru_cache(maxsize=FLEX_MASK_CACHE)
def _flex_block_mask(spatial: tuple[int, ...], kernel, dilation, stride, causal, device: torch.device):
    """NATTEN's mask as a FlexAttention BlockMask, built once per shape (and cached)."""
    from torch.nn.attention.flex_attention import create_block_mask

    with torch.inference_mode(False):
        tables = [neighborhood_windows(*args, device=device)[:2]
                  for args in zip(spatial, kernel, dilation, stride, causal, strict=True)]

        def mask_mod(b, h, q_idx, kv_idx):
            allowed = None
            for qc, kc, d, (start, end) in zip(_coords(q_idx, spatial), _coords(kv_idx, spatial), dilation, tables,
                                               strict=True):
                kg = kc // d
                ok = (kc % d == qc % d) & (kg >= start[qc]) & (kg < end[qc])
                allowed = ok if allowed is None else allowed & ok
            return allowed

        n = math.prod(spatial)
        return create_block_mask(mask_mod, None, None, n, n, device=device)


def _flex_forward(q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, stride, is_causal, rpb: Tensor,
                  scale: float) -> Tensor:
    spatial = tuple(q.shape[1:-2])
    block_mask = _flex_block_mask(spatial, tuple(kernel_size), tuple(dilation), tuple(stride), tuple(is_causal),
                                  q.device)
    score_mod = None
    if rpb.numel():
        rows = rpb.shape[1:]
        table = rpb.reshape(-1)

        def score_mod(score, b, h, q_idx, kv_idx):
            flat = h
            for qc, kc, d, kern, size in zip(_coords(q_idx, spatial), _coords(kv_idx, spatial), dilation,
                                             kernel_size, rows, strict=True):
                # clamped: FlexAttention evaluates score_mod on whole blocks, masked pairs included
                flat = flat * size + (kc // d - qc // d + kern - 1).clamp(0, size - 1)
            return score + table[flat]

    b, heads, dv = q.shape[0], q.shape[-2], v.shape[-1]
    qf, kf, vf = (t.reshape(b, -1, heads, t.shape[-1]).transpose(1, 2) for t in (q, k, v))  # (B, h, N, D)
    out = _compiled_flex()(qf, kf, vf, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out.transpose(1, 2).reshape(b, *spatial, heads, dv)


# ---------------------------------------------------------------------------------------------------------------
# The op's pieces
# ---------------------------------------------------------------------------------------------------------------


def neighborhood_attention_reference(q: Tensor, k: Tensor, v: Tensor, kernel_size: Sequence[int],
                                     dilation: Sequence[int], stride: Sequence[int], is_causal: Sequence[bool],
                                     rpb: Tensor, scale: float, path: str = "gather") -> Tensor:
    """The op's forward (no validation): the blocked PyTorch path, or FlexAttention for ``path='flex'``.

    Per-dimension arguments are tuples of ``len(spatial)``; ``rpb`` is the bias table, or an empty tensor for none.
    """
    if path == "flex":
        if q.device.type == "cpu":  # FlexAttention refuses CPU inputs that require grad; the op has its backward
            q, k, v, rpb = (t.detach() for t in (q, k, v, rpb))
        return _flex_forward(q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale)
    return _gather_forward(q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale)


def _backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, stride, is_causal,
              rpb: Tensor, scale: float, path: str) -> list[Tensor]:
    if path == "flex" and q.device.type != "cpu":  # FlexAttention has no CPU backward
        return reference_vjp(_flex_forward, [q, k, v, rpb], grad_out, kernel_size, dilation, stride, is_causal,
                             scale)
    return _gather_backward(grad_out, q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale)


def neighborhood_attention_lowering(q: Tensor, k: Tensor, v: Tensor, kernel_size: Sequence[int],
                                    dilation: Sequence[int], stride: Sequence[int], is_causal: Sequence[bool],
                                    rpb: Tensor, scale: float, path: str = "gather", *,
                                    attn_dropout: float = 0.0) -> Tensor:
    """The same function in export-friendly ops (the ONNX lowering): every query's ``k^d`` keys gathered at once.

    Memory is ``N * k^d * (D + Dv)`` (no chunks: a loop over symbolic sizes cannot be exported). It is differentiable
    by autograd, and ``attn_dropout`` (off in the lowering) drops attention probabilities as NATTEN <= 0.15's
    unfused ops let NAT do in training; the op itself has no dropout.
    """
    nd = q.dim() - 3
    heads, spatial = q.shape[-2], q.shape[1:-2]
    index, valid, rel = [], [], []
    for size, kern, dil, st, causal in zip(spatial, kernel_size, dilation, stride, is_causal, strict=True):
        start, end, group, gpos = neighborhood_windows(size, kern, dil, st, causal, device=q.device)
        keys = start.unsqueeze(1) + torch.arange(kern, device=q.device)  # (L, k) group coordinates
        index.append(keys * dil + group.unsqueeze(1))
        valid.append(keys < end.unsqueeze(1) if causal else None)
        rel.append(keys - gpos.unsqueeze(1) + kern - 1)

    def neighbours(x: Tensor) -> Tensor:
        """(B, *spatial, h, D) -> (B, L0, k0, L1, k1, .., h, D)."""
        for i, idx in enumerate(index):
            x = x.index_select(1 + 2 * i, idx.flatten())
            x = x.unflatten(1 + 2 * i, (-1, idx.shape[1]))
        return x

    letters = "ijk"[:nd]
    kletters = "abc"[:nd]
    q_sub = f"z{letters}hd"
    n_sub = "z" + "".join(f"{a}{b}" for a, b in zip(letters, kletters, strict=True)) + "hd"
    w_sub = f"z{letters}h{kletters}"
    logits = torch.einsum(f"{q_sub},{n_sub}->{w_sub}", q * scale, neighbours(k))  # (B, *spatial, h, *kernel)

    def placed(t: Tensor, i: int) -> Tensor:
        """(L_i, k_i) table of dimension ``i`` viewed for broadcasting against the logits."""
        shape = [1] * (2 * nd + 1)
        shape[i], shape[nd + 1 + i] = t.shape
        return t.view(shape)

    if rpb.numel():
        rows = rpb.shape[1:]
        flat = sum(placed(r, i) * math.prod(rows[i + 1:]) for i, r in enumerate(rel))  # (*spatial, 1, *kernel)
        logits = logits + rpb.reshape(heads, -1)[:, flat.squeeze(nd)].movedim(0, nd)
    masks = [placed(m, i) for i, m in enumerate(valid) if m is not None]
    if masks:
        logits = logits.masked_fill(~functools.reduce(torch.logical_and, masks), float("-inf"))
    probs = logits.flatten(nd + 2).softmax(-1).view(logits.shape)
    if attn_dropout:
        probs = torch.nn.functional.dropout(probs, attn_dropout)
    return torch.einsum(f"{w_sub},{n_sub}->{q_sub}", probs, neighbours(v))  # (B, *spatial, h, Dv)


def _check_tensor(name: str, t: Tensor, like: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{name} is {t.dtype} on {t.device}; expected {like.dtype} on {like.device} like q")


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, stride, is_causal, rpb: Tensor,
                  scale: float, path: str) -> None:
    """ValueErrors that name the argument, its value and NATTEN's rule."""
    for name, t in (("q", q), ("k", k), ("v", v), ("rpb", rpb)):
        _check_tensor(name, t, q)
    nd = q.dim() - 3
    if nd not in (1, 2, 3):
        raise ValueError(f"q must be (B, *spatial, heads, D) with 1 to 3 spatial dims, got shape {tuple(q.shape)}")
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k has shape {tuple(k.shape)}; expected q's shape {tuple(q.shape)}")
    if v.dim() != q.dim() or tuple(v.shape[:-1]) != tuple(q.shape[:-1]):
        raise ValueError(f"v has shape {tuple(v.shape)}; expected {(*q.shape[:-1], 'Dv')} like q")
    if path not in PATHS:
        raise ValueError(f"path={path!r} is not one of {PATHS}")
    spatial = tuple(q.shape[1:-2])
    for name, values in (("kernel_size", kernel_size), ("dilation", dilation), ("stride", stride),
                         ("is_causal", is_causal)):
        if len(values) != nd:
            raise ValueError(f"{name}={tuple(values)} must have one entry per spatial dimension ({nd})")
    for i, (size, kern, dil, st) in enumerate(zip(spatial, kernel_size, dilation, stride, strict=True)):
        where = f" (dimension {i} of spatial size {spatial})"
        if kern < 2:
            raise ValueError(f"kernel_size={kern}{where} must be >= 2 (NATTEN's rule)")
        if kern > size:
            raise ValueError(f"kernel_size={kern}{where} is larger than the map ({size})")
        if dil < 1:
            raise ValueError(f"dilation={dil}{where} must be >= 1")
        if kern * dil > size:
            raise ValueError(f"kernel_size * dilation = {kern} * {dil} = {kern * dil}{where} exceeds the map "
                             f"({size}); NATTEN requires kernel_size * dilation <= size")
        if st < 1:
            raise ValueError(f"stride={st}{where} must be a positive int")
        if st > kern:
            raise ValueError(f"stride={st}{where} must be <= kernel_size={kern} (NATTEN's rule: stride == kernel is "
                             "blocked attention, a larger stride would leave keys no query sees)")
    if rpb.numel():
        if any(is_causal):
            raise ValueError(f"rpb with is_causal={tuple(is_causal)}: causal neighborhood attention is undefined "
                             "with positional biases (NATTEN refuses it too)")
        if any(kern % 2 == 0 for kern in kernel_size):
            raise ValueError(f"rpb with kernel_size={tuple(kernel_size)}: NATTEN supports the bias only with odd "
                             "kernels ('only supports odd-sized kernel sizes with RPB enabled')")
        expected = (q.shape[-2], *(2 * kern - 1 for kern in kernel_size))
        if tuple(rpb.shape) != expected:
            raise ValueError(f"rpb has shape {tuple(rpb.shape)}; expected (heads, *(2 * kernel_size - 1)) = "
                             f"{expected}")


def _flops(q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, path) -> int:
    """2 FLOPs per multiply-add of q.k and of p.v, over the ``prod(kernel_size)`` keys of every query and head."""
    queries = math.prod(q[:-1])  # B * prod(spatial) * heads
    return 2 * queries * math.prod(kernel_size) * (q[-1] + v[-1])


NEIGHBORHOOD_ATTENTION = define_op(
    "neighborhood_attention",
    "(Tensor q, Tensor k, Tensor v, int[] kernel_size, int[] dilation, int[] stride, bool[] is_causal, Tensor rpb, "
    "float scale, str path) -> Tensor",
    reference=neighborhood_attention_reference,
    lowering=neighborhood_attention_lowering,
    fake=lambda q, k, v, *_: v.new_empty(*q.shape[:-1], v.shape[-1]),
    backward=_backward,
    grads_for=("q", "k", "v", "rpb"),
    autocast="lower",
    validate=_check_inputs,
    flops=_flops,
)


def neighborhood_attention(q: Tensor, k: Tensor, v: Tensor, kernel_size: int | Sequence[int],
                           dilation: int | Sequence[int] = 1, stride: int | Sequence[int] = 1,
                           is_causal: bool | Sequence[bool] = False, rpb: Tensor | None = None,
                           scale: float | None = None, backend: str | None = "auto") -> Tensor:
    """Neighborhood attention with NATTEN's semantics (see the module docstring).

    Args:
        q: queries, heads-last.
        k: keys, same shape as ``q``.
        v: values.
        kernel_size: window size per spatial dimension (one int for all), ``>= 2``, ``kernel * dilation <= size``.
        dilation: dilation per dimension.
        stride: GNA stride per dimension, ``1 <= stride <= kernel_size``; ``stride == kernel_size`` is blocked
            attention.
        is_causal: causal masking per dimension.
        rpb: NAT's relative positional bias, ``(heads, *(2 * kernel_size - 1))``; not with causal masking or even
            kernels.
        scale: multiplies ``q.k`` (before the bias is added); default ``D ** -0.5``.
        backend: 'auto', 'torch', 'flex', 'triton' (FlexAttention's Triton kernels; see the module docstring), or
            None for the process default.

    Shapes:
        q, k: (B, *spatial, heads, D) with 1 to 3 spatial dims; v: (B, *spatial, heads, Dv).
        Returns (B, *spatial, heads, Dv).
    """
    if not isinstance(q, Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    nd = q.dim() - 3
    if nd not in (1, 2, 3):
        raise ValueError(f"q must be (B, *spatial, heads, D) with 1 to 3 spatial dims, got shape {tuple(q.shape)}")
    args = [_per_dim(value, nd, name, kind) for name, value, kind in (
        ("kernel_size", kernel_size, int), ("dilation", dilation, int), ("stride", stride, int),
        ("is_causal", is_causal, bool))]
    requested = get_backend() if backend in (None, "auto") else backend
    if requested == "flex":
        path, op_backend = "flex", "torch"
    else:
        op_backend = resolve_backend(requested, q)
        path = "flex" if op_backend == "triton" else "gather"
    bias = q.new_zeros(0) if rpb is None else rpb
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return NEIGHBORHOOD_ATTENTION(q, k, v, *args, bias, scale, path, backend=op_backend)
