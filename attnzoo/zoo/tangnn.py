"""TANGNN and TANGNN-LC node models and a TANGNN graph model (arXiv:2411.15458), built like PyG's ``BasicGNN``.

TANGNN and TANGNN-LC stack :class:`attnzoo.layers.topm.TopMAttentionConv` layers with PyG's ``BasicGNN`` machinery
(activation, normalisation, dropout, jumping knowledge, output projection). TANGNN-LC is the paper's variant that
concatenates every layer's output before the head, i.e. ``jk='cat'``; the authors' LC code only type-checks for two
layers, this one takes any depth. Unlike ``BasicGNN.forward``, the ``batch`` vector reaches every conv, so that the
top-m candidates of a mini-batch of graphs stay inside their own graph.

:class:`TANGNNGraph` is the graph-level model (graph classification and regression, which the paper reports): the
same TANGNN layers, one of PyG's global pooling readouts over every graph of the batch, and an MLP head, the way
PyG's graph-classification examples put a ``global_*_pool`` and an ``MLP`` after a ``BasicGNN``. The paper's
readout is not in the spec or the authors' code (which is node-level only), so the readout is a choice, mean by
default.

Registered in the attnzoo registry with task ``'graph'`` by :mod:`attnzoo.zoo.host_models`, which imports this
module (and PyG) when one of them is built::

    model = attnzoo.create_model('tangnn', in_channels=34, hidden_channels=32, out_channels=4, num_layers=2, m=8)
    graph_model = attnzoo.create_model('tangnn_graph', in_channels=3, hidden_channels=64, out_channels=10,
                                       num_layers=3, m=8, readout='mean')
    logits = graph_model(batch.x, batch.edge_index, batch.batch)  # [num_graphs, 10]
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from attnzoo._checks import check_int
from attnzoo.layers.scripting import torch_jit_script_deprecation_silenced

# this module is imported on first use, not by `import attnzoo`
with torch_jit_script_deprecation_silenced():
    from torch_geometric.nn import MLP, global_add_pool, global_max_pool, global_mean_pool
    from torch_geometric.nn.aggr import Aggregation
    from torch_geometric.nn.models.basic_gnn import BasicGNN
    from torch_geometric.typing import Adj

    from attnzoo.layers.topm import TopMAttentionConv

__all__ = ["READOUTS", "TANGNN", "TANGNNGraph", "TANGNN_LC"]

# PyG's global pooling functions by readout name ('sum' is PyG's other name for 'add')
READOUTS: dict[str, Callable[..., Tensor]] = {"mean": global_mean_pool, "add": global_add_pool,
                                               "sum": global_add_pool, "max": global_max_pool}


class TANGNN(BasicGNN):
    r"""The TANGNN model from the `"TANGNN: a Concise, Scalable and Effective Graph Neural Networks with Top-m
    Attention Mechanism for Graph Representation Learning" <https://arxiv.org/abs/2411.15458>`_ paper, using
    :class:`~attnzoo.layers.topm.TopMAttentionConv` layers.

    Args:
        in_channels: size of each input sample, or :obj:`-1` to derive the size from the first input(s) to the
            forward method.
        hidden_channels: size of each hidden sample.
        num_layers: number of message passing layers.
        out_channels: size of each output sample; None keeps ``hidden_channels``.
        dropout: dropout probability between layers.
        act: non-linearity (name or callable), resolved by PyG.
        norm: normalisation between layers (name or callable), resolved by PyG.
        jk: jumping-knowledge mode ('last', 'cat', 'max', 'lstm') or None.
        **kwargs: :class:`~attnzoo.layers.topm.TopMAttentionConv` arguments (``m``, ``heads``,
            ``num_neighbors``, ``mode``, ...). A layer whose width ``heads`` does not divide (a class count)
            uses one head.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`, edge indices :math:`(2, |\mathcal{E}|)` or a
          sparse adjacency, batch vector :math:`(|\mathcal{V}|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})`
    """

    supports_edge_weight = False
    supports_edge_attr = False
    supports_norm_batch: bool

    def init_conv(self, in_channels: int, out_channels: int, **kwargs) -> TopMAttentionConv:
        heads = kwargs.pop("heads", 1)
        return TopMAttentionConv(in_channels, out_channels, heads=heads if out_channels % heads == 0 else 1,
                                 **kwargs)

    def forward(self, x: Tensor, edge_index: Adj, batch: Tensor | None = None,
                batch_size: int | None = None) -> Tensor:
        """Args:
            x: node features.
            edge_index: graph connectivity.
            batch: graph id of every node; keeps attention inside each graph and feeds batch-aware norms.
            batch_size: number of graphs, for batch-aware norms.
        """
        xs: list[Tensor] = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = conv(x, edge_index, batch)
            if i < self.num_layers - 1 or self.jk_mode is not None:
                if self.act is not None and self.act_first:
                    x = self.act(x)
                x = norm(x, batch, batch_size) if self.supports_norm_batch else norm(x)
                if self.act is not None and not self.act_first:
                    x = self.act(x)
                x = self.dropout(x)
                xs.append(x)
        x = self.jk(xs) if hasattr(self, "jk") else x
        return self.lin(x) if hasattr(self, "lin") else x

    @staticmethod
    def decode(z: Tensor, edge_label_index: Tensor) -> Tensor:
        """Link-prediction logits: inner product of the two end points' embeddings.

        Shapes:
            z ``[N, F]``, edge_label_index ``[2, E']`` -> logits ``[E']``.
        """
        return (z[edge_label_index[0]] * z[edge_label_index[1]]).sum(dim=-1)


class TANGNN_LC(TANGNN):  # noqa: N801 -- the paper's name for the variant
    """TANGNN-LC: TANGNN whose head reads the concatenation of every layer's output (``jk='cat'``).

    Args:
        in_channels: size of each input sample, or -1 (lazy).
        hidden_channels: size of each hidden sample.
        num_layers: number of message passing layers.
        out_channels: size of each output sample; None keeps ``hidden_channels``.
        **kwargs: further :class:`TANGNN` arguments.

    Shapes:
        as :class:`TANGNN`.
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int | None = None,
                 **kwargs) -> None:
        kwargs.setdefault("jk", "cat")
        super().__init__(in_channels, hidden_channels, num_layers, out_channels, **kwargs)


class TANGNNGraph(TANGNN):
    r"""TANGNN for graph-level tasks: TANGNN layers, a global pooling readout per graph, an MLP head.

    .. math::
        \mathbf{y}_g = \mathrm{MLP}\Big(\mathrm{readout}_{i \in g}\, \sigma\big(\mathrm{TANGNN}(\mathbf{X},
        \mathbf{A})_i\big)\Big)

    The node part is :class:`TANGNN` (``out_channels=None``, so it ends at ``hidden_channels``; with ``jk`` set its
    output projection maps the jumping-knowledge features back to ``hidden_channels``); the last layer's output
    goes through the activation before the readout, as every other layer's does. Top-m candidates stay inside
    each graph of the ``batch``.

    Args:
        in_channels: size of each input sample, or -1 (lazy).
        hidden_channels: size of each hidden sample (node layers and the head's hidden layer).
        num_layers: number of message passing layers.
        out_channels: outputs per graph (classes, or targets of a regression).
        readout: ``'mean'``, ``'add'``/``'sum'`` or ``'max'`` (PyG's ``global_mean_pool``/``global_add_pool``/
            ``global_max_pool``), or a PyG :class:`~torch_geometric.nn.aggr.Aggregation` module for a learned
            readout (e.g. ``AttentionalAggregation``), called as ``aggr(x, batch, dim_size=batch_size)``.
        head_dropout: dropout of the MLP head.
        **kwargs: further :class:`TANGNN` arguments (``m``, ``heads``, ``mode``, ``num_neighbors``, ``dropout``,
            ``norm``, ``jk``, ...).

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`, edge indices :math:`(2, |\mathcal{E}|)`, batch
          vector :math:`(|\mathcal{V}|)` *(optional: one graph without it)*
        - **output:** :math:`(B, F_{out})`, one row per graph (:math:`B = 1` without ``batch``)
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 readout: str | Aggregation = "mean", head_dropout: float = 0.0, **kwargs) -> None:
        if kwargs.get("out_channels") is not None:
            raise ValueError("out_channels is given once, as the graph-level output size")
        if isinstance(readout, str) and readout not in READOUTS:
            raise ValueError(f"readout must be one of {sorted(READOUTS)} or a torch_geometric Aggregation, got "
                             f"{readout!r}")
        if not isinstance(readout, (str, Aggregation)):
            raise ValueError(f"readout must be a name or a torch_geometric.nn.aggr.Aggregation, got "
                             f"{type(readout).__name__}")
        check_int("out_channels", out_channels, where=type(self).__name__)
        super().__init__(in_channels, hidden_channels, num_layers, out_channels=None, **kwargs)
        # a name picks one of PyG's global pooling functions; a module (and its parameters) is kept as ``pool``
        self.readout = readout if isinstance(readout, str) else None
        self.pool = readout if isinstance(readout, Aggregation) else None
        self.head = MLP([hidden_channels, hidden_channels, out_channels], norm=None, dropout=head_dropout)
        self.out_channels = out_channels

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.pool is not None:
            self.pool.reset_parameters()
        self.head.reset_parameters()

    def node_embeddings(self, x: Tensor, edge_index: Adj, batch: Tensor | None = None,
                        batch_size: int | None = None) -> Tensor:
        """The per-node features the readout pools, ``[N, hidden_channels]``."""
        x = super().forward(x, edge_index, batch, batch_size)
        if self.jk_mode is None and self.act is not None:
            x = self.act(x)
        return x

    def forward(self, x: Tensor, edge_index: Adj, batch: Tensor | None = None,
                batch_size: int | None = None) -> Tensor:
        """Args:
            x: node features.
            edge_index: graph connectivity.
            batch: graph id of every node (PyG mini-batch); None means one graph.
            batch_size: number of graphs; give it under ``torch.compile``/export so that it is not read from
                ``batch`` (a device sync).
        """
        h = self.node_embeddings(x, edge_index, batch, batch_size)  # [N, hidden]
        if self.pool is not None:
            g = self.pool(h, batch, dim_size=batch_size)
        else:
            g = READOUTS[self.readout](h, batch, batch_size)  # [B, hidden]
        return self.head(g)  # [B, out]

    def __repr__(self) -> str:
        readout = self.readout if self.pool is None else repr(self.pool)
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, num_layers={self.num_layers}, "
                f"readout={readout!r})")
