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
    """The layer's equations with dense N×N matrices and per-row sorting (no gather, no blocks, no scatter).

    ``x`` and ``batch`` may be (source, destination) pairs: rows are destinations, columns sources."""
    x_src, x_dst = x if isinstance(x, tuple) else (x, x)
    n_src, n_dst, h = x_src.size(0), x_dst.size(0), conv.heads
    b_src, b_dst = batch if isinstance(batch, tuple) else (batch, batch)
    b_src = torch.zeros(n_src, dtype=torch.long) if b_src is None else b_src
    b_dst = torch.zeros(n_dst, dtype=torch.long) if b_dst is None else b_dst
    adj = torch.zeros(n_dst, n_src, dtype=x_src.dtype).index_put_(
        (edge_index[1], edge_index[0]), torch.ones(edge_index.size(1), dtype=x_src.dtype), accumulate=True)
    mean = adj @ x_src / adj.sum(1, keepdim=True).clamp(min=1)
    h_neighbors = conv.lin_neighbors(mean) + conv.lin_root(x_dst)
    q, k, v = conv.lin_query(x_dst), conv.lin_key(x_src), conv.lin_value(x_src)
    same = b_dst.unsqueeze(1) == b_src.unsqueeze(0)  # [n_dst, n_src]
    if conv.mode == "aux":
        score = F.cosine_similarity(F.relu(k), conv.aux.unsqueeze(0), dim=-1)
        rank_by = score.unsqueeze(0).expand(n_dst, n_src)
        v = v * score.unsqueeze(1)
    else:
        rank_by = q @ k.T
    chosen = torch.zeros(n_dst, n_src, dtype=torch.bool)
    for i in range(n_dst):
        allowed = same[i].nonzero().flatten()
        chosen[i, allowed[torch.argsort(rank_by[i, allowed], descending=True)[:conv.m]]] = True
    d = conv.out_channels // h
    qh, kh, vh = (t.view(t.size(0), h, d).transpose(0, 1) for t in (q, k, v))  # [H, N, D]
    logits = (qh @ kh.transpose(1, 2)) * d ** -0.5
    # a destination whose graph has no source vertex attends to nothing: softmax over no key -> 0
    h_top = torch.softmax(logits.masked_fill(~chosen, float("-inf")), -1).nan_to_num(0.0) @ vh  # [H, N, D]
    return conv.lin_out(torch.cat([h_neighbors, h_top.transpose(0, 1).reshape(n_dst, -1)], -1))


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
    with pytest.raises(ValueError, match="TopMAttentionConv: m must be a positive int, got 0"):
        TopMAttentionConv(8, 16, m=0)
    with pytest.raises(ValueError, match="divisible by heads=3"):
        TopMAttentionConv(8, 16, heads=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        TopMAttentionConv(8, 16, mode="global")
    with pytest.raises(ValueError, match="TopMAttentionConv: num_neighbors must be a positive int, got 0"):
        TopMAttentionConv(8, 16, num_neighbors=0)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1 or -1"):
        TopMAttentionConv(0, 16)


# ------------------------------------------------------------------------------------------------- bipartite

# 6 sources in graphs [0, 0, 1, 1, 1, 2] and 5 destinations in graphs [0, 1, 1, 3, 2]: graph 3 has no source
# vertex, graph 2 one (fewer than m), graph 0 two; graph 2's only source has no edge.
SRC_BATCH, DST_BATCH = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 1, 3, 2])
BI_EDGES = torch.tensor([[0, 1, 2, 3, 4, 3, 4], [0, 0, 1, 2, 2, 1, 1]])


def _bipartite(mode="aux", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"m": 3, "heads": 2, **kwargs}
    return TopMAttentionConv((8, 5), 16, mode=mode, **kwargs).eval()


def _bi_x(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 8, generator=gen), torch.randn(5, 5, generator=gen)


def test_in_channels_pair_shapes_and_repr():
    conv = _bipartite()
    assert str(conv) == "TopMAttentionConv((8, 5), 16, m=3, heads=2, mode='aux')" and conv.in_channels == (8, 5)
    assert [lin.in_channels for lin in (conv.lin_neighbors, conv.lin_key, conv.lin_value)] == [8, 8, 8]
    assert [lin.in_channels for lin in (conv.lin_root, conv.lin_query)] == [5, 5]
    # the pair (8, 8) is the int 8: same parameters, same outputs
    torch.manual_seed(0)
    pair, single = TopMAttentionConv((8, 8), 16, m=3, heads=2).eval(), _layer("aux")
    pair.load_state_dict(single.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(pair(X, EDGE_INDEX), single(X, EDGE_INDEX))


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_bipartite_matches_dense_reference(mode):
    conv = _bipartite(mode, seed=4)
    x = _bi_x(1)
    with torch.no_grad():
        for batch in ((SRC_BATCH, DST_BATCH), None):
            out, (index, weights) = conv(x, BI_EDGES, batch, return_attention_weights=True)
            torch.testing.assert_close(out, _dense_reference(conv, x, BI_EDGES, batch))
            assert index.shape == (5, 3) and weights.shape == (5, 3, 2)
        out, (index, weights) = conv(x, BI_EDGES, (SRC_BATCH, DST_BATCH), return_attention_weights=True)
    # candidates are sources of the destination's own graph; graph 3 has none, graph 2 one
    valid = index >= 0
    assert torch.equal(SRC_BATCH[index.clamp(min=0)][valid], DST_BATCH.unsqueeze(1).expand_as(index)[valid])
    assert valid.sum(1).tolist() == [2, 3, 3, 0, 1]
    assert weights[~valid].abs().max().item() == 0.0
    torch.testing.assert_close(weights.sum(1)[valid.any(1)], torch.ones(4, 2))


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_bipartite_pair_of_one_set_is_the_homogeneous_layer(mode):
    conv = _layer(mode, seed=5)
    x = torch.randn(8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv((x, x), BATCH_EDGES, (BATCH, BATCH)), conv(x, BATCH_EDGES, BATCH))
        torch.testing.assert_close(conv((x, x), BATCH_EDGES), conv(x, BATCH_EDGES))
        torch.testing.assert_close(conv(x, BATCH_EDGES, (BATCH, BATCH), size=(8, 8)), conv(x, BATCH_EDGES, BATCH))


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_bipartite_sparse_layouts_size_and_edge_permutation(mode):
    conv = _bipartite(mode, seed=6)
    x = _bi_x(2)
    with torch.no_grad():
        out = assert_module(conv, x, BI_EDGES, expected_size=(5, 16), test_sparse_layouts=[torch.sparse_csc,
                            torch.sparse_coo], atol=1e-6, size=(6, 5))
        torch.testing.assert_close(conv(x, to_torch_csr_tensor(BI_EDGES, size=(6, 5)).t()), out, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_bipartite_permutation_equivariance_and_graph_isolation(mode):
    conv = _bipartite(mode, seed=7)
    x_src, x_dst = _bi_x(3)
    perm_src = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    perm_dst = torch.randperm(5, generator=torch.Generator().manual_seed(1))
    edges = torch.stack([torch.argsort(perm_src)[BI_EDGES[0]], torch.argsort(perm_dst)[BI_EDGES[1]]])
    with torch.no_grad():
        out = conv((x_src, x_dst), BI_EDGES, (SRC_BATCH, DST_BATCH))
        out_perm = conv((x_src[perm_src], x_dst[perm_dst]), edges, (SRC_BATCH[perm_src], DST_BATCH[perm_dst]))
        changed = x_src.clone()
        changed[SRC_BATCH == 0] += 10.0  # graph 0's sources: only destination 0 (graph 0) may change
        out_changed = conv((changed, x_dst), BI_EDGES, (SRC_BATCH, DST_BATCH))
    torch.testing.assert_close(out_perm, out[perm_dst])
    torch.testing.assert_close(out_changed[1:], out[1:])
    assert not torch.allclose(out_changed[0], out[0])


def test_bipartite_lazy_channels_gradcheck_and_compile():
    lazy = TopMAttentionConv((-1, -1), 16, m=2)
    x_src, x_dst = _bi_x(4)
    assert lazy((x_src, x_dst), BI_EDGES).shape == (5, 16)
    assert lazy.lin_key.weight.shape == (16, 8) and lazy.lin_query.weight.shape == (16, 5)
    shared_int = TopMAttentionConv(-1, 16, m=2)  # an int -1 infers each side's width on its own, as SAGEConv
    assert shared_int((x_src, x_dst), BI_EDGES).shape == (5, 16) and shared_int.lin_root.weight.shape == (16, 5)
    for mode in ("aux", "knn"):
        conv = _bipartite(mode, m=2, heads=1).double()
        xs = tuple(t.double().requires_grad_() for t in _bi_x(5))
        assert torch.autograd.gradcheck(lambda a, b, conv=conv: conv((a, b), BI_EDGES, (SRC_BATCH, DST_BATCH)), xs)
        for training in (False, True):
            conv = _bipartite(mode).train(training)
            x = _bi_x(6)
            args = (x, BI_EDGES, (SRC_BATCH, DST_BATCH))
            assert torch._dynamo.explain(conv)(*args).graph_break_count == 0
            out = torch.compile(conv, fullgraph=True, backend="aot_eager")(*args)
            if not training:
                torch.testing.assert_close(out, conv(*args), atol=1e-6, rtol=1e-5)
            out.sum().backward()
            assert conv.lin_key.weight.grad is not None and conv.lin_query.weight.grad is not None


def test_bipartite_neighbour_sampling_uses_sources():
    conv = _bipartite("aux", num_neighbors=1)
    x_src, x_dst = _bi_x(7)
    star = torch.tensor([[1, 3, 5], [0, 0, 0]])  # destination 0 has three source neighbours
    with torch.no_grad():
        torch.testing.assert_close(conv._neighbors(x_src, star, 5)[0], x_src[[1, 3, 5]].mean(0))
        assert conv._neighbors(x_src, star, 5)[1:].abs().max() == 0
        conv.train()
        sampled = [conv._neighbors(x_src, star, 5)[0] for _ in range(30)]
    assert all(any(torch.equal(s, x_src[j]) for j in (1, 3, 5)) for s in sampled)
    assert len({tuple(s.tolist()) for s in sampled}) == 3


@pytest.mark.parametrize("mode", ["aux", "knn"])
def test_flow_target_to_source_reads_edges_the_other_way(mode):
    conv = _layer(mode, seed=8)
    torch.manual_seed(8)
    flipped = TopMAttentionConv(8, 16, m=3, heads=2, mode=mode, flow="target_to_source").eval()
    flipped.load_state_dict(conv.state_dict())
    x = torch.randn(8, 8)
    bi_conv, bi_flipped = _bipartite(mode, seed=9), TopMAttentionConv((8, 5), 16, m=3, heads=2, mode=mode,
                                                                      flow="target_to_source").eval()
    bi_flipped.load_state_dict(bi_conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(flipped(x, BATCH_EDGES.flip(0), BATCH), conv(x, BATCH_EDGES, BATCH))
        torch.testing.assert_close(bi_flipped(_bi_x(8), BI_EDGES.flip(0)), bi_conv(_bi_x(8), BI_EDGES))
        with pytest.raises(ValueError, match=r"edge_index\[1\] must hold source ids in \[0, 6\) .* got ids in "
                                             r"\[0, 6\]"):
            bi_flipped(_bi_x(8), torch.tensor([[0, 1], [6, 0]]))
        with pytest.raises(ValueError, match="target_to_source' is invalid for a sparse adjacency"):
            flipped(x, to_torch_coo_tensor(BATCH_EDGES, size=(8, 8)).t())


def test_bipartite_bad_inputs_raise_value_errors():
    conv = _bipartite()
    x_src, x_dst = _bi_x(9)
    with pytest.raises(ValueError, match=r"x\[1\] \(destination features\) is None"):
        conv((x_src, None), BI_EDGES)
    with pytest.raises(ValueError, match=r"x\[0\] \(source features\) is None"):
        conv((None, x_dst), BI_EDGES)
    with pytest.raises(ValueError, match=r"size=\(6, 4\) does not match the features: size\[1\]=4 but x has 5 "
                                         r"destination vertices \(x_src: 6, x_dst: 5\)"):
        conv((x_src, x_dst), BI_EDGES, size=(6, 4))
    with pytest.raises(ValueError, match=r"size\[0\]=5 but x has 6 source vertices"):
        conv((x_src, x_dst), BI_EDGES, size=(5, 5))
    with pytest.raises(ValueError, match=r"edge_index\[0\] must hold source ids in \[0, 6\) \(x_src: 6, x_dst: 5 "
                                         r"vertices\), got ids in \[0, 6\]"):
        conv((x_src, x_dst), torch.tensor([[0, 6], [0, 1]]))
    with pytest.raises(ValueError, match=r"edge_index\[1\] must hold destination ids in \[0, 5\) \(x_src: 6, "
                                         r"x_dst: 5 vertices\), got ids in \[0, 5\]"):
        conv((x_src, x_dst), torch.tensor([[0, 1], [0, 5]]))
    with pytest.raises(ValueError, match=r"sparse edge_index must be \[5, 6\]"):
        conv((x_src, x_dst), to_torch_coo_tensor(BI_EDGES, size=(6, 6)).t())
    with pytest.raises(ValueError, match=r"x\[0\] has 5 features, expected in_channels\[0\]=8"):
        conv((x_dst, x_dst), BI_EDGES)
    with pytest.raises(ValueError, match=r"x\[1\] has 8 features, expected in_channels\[1\]=5"):
        conv((x_src, x_src), BI_EDGES)
    with pytest.raises(ValueError, match=r"batch\[1\] is None but batch\[0\] is not"):
        conv((x_src, x_dst), BI_EDGES, (SRC_BATCH, None))
    with pytest.raises(ValueError, match=r"batch must be an integer vector with one graph id per source vertex "
                                         r"\(x_src: 6, x_dst: 5 vertices\)"):
        conv((x_src, x_dst), BI_EDGES, DST_BATCH)  # one vector cannot serve both sides of different sizes
    with pytest.raises(ValueError, match=r"batch\[1\] must be an integer vector with one graph id per destination"):
        conv((x_src, x_dst), BI_EDGES, (SRC_BATCH, SRC_BATCH))
    with pytest.raises(ValueError, match=r"x must be a tensor or an \(x_src, x_dst\) pair"):
        conv((x_src, x_dst, x_dst), BI_EDGES)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1 or -1 .*pair of them, got \\(8, 0\\)"):
        TopMAttentionConv((8, 0), 16)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1 or -1"):
        TopMAttentionConv((8, 5, 3), 16)
    with pytest.raises(ValueError, match="batch is a pair of different vectors but x is one vertex set"):
        _layer()(X, EDGE_INDEX, (torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1])))
