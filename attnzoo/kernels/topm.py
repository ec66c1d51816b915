"""Top-m attention over candidate sets, and the candidate searches that feed it (TANGNN's long-range branch).

TANGNN ("TANGNN: a Concise, Scalable and Effective Graph Neural Networks with Top-m Attention Mechanism for
Graph Representation Learning", https://arxiv.org/abs/2411.15458) lets every vertex attend to m candidate
vertices instead of all N. This module holds the functional pieces; :class:`attnzoo.layers.topm.TopMAttentionConv`
owns the parameters.

* :func:`topm_attention` -- the op: gather the m candidates of every query, multi-head scaled dot-product
  softmax over them, weighted sum of their values. Index ``-1`` marks an empty slot (a graph with fewer than m
  vertices). Cost O(N·m·H·D), never N×N. ``backend='torch'`` runs :func:`topm_attention_reference`;
  ``'triton'`` calls the launchers of ``attnzoo.kernels.topm_triton`` (``topm_attention_forward``,
  ``topm_attention_backward``, ``topm_knn``).
* :func:`topm_knn` -- the exact per-query top-m by dot product among the keys of the same graph, in
  query × key blocks so that memory is O(block² + N·m), never N×N ('knn' candidate mode).
* :func:`score_candidates` -- the paper's efficient algorithm: the m vertices with the highest relevance score,
  chosen per graph of a ``batch`` ('aux' candidate mode). Sync-free, so ``torch.compile`` keeps one graph.
* :func:`sample_neighbor_mask` -- at most k random incoming edges per target vertex, vectorised.

Deliberate differences from the authors' code (``ejwww/TANGNN``): candidates are per graph of a batch (the code
takes one global set), the attention is per vertex (the code tiles the m selected rows over the vertices), and
sampling is vectorised (the code loops over vertices in Python).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from attnzoo._checks import check_int
from attnzoo.kernels._dispatch import triton_kernels
from attnzoo.kernels.define import define_op

__all__ = [
    "SCORE_CANDIDATES",
    "TOPM_ATTENTION",
    "TOPM_KNN",
    "sample_neighbor_mask",
    "score_candidates",
    "topm_attention",
    "topm_attention_backward_reference",
    "topm_attention_reference",
    "topm_attention_weights",
    "topm_knn",
    "topm_knn_lowering",
    "topm_knn_reference",
]

# Query rows per chunk of the PyTorch reference: bounds the gathered [rows, m, H, D] candidates (64 MiB at m=16,
# H·D=64, fp32) so that memory grows with N·(H·D + m), not N·m·H·D.
ROWS_PER_CHUNK = 16384


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_index_range(index: Tensor, upper: int, name: str, lower: int = 0) -> None:
    """Data-dependent range check; skipped while compiling because it needs a device sync."""
    if _compiling() or index.numel() == 0:
        return
    low, high = int(index.min()), int(index.max())
    if low < lower or high >= upper:
        raise ValueError(f"{name} must hold values in [{lower}, {upper}), got values in [{low}, {high}]")


def _check_batch(batch: Tensor | None, num: int, name: str) -> None:
    if batch is None:
        return
    if batch.dim() != 1 or batch.size(0) != num or batch.is_floating_point():
        raise ValueError(f"{name} must be an integer vector of shape [{num}], got {batch.dtype} "
                         f"{tuple(batch.shape)}")
    # Graph ids below the node count let the per-graph bookkeeping use static sizes (no sync).
    _check_index_range(batch, max(num, 1), name)


# ---------------------------------------------------------------------------------------------------------------
# Candidate selection
# ---------------------------------------------------------------------------------------------------------------


def _stable_sort(x: Tensor, descending: bool = False) -> torch.return_types.sort:
    return torch.sort(x, descending=descending, stable=True)


def _ranked_candidates(score: Tensor, m: int, batch: Tensor | None, sort=_stable_sort) -> Tensor:
    """The candidate rows of :func:`score_candidates`: ``[1, m']`` for one graph, ``[N, m']`` per graph.

    Order: descending score, ties to the lower vertex id, i.e. stable sorts, so that one graph given as
    ``batch=None`` and as an all-zero batch vector picks the same candidates (``topk`` breaks ties in no documented
    order). ``stable=False`` is the export lowering: ONNX has no stable sort, but its TopK (which aten's sort
    becomes) breaks ties by the lower index, which is the same order.
    """
    num = score.size(0)
    m = min(m, num)
    order = sort(score, descending=True).indices  # [N]
    if batch is None:
        return order[:m].unsqueeze(0)  # [1, m], one shared candidate set
    order = order[sort(batch[order]).indices]  # [N] grouped by graph, same order inside
    # At most N graphs, so N slots hold every graph's size without reading the number of graphs back.
    count = torch.zeros(num, dtype=torch.long, device=score.device).scatter_add(0, batch, torch.ones_like(batch))
    start = torch.cumsum(count, 0) - count  # [N] first position of each graph in `order`
    rank = torch.arange(m, device=score.device)
    pos = start[batch].unsqueeze(1) + rank  # [N, m]
    valid = rank < count[batch].unsqueeze(1)  # [N, m]
    return torch.where(valid, order[pos.clamp(max=num - 1)], -1)


def _check_scores(score: Tensor, m: int, batch: Tensor | None) -> None:
    if not isinstance(score, Tensor) or score.dim() != 1 or not score.is_floating_point():
        got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise ValueError(f"score must be a floating 1-D [N] tensor, got {got}")
    check_int("m", m, where="score_candidates")
    _check_batch(batch, score.size(0), "batch")


SCORE_CANDIDATES = define_op(
    "score_candidates",
    "(Tensor score, int m, Tensor? batch) -> Tensor",
    reference=_ranked_candidates,
    lowering=functools.partial(_ranked_candidates, sort=torch.sort),
    fake=lambda score, m, batch: score.new_empty((1 if batch is None else score.size(0), min(m, score.size(0))),
                                                 dtype=torch.long),
    autocast="fp32",  # an index-valued op: rank at full precision
    validate=_check_scores,
)


def score_candidates(score: Tensor, m: int, batch: Tensor | None = None) -> Tensor:
    """For every vertex, the ``m`` vertices of its own graph with the highest ``score`` (highest first).

    Args:
        score: relevance of every vertex (TANGNN: cosine similarity to the auxiliary vector).
        m: candidates per vertex; clamped to the graph size, empty slots are ``-1``.
        batch: graph id of every vertex (PyG ``batch``), ids in ``[0, N)``; None means one graph.

    Shapes:
        score ``[N]``, batch ``[N]`` -> index ``[N, min(m, N)]`` (int64). For ``batch=None`` every row is the
        same candidate set, returned as an ``expand``-ed view (row stride 0) that :func:`topm_attention` gathers
        once instead of N times.
    """
    index = SCORE_CANDIDATES(score, m, batch)
    return index.expand(score.size(0), -1) if batch is None else index


def sample_neighbor_mask(dst: Tensor, num_nodes: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Keep at most ``k`` uniformly random incoming edges per target vertex (GraphSAGE's fixed-size sampling).

    Args:
        dst: target vertex of every edge.
        num_nodes: number of vertices.
        k: edges kept per target; targets with fewer keep them all.
        generator: random generator for reproducible samples.

    Shapes:
        dst ``[E]`` -> keep ``[E]`` (bool).
    """
    check_int("k", k, where="sample_neighbor_mask")
    num_edges = dst.size(0)
    noise = torch.rand(num_edges, generator=generator, device=dst.device)
    order = torch.sort(noise).indices
    order = order[torch.sort(dst[order], stable=True).indices]  # [E] grouped by target, random inside a group
    count = torch.zeros(num_nodes, dtype=torch.long, device=dst.device).scatter_add_(0, dst, torch.ones_like(dst))
    start = torch.cumsum(count, 0) - count  # [num_nodes]
    rank = torch.empty_like(dst)
    rank[order] = torch.arange(num_edges, device=dst.device) - start[dst[order]]
    return rank < k


def topm_knn_reference(query: Tensor, key: Tensor, m: int, batch_query: Tensor, batch_key: Tensor,
                       block_size: int = 1024) -> Tensor:
    """Exact top-m keys by dot product for every query, among keys of the same graph; blockwise.

    Only a ``[block, block + m]`` similarity tile exists at a time. When ``batch_key`` is sorted (PyG batches
    are), each query block only visits the key range of the graphs it contains.

    Shapes:
        query ``[N, F]``, key ``[S, F]``, batch_query ``[N]``, batch_key ``[S]`` -> index ``[N, min(m, S)]``,
        best first, ``-1`` where the graph has fewer keys than m.
    """
    num_q, num_k = query.size(0), key.size(0)
    m = min(m, num_k)
    out = torch.full((num_q, m), -1, dtype=torch.long, device=query.device)
    if num_q == 0 or m == 0:
        return out
    keys_sorted = bool((batch_key[1:] >= batch_key[:-1]).all())
    for q0 in range(0, num_q, block_size):
        q_blk, b_blk = query[q0:q0 + block_size], batch_query[q0:q0 + block_size]  # [b, F], [b]
        lo, hi = 0, num_k
        if keys_sorted:
            bounds = torch.stack([b_blk.min(), b_blk.max()])
            lo = int(torch.searchsorted(batch_key, bounds[0]))
            hi = int(torch.searchsorted(batch_key, bounds[1], right=True))
        best_val = q_blk.new_full((q_blk.size(0), m), -math.inf)  # [b, m]
        best_idx = torch.full((q_blk.size(0), m), -1, dtype=torch.long, device=query.device)  # [b, m]
        for k0 in range(lo, hi, block_size):
            k1 = min(k0 + block_size, hi)
            sim = q_blk @ key[k0:k1].T  # [b, k1 - k0]
            sim = sim.masked_fill(b_blk.unsqueeze(1) != batch_key[k0:k1].unsqueeze(0), -math.inf)
            cand_idx = torch.arange(k0, k1, device=query.device).expand(q_blk.size(0), -1)
            best_val, pos = torch.cat([best_val, sim], 1).topk(m, dim=1)  # [b, m]
            best_idx = torch.cat([best_idx, cand_idx], 1).gather(1, pos)  # [b, m]
        out[q0:q0 + q_blk.size(0)] = torch.where(best_val == -math.inf, -1, best_idx)
    return out


def topm_knn_lowering(query: Tensor, key: Tensor, m: int, batch_query: Tensor, batch_key: Tensor,
                      block_size: int = 1024) -> Tensor:
    """:func:`topm_knn_reference` as one masked ``[N, S]`` similarity and a top-k: the export/ONNX lowering.

    It holds the whole similarity matrix (the blockwise reference never does), which an exported graph has to, as
    its sizes are symbolic; ``block_size`` is accepted for the schema and unused.
    """
    sim = (query @ key.T).masked_fill(batch_query.unsqueeze(1) != batch_key.unsqueeze(0), -math.inf)  # [N, S]
    best_val, best_idx = sim.topk(min(m, key.size(0)), dim=1)
    return torch.where(best_val == -math.inf, -1, best_idx)


def _triton_knn(query: Tensor, key: Tensor, m: int, batch_query: Tensor, batch_key: Tensor,
                block_size: int) -> Tensor:
    return triton_kernels("topm_triton").topm_knn(query, key, m, batch_query, batch_key)  # picks its own tiles


def _check_knn(query: Tensor, key: Tensor, m: int, batch_query: Tensor, batch_key: Tensor, block_size: int) -> None:
    if query.dim() != 2 or key.dim() != 2 or query.size(1) != key.size(1):
        raise ValueError(f"query and key must be [N, F] and [S, F], got {tuple(query.shape)} and {tuple(key.shape)}")
    if query.dtype != key.dtype or not query.is_floating_point():
        raise TypeError(f"query and key must share one floating dtype, got {query.dtype} and {key.dtype}")
    check_int("m", m, where="topm_knn")
    check_int("block_size", block_size, where="topm_knn")
    _check_batch(batch_query, query.size(0), "batch")
    _check_batch(batch_key, key.size(0), "batch_key")


TOPM_KNN = define_op(
    "topm_knn",
    "(Tensor query, Tensor key, int m, Tensor batch_query, Tensor batch_key, int block_size) -> Tensor",
    reference=topm_knn_reference,
    lowering=topm_knn_lowering,
    triton=_triton_knn,
    fake=lambda query, key, m, *_: query.new_empty((query.size(0), min(m, key.size(0))), dtype=torch.long),
    autocast="fp32",  # an index-valued op: rank the candidates at full precision
    validate=_check_knn,
    flops=lambda query, key, *_: 2 * query[0] * key[0] * query[1],
)


def topm_knn(query: Tensor, key: Tensor, m: int, batch: Tensor | None = None, batch_key: Tensor | None = None,
             block_size: int = 1024, backend: str | None = "auto") -> Tensor:
    """Per-query exact top-m keys by dot product, restricted to the query's own graph ('knn' candidates).

    Index selection is not differentiable: gradients reach query and key through :func:`topm_attention`.

    Args:
        query: query features (heads flattened).
        key: key features (heads flattened).
        m: candidates per query; clamped to the number of keys.
        batch: graph id of every query; None means one graph.
        batch_key: graph id of every key; defaults to ``batch`` (self-attention on one vertex set).
        block_size: rows and columns of one similarity tile.
        backend: 'auto', 'torch' or 'triton'.

    Shapes:
        query ``[N, F]``, key ``[S, F]`` -> index ``[N, min(m, S)]`` (int64, best first, ``-1`` = empty slot).
    """
    if batch_key is None:
        batch_key = batch
    if (batch is None) != (batch_key is None):
        raise ValueError("batch and batch_key must be given together when query and key differ")
    if batch is None:
        if not isinstance(query, Tensor) or not isinstance(key, Tensor):
            raise TypeError(f"query and key must be tensors, got {type(query).__name__} and {type(key).__name__}")
        batch = torch.zeros(query.size(0), dtype=torch.long, device=query.device)
        batch_key = torch.zeros(key.size(0), dtype=torch.long, device=key.device)
    return TOPM_KNN(query.detach(), key.detach(), m, batch.long(), batch_key.long(), block_size, backend=backend)


# ---------------------------------------------------------------------------------------------------------------
# Top-m attention
# ---------------------------------------------------------------------------------------------------------------


def _distinct_rows(index: Tensor) -> Tensor:
    """``index[:1]`` when every row is the same view of one candidate set (``expand``: row stride 0, as
    :func:`score_candidates` returns for one graph), else ``index``. Gathering one row instead of N and letting
    ``einsum`` broadcast it keeps 'aux' mode at O(N·m·H) memory rather than O(N·m·H·D)."""
    return index[:1] if index.size(0) > 1 and index.stride(0) == 0 else index


def topm_attention_weights(query: Tensor, key: Tensor, index: Tensor, scale: float) -> Tensor:
    """Softmax weights of every query over its candidates; empty slots (``index == -1``) get exactly 0.

    Shapes:
        query ``[N, H, D]``, key ``[S, H, D]``, index ``[N, m]`` -> weights ``[N, m, H]``.
    """
    index = _distinct_rows(index)  # [N or 1, m]
    valid = (index >= 0).unsqueeze(-1)  # [N or 1, m, 1]
    k = key[index.clamp(min=0)]  # [N or 1, m, H, D]
    logits = torch.einsum("nhd,nmhd->nmh", query, k) * scale  # [N, m, H]
    # A finite fill (not -inf) keeps an all-empty row NaN-free: its uniform weights are zeroed by `valid`.
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=1) * valid


def _row_chunks(num_rows: int) -> list[slice]:
    return [slice(start, start + ROWS_PER_CHUNK) for start in range(0, num_rows, ROWS_PER_CHUNK)]


def _attend(query: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float) -> Tensor:
    """One chunk of queries (all of them in the export lowering, whose sizes are symbolic)."""
    weights = topm_attention_weights(query, key, index, scale)  # [n, m, H]
    v = value[_distinct_rows(index).clamp(min=0)]  # [n or 1, m, H, C]
    return torch.einsum("nmh,nmhc->nhc", weights, v)


def topm_attention_reference(query: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float) -> Tensor:
    """PyTorch reference of :func:`topm_attention`: ``out_n = sum_r softmax_r(q_n·k_{idx[n,r]}·scale) v_{idx[n,r]}``.

    Queries are processed ``ROWS_PER_CHUNK`` at a time, so the gathered candidates never exceed
    ``ROWS_PER_CHUNK·m`` rows whatever N is.

    Shapes:
        query ``[N, H, D]``, key ``[S, H, D]``, value ``[S, H, C]``, index ``[N, m]`` -> out ``[N, H, C]``.
    """
    outs = [_attend(query[rows], key, value, index[rows], scale) for rows in _row_chunks(query.size(0))]
    if not outs:
        return value.new_zeros(0, value.size(1), value.size(2))
    return torch.cat(outs)


def topm_attention_backward_reference(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, index: Tensor,
                                      scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`topm_attention_reference` w.r.t. query, key and value, written out (chunked alike).

    Explicit formulas rather than autograd: a custom op's implementation runs below the autograd dispatch key, so
    it cannot differentiate the reference itself. ``gradcheck`` on the public op checks these formulas.

    Shapes:
        grad_out ``[N, H, C]`` plus the forward inputs -> grad_query ``[N, H, D]``, grad_key ``[S, H, D]``,
        grad_value ``[S, H, C]``.
    """
    grad_q, grad_k, grad_v = torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
    for rows in _row_chunks(query.size(0)):
        q, g_out = query[rows], grad_out[rows]  # [n, H, D], [n, H, C]
        # [n or 1, m]; empty slots carry zero weight, so their gradients vanish
        safe = _distinct_rows(index[rows]).clamp(min=0)
        weights = topm_attention_weights(q, key, index[rows], scale)  # [n, m, H]
        k, v = key[safe], value[safe]  # [n or 1, m, H, D], [n or 1, m, H, C]
        grad_w = torch.einsum("nhc,nmhc->nmh", g_out, v)  # [n, m, H]
        grad_logits = weights * (grad_w - (weights * grad_w).sum(1, keepdim=True)) * scale  # softmax backward
        grad_q[rows] = torch.einsum("nmh,nmhd->nhd", grad_logits, k)
        # A shared candidate set sums its key/value gradients over the queries before the scatter.
        per_row = "" if safe.size(0) == 1 and q.size(0) > 1 else "n"
        flat = safe.reshape(-1)  # [(n or 1)*m]
        grad_k.index_add_(0, flat, torch.einsum(f"nmh,nhd->{per_row}mhd", grad_logits, q).reshape(-1, *key.shape[1:]))
        grad_v.index_add_(0, flat, torch.einsum(f"nmh,nhc->{per_row}mhc", weights, g_out).reshape(-1,
                                                                                                 *value.shape[1:]))
    return grad_q, grad_k, grad_v


def _check_attention(query: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float) -> None:
    for name, t in (("query", query), ("key", key), ("value", value), ("index", index)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f"query, key and value must be 3-D [N, H, D], got {tuple(query.shape)}, "
                         f"{tuple(key.shape)}, {tuple(value.shape)}")
    if query.shape[1:] != key.shape[1:]:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must agree on heads and width")
    if value.shape[:2] != key.shape[:2]:
        raise ValueError(f"value {tuple(value.shape)} must have key's rows and heads {tuple(key.shape[:2])}")
    if not (query.dtype == key.dtype == value.dtype) or not query.is_floating_point():
        raise TypeError(f"query, key and value must share one floating dtype, got {query.dtype}, {key.dtype}, "
                        f"{value.dtype}")
    if index.dim() != 2 or index.size(0) != query.size(0) or index.is_floating_point():
        raise ValueError(f"index must be an integer tensor of shape [{query.size(0)}, m], got {index.dtype} "
                         f"{tuple(index.shape)}")
    _check_index_range(index, key.size(0), "index", lower=-1)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")


def _topm_attention_flops(query, key, value, index, scale) -> int:
    """q.k over the m candidates and weights.v, 2 FLOPs per multiply-add, as SDPA is counted."""
    num_q, heads, head_dim = query
    return 2 * num_q * index[1] * heads * (head_dim + value[2])


TOPM_ATTENTION = define_op(
    "topm_attention",
    "(Tensor query, Tensor key, Tensor value, Tensor index, float scale) -> Tensor",
    reference=topm_attention_reference,
    lowering=_attend,
    triton=("topm_triton", "topm_attention_forward"),
    fake=lambda query, key, value, *_: value.new_empty((query.size(0), value.size(1), value.size(2))),
    backward=topm_attention_backward_reference,
    backward_triton=("topm_triton", "topm_attention_backward"),
    grads_for=("query", "key", "value"),
    autocast="lower",
    validate=_check_attention,
    flops=_topm_attention_flops,
)


def topm_attention(query: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float | None = None,
                   backend: str | None = "auto") -> Tensor:
    """Multi-head scaled dot-product attention of every query over its own m candidate keys.

    Args:
        query: one query per vertex.
        key: keys of the candidate pool.
        value: values of the candidate pool.
        index: the m candidates of every query (rows of ``key``/``value``), ``-1`` for an empty slot.
        scale: logit scale; default ``1/sqrt(D)``.
        backend: 'auto', 'torch' or 'triton'.

    Shapes:
        query ``[N, H, D]``, key ``[S, H, D]``, value ``[S, H, C]``, index ``[N, m]`` -> out ``[N, H, C]``.
    """
    if scale is None:
        scale = query.size(-1) ** -0.5 if isinstance(query, Tensor) else 1.0
    if isinstance(index, Tensor) and not index.is_floating_point():
        index = index.long()  # int32 candidate lists are accepted; the kernels index with int64
    return TOPM_ATTENTION(query, key, value, index, float(scale), backend=backend)
