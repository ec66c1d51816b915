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
* neighbour sampling is vectorised and happens in training mode only; eval mode averages all neighbours;
* bipartite input (PyG's ``(x_src, x_dst)`` convention, not in the paper, whose graphs have one vertex type): the
  destination vertices query, the source vertices are keys, values and neighbours, and the candidates of a
  destination vertex are source vertices of its own graph, so that ``HeteroConv`` and ``to_hetero`` can run the
  layer on every relation of a heterogeneous graph.
"""

from __future__ import annotations

from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj, Size
from torch_geometric.utils import is_sparse, to_edge_index

from attnzoo._checks import check_int
from attnzoo.kernels.topm import (
    SCORE_CANDIDATES,
    sample_neighbor_mask,
    score_candidates,
    topm_attention,
    topm_attention_weights,
    topm_knn,
)
from attnzoo.layers.scripting import NotScriptable

__all__ = ["TopMAttentionConv"]

MODES = ("aux", "knn")

PairX = tuple[Tensor | None, Tensor | None]
PairBatch = tuple[Tensor | None, Tensor | None]


def _channels_ok(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)


def _channel_pair(in_channels: int | tuple[int, int]) -> tuple[int, int]:
    """``(source, destination)`` input widths; an int is used for both sides (as PyG's ``SAGEConv`` does)."""
    if isinstance(in_channels, (tuple, list)) and len(in_channels) == 2 and all(map(_channels_ok, in_channels)):
        return int(in_channels[0]), int(in_channels[1])
    if _channels_ok(in_channels):
        return in_channels, in_channels
    raise ValueError(f"in_channels must be an int >= 1 or -1 (lazy), or a (source, destination) pair of them, got "
                     f"{in_channels!r}")


def _describe(value: object) -> str:
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


class TopMAttentionConv(NotScriptable, MessagePassing):
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

    **Bipartite graphs** (PyG's convention, as in ``GATConv`` and ``TransformerConv``): ``x`` may be a pair
    ``(x_src, x_dst)`` and ``in_channels`` a pair ``(F_src, F_dst)``. Then :math:`i` runs over the destination
    vertices, :math:`j` over the source vertices: queries and the root term come from ``x_dst``; keys, values,
    the relevance scores and the neighbour mean come from ``x_src``; :math:`S(i)` are the sources of the edges
    into :math:`i` and :math:`T(i)` the m sources of :math:`i`'s graph. The layer needs both sides (a ``None``
    side is an error). With that, ``HeteroConv`` and ``to_hetero`` run it on relations between different node
    types. ``batch`` follows PyG's convs that pick neighbours on the fly (``DynamicEdgeConv``, ``GravNetConv``;
    the edge-attention convs take no batch): one vector for both sides, or a pair ``(batch_src, batch_dst)``.

    ``return_attention_weights`` returns, instead of PyG's ``(edge_index, alpha)``, the dense pair
    ``(candidate_index, alpha)``: every destination vertex's candidate source vertices and their attention
    weights. The candidates are not edges of the input graph, so edge-based explainers do not apply to the
    top-m branch: ``GNNExplainer``/``PGExplainer`` edge masks reach only the neighbour branch (whose messages go
    through ``propagate``), and ``AttentionExplainer`` finds no edge attention (``alpha``) to collect.

    Args:
        in_channels: size of each input sample, or :obj:`-1` to derive the size from the first input(s) to the
            forward method; a pair ``(source, destination)`` for bipartite graphs with different widths (an int
            is used for both sides).
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
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V}_s|, F_{s}), (|\mathcal{V}_t|, F_{t}))` if bipartite, edge indices
          :math:`(2, |\mathcal{E}|)` or a sparse adjacency (transposed, PyG style:
          :math:`(|\mathcal{V}_t|, |\mathcal{V}_s|)`), batch vector :math:`(|\mathcal{V}|)` or
          :math:`((|\mathcal{V}_s|), (|\mathcal{V}_t|))` *(optional)*, size :math:`(|\mathcal{V}_s|,
          |\mathcal{V}_t|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}_t|, F_{out})`, or with ``return_attention_weights``
          :math:`((|\mathcal{V}_t|, F_{out}), ((|\mathcal{V}_t|, m'), (|\mathcal{V}_t|, m', H)))`: the candidate
          index into the source vertices (``-1`` marks an empty slot of a graph with fewer than m sources) and its
          attention weights, where :math:`m' = \min(m, |\mathcal{V}_s|)`. The pair has this dense form for every
          ``edge_index`` layout.
    """

    def __init__(self, in_channels: int | tuple[int, int], out_channels: int, m: int = 16, heads: int = 1,
                 num_neighbors: int | None = 10, mode: str = "aux", bias: bool = True, block_size: int = 1024,
                 backend: str | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **kwargs) -> None:
        src_channels, dst_channels = _channel_pair(in_channels)
        for name, value in (("out_channels", out_channels), ("m", m), ("heads", heads),
                            ("block_size", block_size)):
            check_int(name, value, where="TopMAttentionConv")
        if num_neighbors is not None:
            check_int("num_neighbors", num_neighbors, where="TopMAttentionConv")
        if out_channels % heads:
            raise ValueError(f"out_channels={out_channels} must be divisible by heads={heads}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        kwargs.setdefault("aggr", "sum")
        super().__init__(node_dim=0, **kwargs)
        self.in_channels = tuple(in_channels) if isinstance(in_channels, (tuple, list)) else in_channels
        self.out_channels = out_channels
        self.m, self.heads, self.num_neighbors, self.mode = m, heads, num_neighbors, mode
        self.block_size, self.backend = block_size, backend

        def linear(fan_in: int, fan_out: int, with_bias: bool) -> Linear:
            return Linear(fan_in, fan_out, bias=with_bias, weight_initializer="glorot").to(device=device, dtype=dtype)

        # source side: neighbour mean, keys, values; destination side: root term, queries
        self.lin_neighbors = linear(src_channels, out_channels, bias)
        self.lin_root = linear(dst_channels, out_channels, False)
        self.lin_query = linear(dst_channels, out_channels, bias)
        self.lin_key = linear(src_channels, out_channels, bias)
        self.lin_value = linear(src_channels, out_channels, bias)
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

    def _split_x(self, x: Tensor | PairX) -> tuple[Tensor, Tensor, bool]:
        """``(x_src, x_dst, bipartite)``; a tensor is both sides, a pair must have both (queries need x_dst, keys
        and neighbours x_src)."""
        bipartite = isinstance(x, (tuple, list))
        if bipartite:
            if len(x) != 2:
                raise ValueError(f"x must be a tensor or an (x_src, x_dst) pair, got a sequence of {len(x)}")
            for i, (side, t) in enumerate(zip(("source", "destination"), x, strict=True)):
                if t is None:
                    raise ValueError(f"x[{i}] ({side} features) is None; TopMAttentionConv needs both sides of a "
                                     "bipartite x: destination vertices query, source vertices are keys and "
                                     "neighbours (give every node type features, e.g. an embedding)")
            sides = (("x[0]", x[0]), ("x[1]", x[1]))
        else:
            sides = (("x", x),)
        for name, t in sides:
            if not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point():
                raise ValueError(f"{name} must be a floating tensor of shape [N, F], got "
                                 f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        x_src, x_dst = (x[0], x[1]) if bipartite else (x, x)
        if bipartite and x_src.dtype != x_dst.dtype:
            raise ValueError(f"x[0] and x[1] must share one dtype, got {x_src.dtype} and {x_dst.dtype}")
        if not bipartite and isinstance(self.in_channels, int):
            if self.in_channels != -1 and x.size(1) != self.in_channels:
                raise ValueError(f"x has {x.size(1)} features, expected in_channels={self.in_channels}")
        else:
            widths = _channel_pair(self.in_channels)
            where = (("x[0]", "x[1]") if bipartite else ("x", "x"))
            expected = (("in_channels[0]", "in_channels[1]") if isinstance(self.in_channels, tuple)
                        else ("in_channels", "in_channels"))
            for t, width, name, exp in zip((x_src, x_dst), widths, where, expected, strict=True):
                if width != -1 and t.size(1) != width:
                    raise ValueError(f"{name} has {t.size(1)} features, expected {exp}={width}")
        return x_src, x_dst, bipartite

    @staticmethod
    def _check_size(size: Size, num_src: int, num_dst: int) -> None:
        if size is None:
            return
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise ValueError(f"size must be (num_src, num_dst) or None, got {size!r}")
        for i, (side, got, have) in enumerate(zip(("source", "destination"), size, (num_src, num_dst),
                                                  strict=True)):
            if got is not None and int(got) != have:
                raise ValueError(f"size={tuple(size)} does not match the features: size[{i}]={got} but x has "
                                 f"{have} {side} vertices (x_src: {num_src}, x_dst: {num_dst})")

    @staticmethod
    def _split_batch(batch: Tensor | PairBatch | None, num_src: int, num_dst: int,
                     bipartite: bool) -> tuple[Tensor | None, Tensor | None]:
        """``(batch_src, batch_dst)``: one vector serves both sides (it must fit both), a pair is taken as given."""
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"batch must be a vector or a (batch_src, batch_dst) pair, got a sequence of "
                                 f"{len(batch)}")
            if (batch[0] is None) != (batch[1] is None):
                missing = 0 if batch[0] is None else 1
                raise ValueError(f"batch[{missing}] is None but batch[{1 - missing}] is not: the graph of every "
                                 "source and every destination vertex is needed, or neither")
            if batch[0] is None:
                return None, None
            if not bipartite and batch[0] is not batch[1] and not torch.compiler.is_compiling() \
                    and not torch.equal(batch[0], batch[1]):  # a data-dependent check, skipped while compiling
                raise ValueError("batch is a pair of different vectors but x is one vertex set")
            pair = (batch[0], batch[1])
        elif batch is None:
            return None, None
        else:
            pair = (batch, batch)
        for i, (t, num) in enumerate(zip(pair, (num_src, num_dst), strict=True)):
            name = f"batch[{i}]" if isinstance(batch, (tuple, list)) else "batch"
            if not isinstance(t, Tensor) or t.dim() != 1 or t.size(0) != num or t.is_floating_point():
                side = ("source", "destination")[i]
                raise ValueError(f"{name} must be an integer vector with one graph id per {side} vertex "
                                 f"(x_src: {num_src}, x_dst: {num_dst} vertices), got {_describe(t)}")
        return pair

    def _edge_index(self, edge_index: Adj, num_src: int, num_dst: int, bipartite: bool) -> Tensor:
        """A dense ``[2, E]`` source-to-target index from any PyG adjacency layout, validated outside compile."""
        if is_sparse(edge_index):
            if edge_index.size(0) != num_dst or edge_index.size(1) != num_src:
                raise ValueError(f"sparse edge_index must be [{num_dst}, {num_src}] (transposed: destination x "
                                 f"source), got {tuple(edge_index.size())}")
            if self.flow == "target_to_source":
                raise ValueError("flow='target_to_source' is invalid for a sparse adjacency (as in PyG's "
                                 "MessagePassing); pass edge_index as a [2, E] tensor")
            # PyG passes the transposed adjacency: row = target, column = source.
            edge_index = to_edge_index(edge_index)[0].flip(0)
        elif not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2 \
                or edge_index.is_floating_point():
            got = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
            raise ValueError(f"edge_index must be an integer tensor of shape [2, E] or a sparse adjacency, got {got}")
        elif self.flow == "target_to_source":
            edge_index = edge_index.flip(0)
        if not torch.compiler.is_compiling() and edge_index.numel() > 0:
            if not bipartite:
                low, high = int(edge_index.min()), int(edge_index.max())
                if low < 0 or high >= num_src:
                    raise ValueError(f"edge_index must hold node ids in [0, {num_src}), got ids in [{low}, {high}]")
            else:
                row = 1 if self.flow == "target_to_source" else 0  # the caller's row of the source ids
                for ids, side, num, where in ((edge_index[0], "source", num_src, row),
                                              (edge_index[1], "destination", num_dst, 1 - row)):
                    low, high = int(ids.min()), int(ids.max())
                    if low < 0 or high >= num:
                        raise ValueError(f"edge_index[{where}] must hold {side} ids in [0, {num}) (x_src: {num_src}, "
                                         f"x_dst: {num_dst} vertices), got ids in [{low}, {high}]")
        return edge_index.long()

    def _neighbors(self, x: Tensor, edge_index: Tensor, num_dst: int | None = None) -> Tensor:
        """Mean of (sampled) in-neighbour features of every destination vertex; isolated ones get zeros.

        ``edge_index`` is source-to-target whatever ``flow`` is (see ``_edge_index``); ``x`` are the source
        features, ``num_dst`` the number of destinations (default: ``x``'s rows, one vertex set).
        """
        num_src = x.size(0)
        num_dst = num_src if num_dst is None else num_dst
        dst = edge_index[1]
        if self.training and self.num_neighbors is not None:
            weight = sample_neighbor_mask(dst, num_dst, self.num_neighbors).to(x.dtype)
        else:
            weight = x.new_ones(dst.size(0))
        # propagate() reads edge_index in the layer's flow: give it back in that orientation
        if self.flow == "target_to_source":
            edge_index, size = edge_index.flip(0), (num_dst, num_src)
        else:
            size = (num_src, num_dst)
        # propagate_type: (x: Tensor, edge_weight: Tensor)
        total = self.propagate(edge_index, x=x, edge_weight=weight, size=size)  # [N_dst, F_src]
        count = x.new_zeros(num_dst).scatter_add_(0, dst, weight)  # [N_dst]
        return total / count.clamp(min=1).unsqueeze(-1)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return x_j * edge_weight.unsqueeze(-1)

    def _candidates(self, query: Tensor, key: Tensor, value: Tensor, batch: Tensor | None,
                    batch_key: Tensor | None = None, bipartite: bool = False) -> tuple[Tensor, Tensor]:
        """Candidate index ``[N_dst, m']`` into the keys and the values to attend to (relevance-scaled in 'aux'
        mode). ``batch`` holds the graphs of the queries, ``batch_key`` those of the keys (default: ``batch``)."""
        num_keys = key.size(0)
        if self.mode == "knn":
            index = topm_knn(query.flatten(1), key.flatten(1), self.m, batch, batch_key,
                             block_size=self.block_size, backend=self.backend)
            return index, value
        # in >= float32: cosine_similarity's eps (1e-8) underflows in fp16, and a vertex whose ReLU'd key is all zero
        # would then score 0 / 0 = NaN
        wide = torch.promote_types(key.dtype, torch.float32)
        score = F.cosine_similarity(F.relu(key.flatten(1)).to(wide), self.aux.to(wide).unsqueeze(0), dim=-1)  # [S]
        if not bipartite:
            index = score_candidates(score.detach(), self.m, batch)
        elif batch is None:
            index = SCORE_CANDIDATES(score.detach(), self.m, None).expand(query.size(0), -1)  # one shared set
        else:
            index = self._bipartite_candidates(score.detach(), batch_key, batch)
        return index, value * score.to(value.dtype).view(num_keys, 1, 1)

    def _bipartite_candidates(self, score: Tensor, batch_src: Tensor, batch_dst: Tensor) -> Tensor:
        """The m best-scored sources of every destination's graph, through the per-graph ``score_candidates`` op.

        The op ranks one vertex set. The destinations join it as placeholders scored ``-inf`` (below every
        cosine), so the row of a placeholder lists the sources of its graph first, best first, then
        placeholders, which are cut off (columns beyond ``min(m, N_src)``) or marked empty (``-1``).

        Shapes:
            score ``[N_src]``, batch_src ``[N_src]``, batch_dst ``[N_dst]`` -> index ``[N_dst, min(m, N_src)]``.
        """
        num_src = score.size(0)
        placeholders = score.new_full((batch_dst.size(0),), float("-inf"))
        index = score_candidates(torch.cat([score, placeholders]), self.m, torch.cat([batch_src, batch_dst]))
        index = index[num_src:, :min(self.m, num_src)]  # [N_dst, m']
        return index.masked_fill(index >= num_src, -1)

    @overload
    def forward(self, x: Tensor | PairX, edge_index: Adj, batch: Tensor | PairBatch | None = None,
                size: Size = None, return_attention_weights: None = None) -> Tensor: ...

    @overload
    def forward(self, x: Tensor | PairX, edge_index: Adj, batch: Tensor | PairBatch | None = None,
                size: Size = None, return_attention_weights: bool = ...
                ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]: ...

    def forward(self, x: Tensor | PairX, edge_index: Adj, batch: Tensor | PairBatch | None = None,
                size: Size = None, return_attention_weights: bool | None = None
                ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Args:
            x: node features, or ``(x_src, x_dst)`` for a bipartite graph.
            edge_index: graph connectivity (``[2, E]`` tensor, torch sparse or ``SparseTensor`` adjacency).
            batch: graph id of every node (PyG mini-batch), or ``(batch_src, batch_dst)``; candidates never cross
                graphs.
            size: ``(N_src, N_dst)`` as PyG passes it; checked against ``x``.
            return_attention_weights: also return ``(candidate_index, attention_weights)`` (when true).
        """
        x_src, x_dst, bipartite = self._split_x(x)
        num_src, num_dst = x_src.size(0), x_dst.size(0)
        self._check_size(size, num_src, num_dst)
        batch_src, batch_dst = self._split_batch(batch, num_src, num_dst, bipartite)
        edge_index = self._edge_index(edge_index, num_src, num_dst, bipartite)
        h_neighbors = self.lin_neighbors(self._neighbors(x_src, edge_index, num_dst))  # [N_dst, out]
        h_neighbors = h_neighbors + self.lin_root(x_dst)

        heads, width = self.heads, self.out_channels // self.heads
        query = self.lin_query(x_dst).view(num_dst, heads, width)  # [N_dst, H, D]
        key = self.lin_key(x_src).view(num_src, heads, width)  # [N_src, H, D]
        value = self.lin_value(x_src).view(num_src, heads, width)  # [N_src, H, D]
        # [N_dst, m'] into the sources, [N_src, H, D]
        index, value = self._candidates(query, key, value, batch_dst, batch_src, bipartite)
        scale = width ** -0.5
        h_top = topm_attention(query, key, value, index, scale, backend=self.backend)  # [N_dst, H, D]
        out = self.lin_out(torch.cat([h_neighbors, h_top.flatten(1)], dim=-1))  # [N_dst, out]
        if return_attention_weights:
            return out, (index, topm_attention_weights(query, key, index, scale))
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, m={self.m}, "
                f"heads={self.heads}, mode={self.mode!r})")
