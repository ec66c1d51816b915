"""TANGNN and TANGNN-LC node models (arXiv:2411.15458), built like PyG's ``BasicGNN`` models.

Both stack :class:`attnzoo.layers.topm.TopMAttentionConv` layers with PyG's ``BasicGNN`` machinery (activation,
normalisation, dropout, jumping knowledge, output projection). TANGNN-LC is the paper's variant that concatenates
every layer's output before the head, i.e. ``jk='cat'``; the authors' LC code only type-checks for two layers,
this one takes any depth. Unlike ``BasicGNN.forward``, the ``batch`` vector reaches every conv, so that the top-m
candidates of a mini-batch of graphs stay inside their own graph.

Registered in the attnzoo registry with task ``'graph'``::

    model = attnzoo.create_model('tangnn', in_channels=34, hidden_channels=32, out_channels=4, num_layers=2, m=8)
"""

from __future__ import annotations

from torch import Tensor
from torch_geometric.nn.models.basic_gnn import BasicGNN
from torch_geometric.typing import Adj

from attnzoo.layers.topm import TopMAttentionConv
from attnzoo.zoo._registry import register_model

__all__ = ["TANGNN", "TANGNN_LC", "tangnn", "tangnn_lc"]


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


def _build(cls: type[TANGNN], kwargs: dict) -> TANGNN:
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    return cls(**kwargs).to(device=device, dtype=dtype)


@register_model("graph")
def tangnn(**kwargs) -> TANGNN:
    """TANGNN (``in_channels``, ``hidden_channels``, ``num_layers``, ``out_channels``, ``m``, ``heads``, ...)."""
    return _build(TANGNN, kwargs)


@register_model("graph")
def tangnn_lc(**kwargs) -> TANGNN_LC:
    """TANGNN-LC: layer outputs concatenated before the head."""
    return _build(TANGNN_LC, kwargs)
