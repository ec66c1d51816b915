"""TopMAttentionConv: PyG conventions, a dense reference of the paper's equations, invariances and errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torch_geometric.typing
from torch_geometric.testing import assert_module
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csr_tensor

from attnzoo.layers.topm import TopMAttentionConv

X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
EDGE_INDEX = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])
# Two graphs of 3 and 5 vertices, edges inside each graph only.
BATCH = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
BATCH_EDGES = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 3], [1, 2, 0, 4, 5, 6, 7, 3, 6]])


def _layer(mode="aux", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"m": 3, "heads": 2, **kwargs}
    return TopMAttentionConv(8, 16, mode=mode, **kwargs).eval()


def _dense_reference(conv, x, edge_index, batch=None):
    """The layer's equations with dense N×N matrices and per-row sorting (no gather, no blocks, no scatter)."""
    n, h = x.size(0), conv.heads
    batch = torch.zeros(n, dtype=torch.long) if batch is None else batch
    adj = torch.zeros(n, n, dtype=x.dtype).index_put_((edge_index[1], edge_index[0]), torch.ones(edge_index.size(1),
                                                      dtype=x.dtype), accumulate=True)
    mean = adj @ x / adj.sum(1, keepdim=True).clamp(min=1)
    h_neighbors = conv.lin_neighbors(mean) + conv.lin_root(x)
    q, k, v = conv.lin_query(x), conv.lin_key(x), conv.lin_value(x)
    same = batch.unsqueeze(1) == batch.unsqueeze(0)
    if conv.mode == "aux":
        score = F.cosine_similarity(F.relu(k), conv.aux.unsqueeze(0), dim=-1)
        rank_by = score.unsqueeze(0).expand(n, n)
        v = v * score.unsqueeze(1)
    else:
        rank_by = q @ k.T
    chosen = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        allowed = same[i].nonzero().flatten()
        chosen[i, allowed[torch.argsort(rank_by[i, allowed], descending=True)[:conv.m]]] = True
    d = conv.out_channels // h
    qh, kh, vh = (t.view(n, h, d).transpose(0, 1) for t in (q, k, v))  # [H, N, D]
    logits = (qh @ kh.transpose(1, 2)) * d ** -0.5
    h_top = torch.softmax(logits.masked_fill(~chosen, float("-inf")), -1) @ vh  # [H, N, D]
    return conv.lin_out(torch.cat([h_neighbors, h_top.transpose(0, 1).reshape(n, -1)], -1))


def test_repr_and_exact_parameter_count():
    aux, knn = _layer("aux"), _layer("knn")
    assert str(aux) == "TopMAttentionConv(8, 16, m=3, heads=2, mode='aux')"
    assert str(knn) == "TopMAttentionConv(8, 16, m=3, heads=2, mode='knn')"
    # lin_neighbors, lin_query/key/value: 8*16 + 16 each; lin_root 8*16; lin_out 32*16 + 16; aux vector 16.
    expected_knn = 4 * (8 * 16 + 16) + 8 * 16 + 32 * 16 + 16
    assert sum(p.numel() for p in knn.parameters()) == expected_knn == 1232
    assert sum(p.numel() for p in aux.parameters()) == expected_knn + 16


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_matches_dense_reference(mode):
    conv = _layer(mode, seed=1)
    x = torch.randn(8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, BATCH_EDGES, BATCH), _dense_reference(conv, x, BATCH_EDGES, BATCH))
        torch.testing.assert_close(conv(X, EDGE_INDEX), _dense_reference(conv, X, EDGE_INDEX))


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_sparse_layouts_and_edge_permutation(mode):
    conv = _layer(mode)
    layouts = [torch.sparse_csc, torch.sparse_coo] + (["torch_sparse"] if torch_geometric.typing.WITH_TORCH_SPARSE
                                                      else [])
    with torch.no_grad():
        out = assert_module(conv, X, EDGE_INDEX, expected_size=(4, 16), test_sparse_layouts=layouts,
                            sparse_size=(4, 4), atol=1e-6)
        csr = to_torch_csr_tensor(EDGE_INDEX, size=(4, 4))
        torch.testing.assert_close(conv(X, csr.t()), out, atol=1e-6, rtol=1e-5)
        coo = to_torch_coo_tensor(EDGE_INDEX, size=(4, 4))
        torch.testing.assert_close(conv(X, coo.t()), out, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_node_permutation_equivariance(mode):
    conv = _layer(mode, seed=2)
    x = torch.randn(8, 8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    inverse = torch.argsort(perm)
    with torch.no_grad():
        out = conv(x, BATCH_EDGES, BATCH)
        out_perm = conv(x[perm], inverse[BATCH_EDGES], BATCH[perm])
    torch.testing.assert_close(out_perm, out[perm])


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_no_attention_across_graphs(mode):
    conv = _layer(mode, seed=3)
    x = torch.randn(8, 8)
    with torch.no_grad():
        out, (index, weights) = conv(x, BATCH_EDGES, BATCH, return_attention_weights=True)
        alone = conv(x[3:], BATCH_EDGES[:, 3:] - 3)
        changed = x.clone()
        changed[:3] += 10.0
        out_changed = conv(changed, BATCH_EDGES, BATCH)
    valid = index >= 0
    assert torch.equal(BATCH[index.clamp(min=0)][valid], BATCH.unsqueeze(1).expand_as(index)[valid])
    torch.testing.assert_close(out[3:], alone)  # the 5-vertex graph is unaffected by being batched
    torch.testing.assert_close(out_changed[3:], out[3:])
    assert weights.shape == (8, 3, 2)


def test_m_is_clamped_and_empty_slots_get_zero_weight():
    conv = _layer("aux", m=16)
    with torch.no_grad():
        out, (index, weights) = conv(X, EDGE_INDEX, return_attention_weights=True)
        _, (b_index, b_weights) = conv(torch.randn(8, 8), BATCH_EDGES, BATCH, return_attention_weights=True)
    assert out.shape == (4, 16) and index.shape == (4, 4) and weights.shape == (4, 4, 2)
    assert sorted(index[0].tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(weights.sum(1), torch.ones(4, 2))
    assert b_index.shape == (8, 8) and (b_index >= 0).sum(1).tolist() == [3] * 3 + [5] * 5
    assert b_weights[b_index < 0].abs().max().item() == 0.0
    assert ((b_weights >= 0) & (b_weights <= 1)).all()
    torch.testing.assert_close(b_weights.sum(1), torch.ones(8, 2))
    assert isinstance(conv(X, EDGE_INDEX, return_attention_weights=False), torch.Tensor)


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_empty_edges_isolated_and_zero_nodes(mode):
    conv = _layer(mode)
    empty = torch.empty(2, 0, dtype=torch.long)
    with torch.no_grad():
        out = conv(X, empty)
        torch.testing.assert_close(out, _dense_reference(conv, X, empty))
        assert conv(torch.empty(0, 8), empty).shape == (0, 16)


def test_gradcheck_float64_and_aux_vector_gets_gradient():
    conv = _layer("aux", m=2, heads=1).double()
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    edges = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])
    assert torch.autograd.gradcheck(lambda x: conv(x, edges), (x,))
    conv(x, edges).square().sum().backward()
    assert conv.aux.grad is not None and conv.aux.grad.abs().sum() > 0
    knn = _layer("knn", m=2, heads=1).double()
    assert torch.autograd.gradcheck(lambda x: knn(x, edges), (x,))


def test_neighbour_sampling_only_in_training():
    conv = _layer("aux", num_neighbors=1)
    star = torch.tensor([[1, 2, 3], [0, 0, 0]])  # vertex 0 has three in-neighbours
    with torch.no_grad():
        eval_a, eval_b = conv(X, star), conv(X, star)
        torch.testing.assert_close(conv._neighbors(X, star)[0], X[1:].mean(0))
        conv.train()
        outputs = {tuple(conv(X, star)[0].round(decimals=4).tolist()) for _ in range(30)}
        # One sampled neighbour: the aggregate is exactly one of the three neighbours' features.
        sampled = [conv._neighbors(X, star)[0] for _ in range(30)]
    assert torch.equal(eval_a, eval_b)
    assert len(outputs) == 3
    assert all(any(torch.equal(s, X[j]) for j in (1, 2, 3)) for s in sampled)


@pytest.mark.parametrize("mode", ["aux", "knn"])
@pytest.mark.parametrize("training", [False, True])
def test_compile_fullgraph_without_graph_breaks(mode, training):
    conv = _layer(mode).train(training)
    x = torch.randn(8, 8)
    explanation = torch._dynamo.explain(conv)(x, BATCH_EDGES, BATCH)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    out = compiled(x, BATCH_EDGES, BATCH)
    if not training:
        torch.testing.assert_close(out, conv(x, BATCH_EDGES, BATCH), atol=1e-6, rtol=1e-5)
    out.sum().backward()
    assert conv.lin_query.weight.grad is not None


def test_lazy_init_deepcopy_and_reset():
    conv = TopMAttentionConv(-1, 16, m=2)
    out = conv(X, EDGE_INDEX)
    assert out.shape == (4, 16) and conv.lin_key.weight.shape == (16, 8)
    clone = copy.deepcopy(conv).eval()
    torch.testing.assert_close(clone(X, EDGE_INDEX), conv.eval()(X, EDGE_INDEX))
    before = conv.aux.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.aux)


def test_bad_inputs_raise_value_errors():
    conv = _layer("aux")
    with pytest.raises(ValueError, match=r"edge_index must hold node ids in \[0, 4\), got ids in \[0, 9\]"):
        conv(X, torch.tensor([[0, 9], [1, 2]]))
    with pytest.raises(ValueError, match="x has 5 features, expected in_channels=8"):
        conv(torch.randn(4, 5), EDGE_INDEX)
    with pytest.raises(ValueError, match=r"edge_index must be an integer tensor of shape \[2, E\]"):
        conv(X, EDGE_INDEX.float())
    with pytest.raises(ValueError, match=r"batch must hold values in \[0, 4\)"):
        conv(X, EDGE_INDEX, torch.tensor([0, 0, 9, 9]))
    with pytest.raises(ValueError, match="m must be an int >= 1, got 0"):
        TopMAttentionConv(8, 16, m=0)
    with pytest.raises(ValueError, match="divisible by heads=3"):
        TopMAttentionConv(8, 16, heads=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        TopMAttentionConv(8, 16, mode="global")
    with pytest.raises(ValueError, match="num_neighbors must be an int >= 1 or None"):
        TopMAttentionConv(8, 16, num_neighbors=0)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1 or -1"):
        TopMAttentionConv(0, 16)
