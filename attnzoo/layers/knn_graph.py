"""The exact k-nearest-neighbour graph of a feature matrix, blockwise (memory O(N·k), never N×N).

A graph-building function beside the layers, as PyG keeps ``knn_graph`` in ``torch_geometric.nn`` for its
transforms and datasets: attnzoo's datasets (:mod:`attnzoo.data`) build their k-NN graphs with it. The search is
:func:`attnzoo.kernels.topm_knn` (ties broken by index), so it needs no torch-cluster.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.kernels.topm import topm_knn

__all__ = ["knn_graph"]


def knn_graph(features: Tensor, k: int, block_size: int = 1024, cosine: bool = False) -> Tensor:
    """Directed k-NN graph: an edge from each of a vertex's k nearest neighbours to the vertex (PyG's flow).

    Exact search by Euclidean distance (or cosine similarity), computed in blocks: ``-|x - y|²`` ranks like
    ``2x·y - |y|²``, a dot product of ``[2x, -1]`` with ``[y, |y|²]``. A vertex is never its own neighbour.

    Args:
        features: one row per vertex.
        k: neighbours per vertex (clamped to N - 1).
        block_size: rows and columns of one similarity tile.
        cosine: rank by cosine similarity instead of Euclidean distance.

    Shapes:
        features ``[N, F]`` -> edge_index ``[2, N·min(k, N-1)]``.
    """
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a floating tensor [N, F], got {features.dtype} {tuple(features.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num = features.size(0)
    k = min(k, num - 1)
    if k < 1:
        return torch.empty(2, 0, dtype=torch.long, device=features.device)
    if cosine:
        query = key = torch.nn.functional.normalize(features, dim=1)
    else:
        ones = features.new_ones(num, 1)
        query = torch.cat([2 * features, -ones], 1)  # [N, F+1]
        key = torch.cat([features, features.square().sum(1, keepdim=True)], 1)  # [N, F+1]
    cand = topm_knn(query, key, k + 1, block_size=block_size, backend="torch")  # [N, k+1]
    # Drop the vertex itself; where exact duplicates outrank it, drop the last candidate instead.
    keep = cand != torch.arange(num, device=cand.device).unsqueeze(1)
    keep &= torch.cumsum(keep, 1) <= k
    target = torch.arange(num, device=cand.device).unsqueeze(1).expand_as(cand)
    return torch.stack([cand[keep], target[keep]])
