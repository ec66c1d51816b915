"""Triton DFA3D / MSDA kernels (under TRITON_INTERPRET=1 on CPU) against the 'torch' backend of the same ops."""

import functools

import dfa3d_cases
import pytest
import torch

from attnzoo.kernels.dfa3d import deform_attn_3d, ms_deform_attn

pytest.importorskip("triton")


make_inputs = functools.partial(dfa3d_cases.make_inputs, nq=9, nh=3, channels=5, dtype=torch.float32)


def run(op, inputs, backend, grad_out, wrt):
    """Output and the gradients of every floating input at positions ``wrt`` for one backend."""
    leaves = [t.clone().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
    out = op(*leaves, backend=backend)
    return out, torch.autograd.grad(out, [leaves[i] for i in wrt], grad_out)


def assert_backends_agree(op, inputs, wrt, atol):
    """Triton vs torch: forward and every gradient, and the gradients are not trivially zero."""
    bs, nq, nh = inputs[-1].shape[:3]
    grad_out = torch.randn(bs, nq, nh * inputs[0].shape[-1], generator=torch.Generator().manual_seed(1),
                           dtype=inputs[0].dtype)
    out, grads = run(op, inputs, "triton", grad_out, wrt)
    ref, ref_grads = run(op, inputs, "torch", grad_out, wrt)
    assert out.dtype == inputs[0].dtype and out.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)
    for index, grad, expected in zip(wrt, grads, ref_grads, strict=True):
        assert grad.dtype == expected.dtype and expected.abs().max() > 1e-3, index
        torch.testing.assert_close(grad, expected, rtol=0, atol=atol, msg=lambda m, i=index: f"input {i}: {m}")


DFA3D_CASES = {
    # two levels with odd sizes, 3 heads, head_dim 5 (masked channel lanes), queries not a multiple of BLOCK_Q
    "odd_sizes": dict(),
    # head_dim 40 -> BLOCK_C 64, BLOCK_Q 16: two query blocks; one level, one depth bin; int32 shapes
    "two_query_blocks_single_bin_int32_shapes": dict(bs=1, nq=21, nh=2, channels=40, num_points=2, num_bins=1,
                                                     shapes=((3, 5),), shape_dtype=torch.int32),
}


@pytest.mark.parametrize("case", list(DFA3D_CASES))
def test_deform_attn_3d_triton_matches_torch_fp32(case):
    inputs = make_inputs(**DFA3D_CASES[case])
    assert_backends_agree(deform_attn_3d, inputs, wrt=(0, 1, 4, 5), atol=1e-5)


def test_ms_deform_attn_triton_matches_torch_fp32():
    value, _, spatial_shapes, starts, locations, weights = make_inputs(nq=7, shapes=((4, 6), (3, 3), (1, 2)))
    inputs = (value, spatial_shapes, starts, locations[..., :2].contiguous(), weights)
    assert_backends_agree(ms_deform_attn, inputs, wrt=(0, 3, 4), atol=1e-5)


def test_colliding_atomics_accumulate_exactly():
    """Every query samples the same point: grad_value / grad_depth get nq * heads-worth of atomic adds per key."""
    value, depth, spatial_shapes, starts, locations, weights = make_inputs(bs=1, nq=17, nh=2, num_points=2)
    locations = locations[:, :1].expand_as(locations).contiguous()
    assert_backends_agree(deform_attn_3d, (value, depth, spatial_shapes, starts, locations, weights),
                          wrt=(0, 1, 4, 5), atol=1e-5)


def test_gradcheck_through_the_triton_kernel_in_float64():
    value, depth, spatial_shapes, starts, locations, weights = make_inputs(
        bs=1, nq=3, nh=2, channels=2, num_points=2, num_bins=4, shapes=((3, 4), (2, 3)), dtype=torch.float64)
    args = (value.requires_grad_(), depth.requires_grad_(), spatial_shapes, starts, locations.requires_grad_(),
            weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: deform_attn_3d(*a, backend="triton"), args, fast_mode=True)
    xy = locations[..., :2].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, spatial_shapes, starts, loc, w,
                                                                     backend="triton"),
                                    (value, xy, weights), fast_mode=True)


def test_fp16_within_twice_the_torch_fp16_error():
    """Flash-attention's rule: |triton_fp16 - ref_fp32| <= 2 |torch_fp16 - ref_fp32| + 1e-5, output and grads."""
    inputs32 = make_inputs(nq=6, seed=3)
    inputs16 = [t.half() if t.is_floating_point() else t for t in inputs32]
    reference = [t.float() if t.is_floating_point() else t for t in inputs16]  # same rounded inputs in fp32
    grad_out = torch.randn(2, 6, 15, generator=torch.Generator().manual_seed(2))
    wrt = (0, 1, 4, 5)
    ref_out, ref_grads = run(deform_attn_3d, reference, "torch", grad_out, wrt)
    results = {b: run(deform_attn_3d, inputs16, b, grad_out.half(), wrt) for b in ("torch", "triton")}
    for i, expected in enumerate((ref_out, *ref_grads)):
        got_triton = (results["triton"][0], *results["triton"][1])[i]
        got_torch = (results["torch"][0], *results["torch"][1])[i]
        assert got_triton.dtype == torch.float16
        triton_err = (got_triton.float() - expected).abs().max()
        torch_err = (got_torch.float() - expected).abs().max()
        assert triton_err <= 2 * torch_err + 1e-5, (i, triton_err, torch_err)


def test_opcheck_triton_backend():
    value, depth, spatial_shapes, starts, locations, weights = make_inputs(
        bs=1, nq=2, nh=2, channels=3, num_points=2, num_bins=3, dtype=torch.float64)
    grad = torch.randn(1, 2, 6, dtype=torch.float64)
    torch.library.opcheck(torch.ops.attnzoo.deform_attn_3d.default,
                          (value, depth, spatial_shapes, starts, locations, weights, "triton"))
    torch.library.opcheck(torch.ops.attnzoo.deform_attn_3d_backward.default,
                          (grad, value, depth, spatial_shapes, starts, locations, weights, "triton"))
    torch.library.opcheck(torch.ops.attnzoo.ms_deform_attn_backward.default,
                          (grad, value, spatial_shapes, starts, locations[..., :2].contiguous(), weights, "triton"))
