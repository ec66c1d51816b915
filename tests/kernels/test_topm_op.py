"""Top-m attention op and candidate searches: parity with dense references, gradients, op checks, errors."""


import pytest
import torch

from attnzoo.kernels import topm
from attnzoo.kernels.topm import (
    sample_neighbor_mask,
    score_candidates,
    topm_attention,
    topm_attention_backward_reference,
    topm_attention_reference,
    topm_knn,
)

BATCH = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # graphs of 3, 2 and 4 vertices


def _qkv(n=9, s=9, heads=2, d=3, c=4, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, heads, d, generator=gen, dtype=dtype), torch.randn(s, heads, d, generator=gen, dtype=dtype),
            torch.randn(s, heads, c, generator=gen, dtype=dtype))


def _dense_masked_attention(q, k, v, index, scale):
    """Full N×S attention over candidate multiplicities (a key listed twice counts twice), without any gather."""
    count = torch.zeros(q.size(0), k.size(0), dtype=q.dtype)
    for row, cands in enumerate(index.tolist()):
        for c in cands:
            count[row, c] += c >= 0
    logits = torch.einsum("nhd,shd->hns", q, k) * scale
    probs = torch.softmax(logits + count.log(), dim=-1)  # log(0) = -inf masks non-candidates
    return torch.einsum("hns,shc->nhc", probs, v)


def _brute_force_topm(sim, m, batch_q, batch_k):
    same = batch_q.unsqueeze(1) == batch_k.unsqueeze(0)
    rows = []
    for i in range(sim.size(0)):
        allowed = same[i].nonzero().flatten()
        order = allowed[torch.argsort(sim[i, allowed], descending=True)][:m].tolist()
        rows.append(order + [-1] * (min(m, sim.size(1)) - len(order)))
    return torch.tensor(rows)


def test_forward_matches_dense_masked_attention():
    q, k, v = _qkv()
    index = torch.tensor([[0, 1, -1], [2, 2, 0], [8, 7, 6], [3, -1, -1], [4, 3, 5], [0, 1, 2], [6, 5, 4],
                          [1, 8, -1], [7, 6, 5]])  # duplicates and empty slots on purpose
    out = topm_attention(q, k, v, index, scale=0.7, backend="torch")
    torch.testing.assert_close(out, _dense_masked_attention(q, k, v, index, 0.7), rtol=1e-12, atol=1e-12)


def test_fully_empty_row_gives_zero_and_finite_grads():
    q, k, v = (t.requires_grad_() for t in _qkv(n=2, s=3))
    index = torch.tensor([[-1, -1], [0, 2]])
    out = topm_attention(q, k, v, index, backend="torch")
    assert out[0].abs().max().item() == 0.0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_gradcheck_float64_through_public_op():
    q, k, v = (t.requires_grad_() for t in _qkv(n=5, s=6))
    index = torch.tensor([[0, 1, 5], [5, -1, 2], [3, 3, 1], [4, 0, -1], [2, 1, 0]])
    assert torch.autograd.gradcheck(lambda q, k, v: topm_attention(q, k, v, index, backend="torch"), (q, k, v))


def test_explicit_backward_matches_autograd_of_reference():
    q, k, v = (t.requires_grad_() for t in _qkv())
    index = score_candidates(torch.randn(9, dtype=torch.float64), 3, BATCH)
    grad_out = torch.randn(9, 2, 4, dtype=torch.float64)
    expected = torch.autograd.grad(topm_attention_reference(q, k, v, index, 0.5), (q, k, v), grad_out)
    got = topm_attention_backward_reference(grad_out, q.detach(), k.detach(), v.detach(), index, 0.5)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_query_chunking_changes_nothing(monkeypatch):
    q, k, v = (t.requires_grad_() for t in _qkv())
    index = score_candidates(torch.randn(9, dtype=torch.float64), 3, BATCH)
    whole = topm_attention(q, k, v, index, backend="torch")
    grads = torch.autograd.grad(whole.square().sum(), (q, k, v))
    monkeypatch.setattr(topm, "ROWS_PER_CHUNK", 2)
    chunked = topm_attention(q, k, v, index, backend="torch")
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for g, e in zip(torch.autograd.grad(chunked.square().sum(), (q, k, v)), grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_shared_candidate_set_path_matches_per_row_path():
    """One expanded candidate row (one graph in 'aux' mode) takes a broadcast path; it must equal the gather."""
    q, k, v = (t.requires_grad_() for t in _qkv(n=7, s=7))
    shared = torch.tensor([[5, 0, -1, 3]]).expand(7, 4)  # row stride 0
    copied = shared.contiguous()
    outs, grads = [], []
    for index in (shared, copied):
        out = topm_attention(q, k, v, index, backend="torch")
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for g, e in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[0], _dense_masked_attention(q, k, v, copied, 3 ** -0.5), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda q, k, v: topm_attention(q, k, v, shared, backend="torch"), (q, k, v))


def test_opcheck_custom_ops():
    q, k, v = (t.requires_grad_() for t in _qkv(dtype=torch.float32))
    index = score_candidates(torch.randn(9), 3, BATCH).contiguous()
    torch.library.opcheck(torch.ops.attnzoo.topm_attention.default, (q, k, v, index, 0.5, "torch"))
    grad_out = torch.randn(9, 2, 4)
    torch.library.opcheck(torch.ops.attnzoo.topm_attention_backward.default,
                          (grad_out, q.detach(), k.detach(), v.detach(), index, 0.5, "torch"))
    torch.library.opcheck(torch.ops.attnzoo.topm_knn.default,
                          (q.detach().flatten(1), k.detach().flatten(1), 3, BATCH, BATCH, 4, "torch"))


def test_compile_fullgraph():
    q, k, v = _qkv(dtype=torch.float32)
    index = score_candidates(torch.randn(9), 3, BATCH)

    def fn(q, k, v, index):
        return topm_attention(q, k, v, index, backend="torch").sum(-1)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, index), fn(q, k, v, index))


@pytest.mark.parametrize("block_size", [1, 2, 4, 1024])
@pytest.mark.parametrize("shuffle", [False, True])
def test_knn_matches_brute_force(block_size, shuffle):
    gen = torch.Generator().manual_seed(1)
    query, key = torch.randn(9, 5, generator=gen), torch.randn(9, 5, generator=gen)
    batch = BATCH[torch.randperm(9, generator=gen)] if shuffle else BATCH
    got = topm_knn(query, key, 3, batch, block_size=block_size, backend="torch")
    expected = _brute_force_topm(query @ key.T, 3, batch, batch)
    assert torch.equal(got, expected)


def test_knn_clamps_m_and_pads_small_graphs():
    query = torch.randn(9, 4)
    got = topm_knn(query, query, 50, BATCH, block_size=2, backend="torch")
    assert got.shape == (9, 9)
    # Graph sizes 3, 2, 4: every row has exactly that many real candidates, all inside its own graph.
    assert (got >= 0).sum(1).tolist() == [3, 3, 3, 2, 2, 4, 4, 4, 4]
    valid = got >= 0
    assert torch.equal(BATCH[got.clamp(min=0)][valid], BATCH.unsqueeze(1).expand_as(got)[valid])


def test_knn_bipartite_keys_need_their_own_batch():
    query, key = torch.randn(4, 3), torch.randn(6, 3)
    got = topm_knn(query, key, 2, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1, 1, 1]), backend="torch")
    assert torch.equal(got, _brute_force_topm(query @ key.T, 2, torch.tensor([0, 0, 1, 1]),
                                              torch.tensor([0, 0, 0, 1, 1, 1])))
    with pytest.raises(ValueError, match=r"batch_key must be an integer vector of shape \[6\]"):
        topm_knn(query, key, 2, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="batch and batch_key must be given together"):
        topm_knn(query, key, 2, batch_key=torch.tensor([0, 0, 0, 1, 1, 1]))


def test_score_candidates_matches_per_graph_sort():
    score = torch.randn(9, generator=torch.Generator().manual_seed(2))
    got = score_candidates(score, 3, BATCH)
    same_graph_sim = score.unsqueeze(0).expand(9, 9)  # every row ranks the same scores
    assert torch.equal(got, _brute_force_topm(same_graph_sim, 3, BATCH, BATCH))
    single = score_candidates(score, 20)
    assert single.shape == (9, 9) and torch.equal(single[4], torch.argsort(score, descending=True))


def test_sample_neighbor_mask_keeps_min_degree_k():
    dst = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    for k in (1, 2, 3, 5):
        keep = sample_neighbor_mask(dst, 5, k, generator=torch.Generator().manual_seed(k))
        kept = torch.zeros(5, dtype=torch.long).scatter_add_(0, dst[keep], torch.ones_like(dst[keep]))
        assert kept.tolist() == [min(4, k), min(2, k), 1, min(3, k), 0]
    # Every neighbour of vertex 0 is drawn over many samples (uniform sampling, not a fixed prefix).
    drawn = torch.stack([sample_neighbor_mask(dst, 5, 1, torch.Generator().manual_seed(s)) for s in range(40)])
    assert drawn[:, :4].any(0).all()


def test_bad_inputs_raise_value_errors():
    q, k, v = _qkv(dtype=torch.float32)
    index = torch.zeros(9, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"index must hold values in \[-1, 9\)"):
        topm_attention(q, k, v, index + 9)
    with pytest.raises(ValueError, match="index must be an integer tensor of shape"):
        topm_attention(q, k, v, index[:3])
    with pytest.raises(ValueError, match="must agree on heads and width"):
        topm_attention(q, k[..., :2], v, index)
    with pytest.raises(ValueError, match="value"):
        topm_attention(q, k, v[:4], index)
    with pytest.raises(TypeError, match="floating dtype"):
        topm_attention(q, k.double(), v, index)
    with pytest.raises(ValueError, match="scale must be > 0"):
        topm_attention(q, k, v, index, scale=-1.0)
    with pytest.raises(ValueError, match="topm_knn: m must be a positive int, got 0"):
        topm_knn(q.flatten(1), k.flatten(1), 0)
    with pytest.raises(ValueError, match="score_candidates: m must be a positive int, got 0"):
        score_candidates(torch.randn(4), 0)
    with pytest.raises(ValueError, match=r"batch must hold values in \[0, 4\)"):
        score_candidates(torch.randn(4), 2, torch.tensor([0, 0, 7, 7]))
    with pytest.raises(ValueError, match="backend"):
        topm_attention(q, k, v, index, backend="cuda")
