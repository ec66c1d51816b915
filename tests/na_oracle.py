"""NATTEN's neighborhood attention written from its definition, with Python ints: the oracle of the op and layer tests.

Transcribed from NATTEN's reference mask (``csrc/include/natten/cuda/reference/mask.hpp``: ``get_win_start``/
``get_win_end`` in group coordinates, ``qkv_fix_dilation`` for the group lengths), independently of the op's tensor
formulas, and evaluated as dense masked attention over all N x N pairs.
"""

from __future__ import annotations

import itertools

import torch


def natten_window(i: int, length: int, kernel: int, dilation: int, stride: int, causal: bool) -> list[int]:
    """Keys of query ``i`` along one dimension, NATTEN's reference mask transcribed with Python ints."""
    g, ip = i % dilation, i // dilation
    group_len = length // dilation + (1 if g < length % dilation else 0)  # qkv_fix_dilation
    left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
    if causal:
        leader = min((ip // stride) * stride + stride - 1, group_len - 1)
        start, end = max(leader - left - right, 0), min(ip + 1, group_len)
    else:
        leader = min((ip // stride) * stride + stride // 2, group_len - 1)
        start = max(leader - left, 0) + (leader + right >= group_len) * (group_len - right - leader - 1)
        end = start + kernel
    return [j * dilation + g for j in range(start, end)]


def allowed(length, kernel, dilation, stride, causal) -> torch.Tensor:
    mask = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        mask[i, natten_window(i, length, kernel, dilation, stride, causal)] = True
    return mask


def dense_attention(q, k, v, kernel, dilation, stride, causal, rpb=None, scale=1.0):
    """Masked attention over all N x N pairs (fp64), with NAT's bias read at the true offset in dilated units."""
    spatial, heads = q.shape[1:-2], q.shape[-2]
    coords = torch.tensor(list(itertools.product(*[range(n) for n in spatial])))  # (N, nd) row-major
    mask = torch.ones(len(coords), len(coords), dtype=torch.bool)
    for i, args in enumerate(zip(spatial, kernel, dilation, stride, causal, strict=True)):
        mask &= allowed(*args)[coords[:, i, None], coords[None, :, i]]
    qf, kf, vf = (t.reshape(t.shape[0], -1, heads, t.shape[-1]).transpose(1, 2) for t in (q, k, v))
    logits = (qf * scale) @ kf.transpose(-1, -2)
    if rpb is not None:
        offsets = [(coords[None, :, i] // d - coords[:, None, i] // d + kern - 1).clamp(0, 2 * kern - 2)
                   for i, (kern, d) in enumerate(zip(kernel, dilation, strict=True))]
        logits = logits + rpb[(slice(None), *offsets)]
    out = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ vf
    return out.transpose(1, 2).reshape(*q.shape[:-1], v.shape[-1])
