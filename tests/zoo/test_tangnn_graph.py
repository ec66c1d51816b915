"""TANGNNGraph (``tangnn_graph``): registry, readouts, graph isolation in a batch, compile, fitting, bad arguments."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.aggr import SoftmaxAggregation

from attnzoo.data.graphs import long_range_graphs, random_graph
from attnzoo.zoo import create_model, list_models, model_task
from attnzoo.zoo.tangnn import TANGNN, TANGNNGraph

ARGS = dict(in_channels=8, hidden_channels=16, num_layers=2, out_channels=3, m=4, heads=2)


def _graphs(num=3, seed=0):
    graphs = [random_graph(n, 3, num_channels=8, seed=seed + n) for n in (7, 12, 9)[:num]]
    return Batch.from_data_list(graphs)


def test_registered_and_called_like_tangnn():
    assert "tangnn_graph" in list_models(task="graph") and model_task("tangnn_graph") == "graph"
    model = create_model("tangnn_graph", **ARGS).eval()
    assert isinstance(model, TANGNNGraph) and isinstance(model, TANGNN)
    assert str(model) == "TANGNNGraph(8, 3, num_layers=2, readout='mean')"
    assert [c.out_channels for c in model.convs] == [16, 16] and model.convs[0].in_channels == 8
    # two TANGNN layers 8->16 and 16->16 (see test_tangnn.py), then the MLP head 16->16->3
    conv = sum(5 * i * o + 2 * o * o + 6 * o for i, o in ((8, 16), (16, 16)))
    assert sum(p.numel() for p in model.parameters()) == conv + 16 * 16 + 16 + 16 * 3 + 3 == 3459
    data = _graphs()
    with torch.no_grad():
        assert model(data.x, data.edge_index).shape == (1, 3)  # one graph without a batch vector
        assert model(data.x, data.edge_index, data.batch).shape == (3, 3)
        assert model(data.x, data.edge_index, data.batch, batch_size=5).shape == (5, 3)  # two empty graphs


@pytest.mark.parametrize("readout, pool", [("mean", global_mean_pool), ("add", global_add_pool),
                                           ("sum", global_add_pool), ("max", global_max_pool)])
def test_each_graph_is_read_out_on_its_own(readout, pool):
    torch.manual_seed(0)
    model = TANGNNGraph(**ARGS, readout=readout).eval()
    data = _graphs()
    with torch.no_grad():
        out = model(data.x, data.edge_index, data.batch)
        alone = torch.cat([model(g.x, g.edge_index) for g in data.to_data_list()])
        h = model.node_embeddings(data.x, data.edge_index, data.batch)
        torch.testing.assert_close(out, model.head(pool(h, data.batch)))
        perm = torch.randperm(data.num_nodes, generator=torch.Generator().manual_seed(1))
        inverse = torch.argsort(perm)
        shuffled = model(data.x[perm], inverse[data.edge_index], data.batch[perm])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-4)  # top-m candidates stay inside each graph
    torch.testing.assert_close(shuffled, out, atol=1e-5, rtol=1e-4)
    assert (h >= 0).all()  # the last layer's output goes through the activation before the readout


def test_learned_readout_and_jumping_knowledge():
    torch.manual_seed(0)
    model = TANGNNGraph(**ARGS, readout=SoftmaxAggregation(learn=True), jk="cat").eval()
    assert any(name.startswith("pool.") for name, _ in model.named_parameters())
    assert model.lin.in_features == 2 * 16  # jk='cat' projects the concatenated layers back to hidden
    data = _graphs()
    with torch.no_grad():
        out = model(data.x, data.edge_index, data.batch)
        alone = torch.cat([model(g.x, g.edge_index) for g in data.to_data_list()])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-4)


def test_compile_fullgraph_with_batch_size():
    torch.manual_seed(0)
    model = TANGNNGraph(**ARGS).eval()
    data = _graphs()
    args = (data.x, data.edge_index, data.batch)
    assert torch._dynamo.explain(model)(*args, batch_size=3).graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args, batch_size=3), model(*args, batch_size=3), atol=1e-5, rtol=1e-4)


def test_fits_graph_labels_and_a_regression_target():
    train = long_range_graphs(48, 10, seed=0)
    labels = train.y[train.ptr[:-1]]  # every vertex of a chain carries the chain's class
    torch.manual_seed(0)
    model = TANGNNGraph(train.num_features, 32, 2, out_channels=4, m=4, num_neighbors=None)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(train.x, train.edge_index, train.batch, 48), labels).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model.eval()(train.x, train.edge_index, train.batch, 48).argmax(-1) == labels).float().mean()
    assert accuracy == 1.0
    # regression: the number of beacon vertices' class index, one output per graph
    torch.manual_seed(0)
    regressor = TANGNNGraph(train.num_features, 16, 2, out_channels=1, m=4, readout="add")
    target = labels.float().unsqueeze(1)
    opt = torch.optim.Adam(regressor.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(regressor(train.x, train.edge_index, train.batch, 48), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="readout must be one of"):
        TANGNNGraph(**ARGS, readout="avg")
    with pytest.raises(ValueError, match="readout must be a name or a torch_geometric"):
        TANGNNGraph(**ARGS, readout=torch.nn.Identity())
    with pytest.raises(ValueError, match="out_channels must be a positive int, got 0"):
        TANGNNGraph(**{**ARGS, "out_channels": 0})
