"""TANGNN layer: neighbourhood aggregation plus top-m attention, as a PyTorch Geometric ``MessagePassing`` conv.

Paper: "TANGNN: a Concise, Scalable and Effective Graph Neural Networks with Top-m Attention Mechanism for Graph
Representation Learning" (E, Zhang, Xia and Xu, 2024), https://arxiv.org/abs/2411.15458.

Follows the paper: every layer has (a) a GraphSAGE-style mean aggregation over a fixed number of randomly
sampled neighbours and (b) an attention aggregation over the m vertices most relevant to the vertex, where
relevance is the cosine similarity between the ReLU'd vertex embeddings and a learnable auxiliary vector; the
two outputs are concatenated and projected (the authors' code concatenates too).

Deliberately differs from the authors' code (``ejwww/TANGNN``), whose defects are not inherited:

* attention is per vertex -- every vertex queries its m candidates with multi-head scaled dot-product attention
  (O(N·m·d)); the code tiles the m selected rows over the vertices, and two variants run full N×N attention;
* relevance is scored on the layer's key embeddings ``ReLU(x W_k)``, so the auxiliary vector lives in a learned
  space of fixed width in every layer (the code silently swaps it for an all-ones vector when widths differ);
* the auxiliary vector gets gradients: the candidates' values are scaled by their relevance score (as gPool /
  ``TopKPooling`` scales the kept features by theirs); the code's top-k gives it none and ``update_a`` is unused;
* candidates are chosen per graph of a ``batch``, so graphs never attend to each other;
* a second candidate mode, ``'knn'``, takes every vertex's exact top-m keys by query-key similarity inside its
  graph, searched in blocks (memory O(N·m), compute O(N²·d));
* neighbour sampling is vectorised and happens in training mode only; eval mode averages all neighbours.
"""

from __future__ import annotations

from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj
from torch_geometric.utils import is_sparse, to_edge_index

from attnzoo.kernels.topm import (
    sample_neighbor_mask,
    score_candidates,
    topm_attention,
    topm_attention_weights,
    topm_knn,
)

__all__ = ["TopMAttentionConv"]

MODES = ("aux", "knn")


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if allow_none else ''}, got {value!r}")


class TopMAttentionConv(MessagePassing):
    r"""The top-m attention operator from the `"TANGNN: a Concise, Scalable and Effective Graph Neural Networks
    with Top-m Attention Mechanism for Graph Representation Learning" <https://arxiv.org/abs/2411.15458>`_ paper.

    .. math::
        \mathbf{h}^{N}_i &= \mathbf{W}_1 \mathbf{x}_i + \mathbf{W}_2 \cdot \mathrm{mean}_{j \in S(i)} \mathbf{x}_j

        \mathbf{h}^{T}_i &= \big\Vert_{h=1}^{H} \sum_{j \in T(i)} \mathrm{softmax}_j\Big(
            \frac{\mathbf{q}^h_i \cdot \mathbf{k}^h_j}{\sqrt{d}}\Big)\, g_j \mathbf{v}^h_j

        \mathbf{x}^{\prime}_i &= \mathbf{W}_3 \left[\mathbf{h}^{N}_i \,\Vert\, \mathbf{h}^{T}_i\right]

    where :math:`S(i)` holds at most ``num_neighbors`` randomly sampled in-neighbours (all of them in eval
    mode) and :math:`T(i)` the m candidates of :math:`i` in its own graph. In ``'aux'`` mode :math:`T(i)` is
    the m vertices with the highest relevance :math:`g_j = \cos(\mathrm{ReLU}(\mathbf{k}_j), \mathbf{a})` to
    a learnable auxiliary vector :math:`\mathbf{a}` (shared by the graph); in ``'knn'`` mode it is the exact
    top-m of :math:`\sum_h \mathbf{q}^h_i \cdot \mathbf{k}^h_j` and :math:`g_j = 1`.

    Args:
        in_channels: size of each input sample, or :obj:`-1` to derive the size from the first input(s) to the
            forward method.
        out_channels: size of each output sample; split evenly over the attention heads.
        m: candidates every vertex attends to; clamped to the size of its graph.
        heads: number of attention heads (must divide ``out_channels``).
        num_neighbors: neighbours sampled per vertex in training mode; None keeps all of them.
        mode: ``'aux'`` (ranking by the auxiliary vector, O(N·m·d)) or ``'knn'`` (exact per-vertex top-m by
            query-key similarity, O(N²·d) compute, O(N·m) memory).
        bias: learn additive biases.
        block_size: rows and columns of one similarity tile in ``'knn'`` mode.
        backend: kernel backend ('auto', 'torch', 'triton'); None follows :func:`attnzoo.kernels.set_backend`.
        device: device of the parameters.
        dtype: dtype of the parameters.
        **kwargs: further :class:`torch_geometric.nn.conv.MessagePassing` arguments.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`, edge indices :math:`(2, |\mathcal{E}|)` or a
          sparse adjacency (transposed, PyG style), batch vector :math:`(|\mathcal{V}|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})`, or with ``return_attention_weights``
          :math:`((|\mathcal{V}|, F_{out}), ((|\mathcal{V}|, m'), (|\mathcal{V}|, m', H)))`: the candidate
          index (``-1`` marks an empty slot of a graph smaller than m) and its attention weights, where
          :math:`m' = \min(m, |\mathcal{V}|)`. The candidates are not edges of the input graph, so the pair is
          returned in this dense form for every ``edge_index`` layout.
    """

    def __init__(self, in_channels: int, out_channels: int, m: int = 16, heads: int = 1,
                 num_neighbors: int | None = 10, mode: str = "aux", bias: bool = True, block_size: int = 1024,
                 backend: str | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **kwargs) -> None:
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or (in_channels < 1
                                                                                 and in_channels != -1):
            raise ValueError(f"in_channels must be an int >= 1 or -1 (lazy), got {in_channels!r}")
        for name, value in (("out_channels", out_channels), ("m", m), ("heads", heads),
                            ("block_size", block_size)):
            _check_positive(name, value)
        _check_positive("num_neighbors", num_neighbors, allow_none=True)
        if out_channels % heads:
            raise ValueError(f"out_channels={out_channels} must be divisible by heads={heads}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        kwargs.setdefault("aggr", "sum")
        super().__init__(node_dim=0, **kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.m, self.heads, self.num_neighbors, self.mode = m, heads, num_neighbors, mode
        self.block_size, self.backend = block_size, backend

        def linear(fan_in: int, fan_out: int, with_bias: bool) -> Linear:
            return Linear(fan_in, fan_out, bias=with_bias, weight_initializer="glorot").to(device=device, dtype=dtype)

        self.lin_neighbors = linear(in_channels, out_channels, bias)
        self.lin_root = linear(in_channels, out_channels, False)
        self.lin_query = linear(in_channels, out_channels, bias)
        self.lin_key = linear(in_channels, out_channels, bias)
        self.lin_value = linear(in_channels, out_channels, bias)
        self.lin_out = linear(2 * out_channels, out_channels, bias)
        if mode == "aux":
            self.aux = torch.nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("aux", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_neighbors, self.lin_root, self.lin_query, self.lin_key, self.lin_value, self.lin_out):
            lin.reset_parameters()
        if self.aux is not None:
            torch.nn.init.normal_(self.aux)

    def _edge_index(self, edge_index: Adj, num_nodes: int) -> Tensor:
        """A dense ``[2, E]`` source-to-target index from any PyG adjacency layout, validated outside compile."""
        if is_sparse(edge_index):
            if edge_index.size(0) != num_nodes or edge_index.size(1) != num_nodes:
                raise ValueError(f"sparse edge_index must be [{num_nodes}, {num_nodes}], got "
                                 f"{tuple(edge_index.size())}")
            # PyG passes the transposed adjacency: row = target, column = source.
            edge_index = to_edge_index(edge_index)[0].flip(0)
        elif not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2 \
                or edge_index.is_floating_point():
            got = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
            raise ValueError(f"edge_index must be an integer tensor of shape [2, E] or a sparse adjacency, got {got}")
        if self.flow == "target_to_source":
            edge_index = edge_index.flip(0)
        if not torch.compiler.is_compiling() and edge_index.numel() > 0:
            low, high = int(edge_index.min()), int(edge_index.max())
            if low < 0 or high >= num_nodes:
                raise ValueError(f"edge_index must hold node ids in [0, {num_nodes}), got ids in [{low}, {high}]")
        return edge_index.long()

    def _neighbors(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Mean of (sampled) in-neighbour features; isolated vertices get zeros."""
        num_nodes, dst = x.size(0), edge_index[1]
        if self.training and self.num_neighbors is not None:
            weight = sample_neighbor_mask(dst, num_nodes, self.num_neighbors).to(x.dtype)
        else:
            weight = x.new_ones(dst.size(0))
        # propagate_type: (x: Tensor, edge_weight: Tensor)
        total = self.propagate(edge_index, x=x, edge_weight=weight, size=(num_nodes, num_nodes))  # [N, F_in]
        count = x.new_zeros(num_nodes).scatter_add_(0, dst, weight)  # [N]
        return total / count.clamp(min=1).unsqueeze(-1)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return x_j * edge_weight.unsqueeze(-1)

    def _candidates(self, query: Tensor, key: Tensor, value: Tensor, batch: Tensor | None) -> tuple[Tensor, Tensor]:
        """Candidate index ``[N, m']`` and the values to attend to (relevance-scaled in 'aux' mode)."""
        num_nodes = key.size(0)
        if self.mode == "knn":
            index = topm_knn(query.flatten(1), key.flatten(1), self.m, batch,
                             block_size=self.block_size, backend=self.backend)
            return index, value
        # in >= float32: cosine_similarity's eps (1e-8) underflows in fp16, and a vertex whose ReLU'd key is all zero
        # would then score 0 / 0 = NaN
        wide = torch.promote_types(key.dtype, torch.float32)
        score = F.cosine_similarity(F.relu(key.flatten(1)).to(wide), self.aux.to(wide).unsqueeze(0), dim=-1)  # [N]
        index = score_candidates(score.detach(), self.m, batch)
        return index, value * score.to(value.dtype).view(num_nodes, 1, 1)

    @overload
    def forward(self, x: Tensor, edge_index: Adj, batch: Tensor | None = None,
                return_attention_weights: None = None) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, edge_index: Adj, batch: Tensor | None = None,
                return_attention_weights: bool = ...) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]: ...

    def forward(self, x: Tensor, edge_index: Adj, batch: Tensor | None = None,
                return_attention_weights: bool | None = None) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Args:
            x: node features.
            edge_index: graph connectivity (``[2, E]`` tensor, torch sparse or ``SparseTensor`` adjacency).
            batch: graph id of every node (PyG mini-batch); candidates never cross graphs.
            return_attention_weights: also return ``(candidate_index, attention_weights)``.
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor of shape [N, F], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if self.in_channels != -1 and x.size(1) != self.in_channels:
            raise ValueError(f"x has {x.size(1)} features, expected in_channels={self.in_channels}")
        num_nodes = x.size(0)
        edge_index = self._edge_index(edge_index, num_nodes)
        h_neighbors = self.lin_neighbors(self._neighbors(x, edge_index)) + self.lin_root(x)  # [N, out]

        shape = (num_nodes, self.heads, self.out_channels // self.heads)
        query, key = self.lin_query(x).view(shape), self.lin_key(x).view(shape)  # [N, H, D]
        value = self.lin_value(x).view(shape)  # [N, H, D]
        index, value = self._candidates(query, key, value, batch)  # [N, m'], [N, H, D]
        scale = shape[-1] ** -0.5
        h_top = topm_attention(query, key, value, index, scale, backend=self.backend)  # [N, H, D]
        out = self.lin_out(torch.cat([h_neighbors, h_top.flatten(1)], dim=-1))  # [N, out]
        if return_attention_weights:
            return out, (index, topm_attention_weights(query, key, index, scale))
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, m={self.m}, "
                f"heads={self.heads}, mode={self.mode!r})")
