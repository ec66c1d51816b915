"""attnzoo::deform_attn_3d and attnzoo::ms_deform_attn: references, op boundary, autograd, bad input."""

import pytest
import torch
from dfa3d_cases import make_inputs  # tests/ is on sys.path (conftest)

from attnzoo.kernels.dfa3d import (
    deform_attn_3d,
    deform_attn_3d_efficient,
    deform_attn_3d_naive,
    ms_deform_attn,
    ms_deform_attn_efficient,
    ms_deform_attn_naive,
)


def test_naive_and_efficient_references_agree_in_float64():
    for seed in range(3):
        inputs = make_inputs(seed=seed, nq=20, num_points=4)
        naive, efficient = deform_attn_3d_naive(*inputs), deform_attn_3d_efficient(*inputs)
        assert naive.shape == (2, 20, 2 * 3)
        assert naive.abs().max() > 0.1  # not trivially zero
        assert (naive - efficient).abs().max() < 1e-10


def test_naive_and_efficient_gradients_agree():
    inputs = make_inputs(seed=4)
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    grad_out = torch.randn(2, 6, 6, dtype=torch.float64)
    wrt = [leaves[i] for i in (0, 1, 4, 5)]
    naive_grads = torch.autograd.grad(deform_attn_3d_naive(*leaves), wrt, grad_out)
    op_grads = torch.autograd.grad(deform_attn_3d(*leaves, backend="torch"), wrt, grad_out)
    for name, a, b in zip(("value", "depth", "locations", "weights"), naive_grads, op_grads, strict=True):
        assert (a - b).abs().max() < 1e-10, name
    # the (x, y) location gradient of the bilinear gather is present (the authors' one-stage op drops it)
    assert op_grads[2][..., :2].abs().max() > 1e-3


def test_sampling_at_pixel_and_bin_centre_reads_one_cell():
    value, depth, spatial_shapes, starts, _, _ = make_inputs(bs=1, nh=1, num_bins=5)
    i, j, k = 2, 5, 3  # row, column, depth bin on level 0 (5 x 7)
    loc = torch.tensor([(j + 0.5) / 7, (i + 0.5) / 5, (k + 0.5) / 5], dtype=torch.float64)
    locations = torch.zeros(1, 1, 1, 2, 1, 3, dtype=torch.float64)
    locations[0, 0, 0, 0, 0] = loc
    locations[0, 0, 0, 1, 0] = 5.0  # level 1 point far outside: contributes nothing
    weights = torch.tensor([0.75, 0.25], dtype=torch.float64).view(1, 1, 1, 2, 1)
    out = deform_attn_3d(value, depth, spatial_shapes, starts, locations, weights)
    expected = 0.75 * depth[0, i * 7 + j, k] * value[0, i * 7 + j, 0]
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-14)


def test_op_matches_references_in_float32():
    inputs = make_inputs(dtype=torch.float32, nq=9)
    out = deform_attn_3d(*inputs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, deform_attn_3d_naive(*inputs), rtol=1e-5, atol=1e-6)


def test_ms_deform_attn_matches_grid_sample_reference_and_reduces_from_dfa3d():
    value, depth, spatial_shapes, starts, locations, weights = make_inputs(nq=10)
    xy = locations[..., :2]
    out = ms_deform_attn(value, spatial_shapes, starts, xy, weights)
    assert (out - ms_deform_attn_naive(value, spatial_shapes, starts, xy, weights)).abs().max() < 1e-12
    assert (out - ms_deform_attn_efficient(value, spatial_shapes, starts, xy, weights)).abs().max() == 0
    # a single depth bin sampled at its centre (z = 0.5) is MSDA
    single = torch.ones_like(depth[..., :1])
    at_centre = torch.cat([xy, torch.full_like(xy[..., :1], 0.5)], -1)
    assert (deform_attn_3d(value, single, spatial_shapes, starts, at_centre, weights) - out).abs().max() < 1e-12
    # one-hot depth, the same bin everywhere, sampled at that bin's centre is MSDA too
    one_hot = torch.zeros_like(depth)
    one_hot[..., 2] = 1
    at_bin = torch.cat([xy, torch.full_like(xy[..., :1], 2.5 / depth.shape[-1])], -1)
    assert (deform_attn_3d(value, one_hot, spatial_shapes, starts, at_bin, weights) - out).abs().max() < 1e-12


def test_gradcheck_deform_attn_3d_every_input():
    value, depth, spatial_shapes, starts, locations, weights = make_inputs(bs=1, nq=3, num_points=2, num_bins=4)
    args = (value.requires_grad_(), depth.requires_grad_(), spatial_shapes, starts, locations.requires_grad_(),
            weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: deform_attn_3d(*a, backend="torch"), args)


def test_gradcheck_ms_deform_attn_every_input():
    value, _, spatial_shapes, starts, locations, weights = make_inputs(bs=1, nq=3, num_points=2)
    args = (value.requires_grad_(), spatial_shapes, starts, locations[..., :2].detach().requires_grad_(),
            weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: ms_deform_attn(*a, backend="torch"), args)


def test_opcheck_both_ops_and_their_backward_ops():
    value, depth, spatial_shapes, starts, locations, weights = make_inputs(bs=1, nq=2, num_points=2, num_bins=3)
    grad = torch.randn(1, 2, 6, dtype=torch.float64)
    torch.library.opcheck(torch.ops.attnzoo.deform_attn_3d.default,
                          (value, depth, spatial_shapes, starts, locations, weights, "torch"))
    torch.library.opcheck(torch.ops.attnzoo.ms_deform_attn.default,
                          (value, spatial_shapes, starts, locations[..., :2], weights, "torch"))
    torch.library.opcheck(torch.ops.attnzoo.deform_attn_3d_backward.default,
                          (grad, value, depth, spatial_shapes, starts, locations, weights, "torch"))
    torch.library.opcheck(torch.ops.attnzoo.ms_deform_attn_backward.default,
                          (grad, value, spatial_shapes, starts, locations[..., :2], weights, "torch"))


def test_triton_backend_matches_the_naive_reference():
    inputs = [t.float() if t.is_floating_point() else t for t in make_inputs(nq=5)]
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = deform_attn_3d(*leaves, backend="triton")
    ref = deform_attn_3d_naive(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out, [leaves[i] for i in (0, 1, 4, 5)], torch.ones_like(out))
    ref_leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ref_grads = torch.autograd.grad(deform_attn_3d_naive(*ref_leaves), [ref_leaves[i] for i in (0, 1, 4, 5)],
                                    torch.ones_like(out))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _bad(*replacements):
    """Valid small inputs with (index, function) replacements applied."""
    inputs = list(make_inputs(bs=1, nq=2, num_points=2))
    for index, replace in replacements:
        inputs[index] = replace(inputs[index])
    return inputs


@pytest.mark.parametrize(("inputs", "match"), [
    (_bad((0, lambda v: v[:, :40]), (1, lambda d: d[:, :40])),
     r"spatial_shapes \[\[5, 7\], \[3, 4\]\] hold 47 keys but value"),
    (_bad((1, lambda d: d[:, :40])), r"depth \(1, 40, 5\).*expected \(bs, num_keys, num_depth_bins\)"),
    (_bad((4, lambda loc: loc[..., :2])), r"sampling_locations \(1, 2, 2, 2, 2, 2\).*num_points, 3\)"),
    (_bad((5, lambda w: w[..., :1])), r"attention_weights \(1, 2, 2, 2, 1\).*expected \(1, 2, 2, 2, 2\)"),
    (_bad((0, lambda v: v.long())), r"value \(1, 47, 2, 3\) torch.int64: expected a floating-point dtype"),
    (_bad((1, lambda d: d.float())), r"depth .* torch.float32 and value .* torch.float64: dtypes must match"),
    (_bad((2, lambda s: s.double())), r"spatial_shapes \(2, 2\) torch.float64: expected an integer dtype"),
    (_bad((3, lambda s: s + 1)), r"level_start_index \[1, 36\] must be the running start.*expected \[0, 35\]"),
    (_bad((2, lambda s: s[:1])), r"level_start_index \(2,\).*expected \(1,\)"),
    # (-5, -7) holds as many keys as (5, 7): the product alone would pass
    (_bad((2, lambda s: s * torch.tensor([[-1], [1]]))), r"spatial_shapes \[\[-5, -7\], \[3, 4\]\]: every level's"),
])
def test_bad_input_raises_value_error(inputs, match):
    with pytest.raises(ValueError, match=match):
        deform_attn_3d(*inputs)


def test_bad_input_for_ms_deform_attn_and_backend():
    value, _, spatial_shapes, starts, locations, weights = make_inputs(bs=1, nq=2, num_points=2)
    with pytest.raises(ValueError, match=r"sampling_locations \(1, 2, 2, 2, 2, 3\).*num_points, 2\)"):
        ms_deform_attn(value, spatial_shapes, starts, locations, weights)
    with pytest.raises(ValueError, match=r"spatial_shapes \[\[5, 7\], \[-3, -4\]\]: every level's \(h, w\) must be"):
        ms_deform_attn(value, spatial_shapes * torch.tensor([[1], [-1]]), starts, locations[..., :2], weights)
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        ms_deform_attn(value, spatial_shapes, starts, locations[..., :2], weights, backend="cuda")
    with pytest.raises(TypeError, match="value must be a torch.Tensor, got list"):
        ms_deform_attn(value.tolist(), spatial_shapes, starts, locations[..., :2], weights)


def test_query_chunking_changes_nothing(monkeypatch):
    inputs = make_inputs(nq=7, seed=5)
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    grad_out = torch.randn(2, 7, 6, dtype=torch.float64)
    out = deform_attn_3d(*leaves)
    grads = torch.autograd.grad(out, [leaves[i] for i in (0, 1, 4, 5)], grad_out)
    monkeypatch.setattr("attnzoo.kernels.dfa3d._CHUNK_ENTRIES", 2 * 2 * 2 * 3 * 4 * 3)  # 3 queries per chunk
    from attnzoo.kernels.dfa3d import _query_chunks

    assert len(_query_chunks(inputs[4])) == 3
    chunked = deform_attn_3d(*leaves)
    chunked_grads = torch.autograd.grad(chunked, [leaves[i] for i in (0, 1, 4, 5)], grad_out)
    assert (chunked - out).abs().max() < 1e-14
    for a, b in zip(grads, chunked_grads, strict=True):
        assert (a - b).abs().max() < 1e-12
