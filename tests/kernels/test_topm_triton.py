"""Triton top-m attention and k-NN kernels (under TRITON_INTERPRET=1 on CPU) against the 'torch' backend."""

import pytest
import torch

from attnzoo.kernels.topm import score_candidates, topm_attention, topm_knn, topm_knn_reference
from attnzoo.kernels.topm_triton import _attn_config

pytest.importorskip("triton")


def make_inputs(n=70, s=23, heads=3, d=5, c=7, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, heads, d, generator=gen, dtype=dtype), torch.randn(s, heads, d, generator=gen, dtype=dtype),
            torch.randn(s, heads, c, generator=gen, dtype=dtype))


def random_index(n, s, m, seed=0):
    """Independent candidates per query (repeats allowed), about one empty slot in five, row 4 all empty."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, s, (n, m), generator=gen)
    index[torch.rand(n, m, generator=gen) < 0.2] = -1
    index[4] = -1
    return index


def run(inputs, index, backend, grad_out):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = topm_attention(*leaves, index, backend=backend)
    return out, torch.autograd.grad(out, leaves, grad_out)


def assert_backends_agree(inputs, index, atol):
    """Triton vs torch: the output and the gradients of query, key and value, none of them trivially zero."""
    n, heads, _ = inputs[0].shape
    grad_out = torch.randn(n, heads, inputs[2].shape[-1], generator=torch.Generator().manual_seed(1),
                           dtype=inputs[0].dtype)
    out, grads = run(inputs, index, "triton", grad_out)
    ref, ref_grads = run(inputs, index, "torch", grad_out)
    assert out.dtype == inputs[0].dtype and out.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)
    for name, grad, expected in zip("qkv", grads, ref_grads, strict=True):
        assert grad.dtype == expected.dtype and expected.abs().max() > 1e-3, name
        torch.testing.assert_close(grad, expected, rtol=0, atol=atol, msg=lambda msg, nm=name: f"grad {nm}: {msg}")
    return out, grads


def query_blocks(inputs, direction):
    return _attn_config(inputs[0], inputs[2], direction)[0][0]


def test_attention_fp32_independent_candidates_with_empty_slots():
    """Several query blocks, 3 heads, head_dim 5 and value width 7 (masked lanes), scattered dK/dV with repeats."""
    inputs = make_inputs(n=150)
    assert query_blocks(inputs, "forward") == 3 and query_blocks(inputs, "backward") == 5
    index = random_index(150, 23, 6)
    out, grads = assert_backends_agree(inputs, index, atol=1e-5)
    # an all-empty row attends to nothing: output 0, gradient 0
    assert out[4].abs().max() == 0 and grads[0][4].abs().max() == 0


def test_attention_fp32_shared_candidates_per_graph():
    """'aux'-mode index: backward blocks of 64 queries; four lie inside one graph and share every slot's candidate
    (one summed atomic per slot), the third crosses both borders of a 3-vertex graph, whose rows leave 3 slots
    empty."""
    batch = torch.cat([torch.zeros(150, dtype=torch.long), torch.ones(3, dtype=torch.long),
                       torch.full((150,), 2, dtype=torch.long)])
    gen = torch.Generator().manual_seed(3)
    index = score_candidates(torch.randn(303, generator=gen), 6, batch)
    assert (index[150:153, :3] >= 0).all() and (index[150:153, 3:] == -1).all()
    inputs = make_inputs(n=303, s=303, heads=2, d=8, c=4, seed=3)
    assert query_blocks(inputs, "backward") == 5
    assert_backends_agree(inputs, index, atol=1e-5)


def test_attention_strided_inputs_and_two_slots():
    """Non-contiguous query/key/value (head-major storage), m = 2 and no empty slot."""
    q, k, v = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in make_inputs(n=19, s=11, heads=2, d=4, c=4))
    assert not q.is_contiguous()
    assert_backends_agree((q, k, v), random_index(19, 11, 2, seed=5).abs(), atol=1e-5)


def test_attention_fp16_within_twice_torch_fp16_error():
    """fp16 in, fp16 out; the kernel (fp32 math) errs at most twice as much as the fp16 PyTorch path."""
    inputs = make_inputs(n=21, s=13, heads=2, d=16, c=8, seed=7)
    index = random_index(21, 13, 5, seed=7)
    grad_out = torch.randn(21, 2, 8, generator=torch.Generator().manual_seed(8))
    ref, ref_grads = run(inputs, index, "torch", grad_out)
    half = [t.half() for t in inputs]
    out, grads = run(half, index, "triton", grad_out.half())
    out_torch, grads_torch = run(half, index, "torch", grad_out.half())
    assert out.dtype == torch.float16 and all(g.dtype == torch.float16 for g in grads)
    for ours, theirs, exact in zip((out, *grads), (out_torch, *grads_torch), (ref, *ref_grads), strict=True):
        err, torch_err = (ours.float() - exact).abs().max(), (theirs.float() - exact).abs().max()
        assert err <= 2 * torch_err + 1e-4, (err, torch_err)


def test_gradcheck_float64_through_triton_kernels():
    q, k, v = (t.requires_grad_() for t in make_inputs(n=5, s=4, heads=2, d=3, c=2, dtype=torch.float64, seed=9))
    index = torch.tensor([[0, 3, -1], [1, 1, 2], [-1, -1, -1], [3, 2, 0], [2, -1, 2]])
    assert torch.autograd.gradcheck(lambda *t: topm_attention(*t, index, backend="triton"), (q, k, v),
                                    fast_mode=True)


def test_opcheck_triton_backend():
    q, k, v = (t.requires_grad_() for t in make_inputs(n=6, s=5, heads=2, d=3, c=2, seed=11))
    index = random_index(6, 5, 3, seed=11)
    torch.library.opcheck(torch.ops.attnzoo.topm_attention.default, (q, k, v, index, 0.5, "triton"))


def test_attention_empty_query_set():
    q, k, v = make_inputs(n=0, s=4)
    out, grads = run((q, k, v), torch.empty(0, 3, dtype=torch.long), "triton", torch.empty(0, 3, 7))
    assert out.shape == (0, 3, 7) and grads[1].abs().max() == 0


def knn_case(num_q, num_k, feat, graphs, seed, shuffle=False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(num_q, feat, generator=gen, dtype=dtype)
    key = torch.randn(num_k, feat, generator=gen, dtype=dtype)
    batch_q = torch.sort(torch.randint(0, graphs, (num_q,), generator=gen)).values
    batch_k = torch.sort(torch.randint(0, graphs, (num_k,), generator=gen)).values
    if shuffle:
        batch_q = batch_q[torch.randperm(num_q, generator=gen)]
        batch_k = batch_k[torch.randperm(num_k, generator=gen)]
    return query, key, batch_q, batch_k


@pytest.mark.parametrize(("num_q", "num_k", "feat", "graphs", "m", "shuffle"), [
    (45, 50, 9, 3, 5, False),  # several query and key blocks per graph, graphs straddle block borders
    (37, 41, 150, 2, 7, True),  # unsorted graph ids (key ranges overlap); 150 features: three chunks, one partial
    (33, 30, 6, 5, 12, False),  # m above some graph sizes: -1 padding; one graph id has queries only
])
def test_knn_matches_reference(num_q, num_k, feat, graphs, m, shuffle):
    query, key, batch_q, batch_k = knn_case(num_q, num_k, feat, graphs, seed=num_q, shuffle=shuffle)
    got = topm_knn(query, key, m, batch_q, batch_k, backend="triton")
    expected = topm_knn_reference(query, key, m, batch_q, batch_k, block_size=16)
    assert got.dtype == torch.long and got.shape == (num_q, min(m, num_k))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got >= 0).float().mean() > 0.3


def test_knn_empty_graphs_and_ties_go_to_lower_index():
    """Graph 1 has no keys (all -1); duplicated unit keys tie, and the lower key index comes first."""
    key = torch.nn.functional.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    key[7] = key[2]
    key[9] = key[2]
    query = torch.cat([key[2:3], key[:3] * 0.5, key[5:6]])  # 5 queries
    batch_q = torch.tensor([0, 0, 1, 0, 0])
    batch_k = torch.zeros(12, dtype=torch.long)
    got = topm_knn(query, key, 4, batch_q, batch_k, backend="triton")
    sim = torch.where(batch_q[:, None] == batch_k[None, :], query @ key.T, -torch.inf)
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :4]  # stable: ties keep index order
    expected = torch.where(batch_q[:, None] == 1, -1, order)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got[0, :3].tolist() == [2, 7, 9]


def test_knn_tie_at_the_last_place_keeps_the_lower_index():
    """Keys 3 and 7 tie; key 20 (a later key tile) beats both and pushes one out: key 7 must go, not key 3."""
    unit = torch.nn.functional.normalize(torch.randn(1, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    key = 0.01 * torch.randn(40, 4, generator=torch.Generator().manual_seed(2))
    key[3], key[7], key[20] = unit[0], unit[0], 2 * unit[0]
    batch = torch.zeros(40, dtype=torch.long)
    got = topm_knn(unit, key, 2, batch[:1], batch, backend="triton")
    assert got.tolist() == [[20, 3]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_knn_float64_bfloat16_and_bipartite_sizes(dtype):
    """fp64 scores in fp64; bf16 products are exact and summed in fp32, i.e. the fp32 search on the bf16 values."""
    query, key, batch_q, batch_k = knn_case(20, 8, 5, 2, seed=4, dtype=dtype)
    got = topm_knn(query, key, 6, batch_q, batch_k, backend="triton")
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    expected = topm_knn_reference(query.to(exact), key.to(exact), 6, batch_q, batch_k)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_layer_knn_mode_triton_matches_torch():
    """TopMAttentionConv in 'knn' mode with backend='triton' end to end: candidates, output and every parameter
    gradient agree with backend='torch'."""
    from attnzoo.layers.topm import TopMAttentionConv

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=gen)
    edge_index = torch.randint(0, 30, (2, 60), generator=gen)
    batch = torch.cat([torch.zeros(18, dtype=torch.long), torch.ones(12, dtype=torch.long)])
    results = []
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        layer = TopMAttentionConv(6, 8, m=5, heads=2, mode="knn", backend=backend).eval()
        out, (index, _) = layer(x, edge_index, batch, return_attention_weights=True)
        out.square().sum().backward()
        results.append((out, index, [p.grad for p in layer.parameters()]))
    (out, index, grads), (ref, ref_index, ref_grads) = results
    torch.testing.assert_close(index, ref_index, rtol=0, atol=0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for grad, expected in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)  # parameter gradients reach ~10
