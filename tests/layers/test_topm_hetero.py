"""TopMAttentionConv on heterogeneous graphs: PyG's HeteroConv and to_hetero on FakeHeteroDataset, compiled too."""

import random

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.datasets import FakeHeteroDataset
from torch_geometric.nn import HeteroConv, to_hetero
from torch_geometric.utils.hetero import check_add_self_loops

from attnzoo.layers.topm import TopMAttentionConv
from attnzoo.zoo.tangnn import TANGNN


def _fake_hetero(num_graphs: int, seed: int = 0) -> FakeHeteroDataset:
    """Three node types of different widths, six relations (FakeHeteroDataset draws them with `random`)."""
    state = random.getstate()
    try:
        random.seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return FakeHeteroDataset(num_graphs=num_graphs, num_node_types=3, num_edge_types=6, avg_num_nodes=14,
                                     avg_degree=3, avg_num_channels=8)
    finally:
        random.setstate(state)


@pytest.fixture(scope="module")
def graph():
    data = _fake_hetero(1)[0]
    widths = {t: data[t].x.size(1) for t in data.node_types}
    cross = [(s, r, d) for s, r, d in data.edge_types if s != d and widths[s] != widths[d]]
    # the relations this file is about: between two node types, with different feature widths
    assert len(data.node_types) == 3 and len(data.edge_types) == 6 and len(cross) >= 2
    assert len({d for _, _, d in data.edge_types}) == 3  # every node type receives messages
    return data


def _inputs(data, node_type, edge_type):
    src, _, dst = edge_type
    return data[src].x if src == dst else (data[src].x, data[dst].x)


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_heteroconv_sums_one_bipartite_conv_per_relation(graph, mode):
    torch.manual_seed(0)
    conv = HeteroConv({et: TopMAttentionConv((-1, -1), 16, m=4, heads=2, mode=mode) for et in graph.edge_types},
                      aggr="sum").eval()
    with torch.no_grad():
        out = conv(graph.x_dict, graph.edge_index_dict)
        expected = {}
        for et in graph.edge_types:
            rel = conv.convs[et]
            y = rel(_inputs(graph, et[2], et), graph[et].edge_index)
            expected[et[2]] = expected.get(et[2], 0) + y
            src, _, dst = et
            assert rel.lin_key.in_channels == graph[src].x.size(1) and rel.lin_query.in_channels == graph[dst].x.size(1)
    assert out.keys() == expected.keys() == set(graph.node_types)
    for t in graph.node_types:
        assert out[t].shape == (graph[t].num_nodes, 16)
        torch.testing.assert_close(out[t], expected[t])


def _by_hand(hetero, data, batch_dict=None):
    """What to_hetero(TANGNN) must compute: per layer, the sum over relations of the relation's conv, then ReLU."""
    h = dict(data.x_dict)
    for layer, convs in enumerate(hetero.convs):
        new = {}
        for et in data.edge_types:
            src, _, dst = et
            conv = convs["__".join(et)]
            x = h[src] if src == dst else (h[src], h[dst])
            batch = None if batch_dict is None else (batch_dict[src] if src == dst else (batch_dict[src],
                                                                                          batch_dict[dst]))
            new[dst] = new.get(dst, 0) + conv(x, data[et].edge_index, batch)
        h = {t: v.relu() if layer < len(hetero.convs) - 1 else v for t, v in new.items()}
    return h


def test_to_hetero_tangnn_runs_every_relation(graph):
    torch.manual_seed(1)
    model = to_hetero(TANGNN(-1, 16, 2, out_channels=4, m=4, heads=2), graph.metadata(), aggr="sum").eval()
    check_add_self_loops(model, graph.edge_types)  # what to_hetero asks of a conv on bipartite relations
    with torch.no_grad():
        out = model(graph.x_dict, graph.edge_index_dict)
        expected = _by_hand(model, graph)
    for t in graph.node_types:
        assert out[t].shape == (graph[t].num_nodes, 4)
        torch.testing.assert_close(out[t], expected[t])


def test_to_hetero_mini_batch_keeps_candidates_in_each_graph():
    dataset = _fake_hetero(3, seed=2)
    batch = Batch.from_data_list([dataset[i] for i in range(3)])
    torch.manual_seed(2)
    model = to_hetero(TANGNN(-1, 16, 2, out_channels=4, m=4, heads=2, mode="knn"), batch.metadata(),
                      aggr="sum").eval()
    with torch.no_grad():
        out = model(batch.x_dict, batch.edge_index_dict, batch.batch_dict)
        first = dataset[0]
        alone = model(first.x_dict, first.edge_index_dict)
        mixed = model(batch.x_dict, batch.edge_index_dict)  # without batch_dict, candidates cross graphs
        torch.testing.assert_close(out["v0"], _by_hand(model, batch, batch.batch_dict)["v0"])
    for t in batch.node_types:
        n = first[t].num_nodes
        torch.testing.assert_close(out[t][:n], alone[t])
    assert not torch.allclose(mixed["v0"][:first["v0"].num_nodes], alone["v0"])


@pytest.mark.parametrize("kind", ["heteroconv", "to_hetero"])
def test_hetero_models_compile_fullgraph_and_train(graph, kind):
    torch.manual_seed(3)
    if kind == "heteroconv":
        model = HeteroConv({et: TopMAttentionConv((-1, -1), 8, m=4, heads=2, mode="knn")
                            for et in graph.edge_types})
    else:
        model = to_hetero(TANGNN(-1, 16, 2, out_channels=8, m=4, heads=2), graph.metadata(), aggr="mean")
    with torch.no_grad():
        model.eval()(graph.x_dict, graph.edge_index_dict)  # materialise the lazy weights
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager, fast = model(graph.x_dict, graph.edge_index_dict), compiled(graph.x_dict, graph.edge_index_dict)
    for t in eager:
        torch.testing.assert_close(fast[t], eager[t], atol=1e-5, rtol=1e-4)
    # a few compiled training steps on the node labels of 'v0' (neighbour sampling on)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(compiled(graph.x_dict, graph.edge_index_dict)["v0"], graph["v0"].y
                                                 % 8)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
