"""Triton ``ela_gate`` kernels under TRITON_INTERPRET=1: forward and every gradient against the 'torch' backend."""

import pytest
import torch

import attnzoo.kernels.ela_triton as ela_triton
from attnzoo.kernels.ela import ela_gate, ela_gate_reference


def make_inputs(c, groups, norm_groups, k, shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    # an offset mean exercises the two-pass GroupNorm variance
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) + 0.5
    weight = torch.randn(c, c // groups, k, generator=g, dtype=torch.float64) * 0.5
    gamma = 1 + 0.2 * torch.randn(c, generator=g, dtype=torch.float64)
    beta = 0.2 * torch.randn(c, generator=g, dtype=torch.float64)
    grad_out = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, weight, gamma, beta)], grad_out.to(dtype)


def run(tensors, grad_out, groups, norm_groups, backend):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = ela_gate(*leaves, groups, norm_groups, backend=backend)
    return [out, *torch.autograd.grad(out, leaves, grad_out)]


NAMES = ("out", "grad_x", "grad_weight", "grad_norm_weight", "grad_norm_bias")


def assert_backends_agree(c, groups, norm_groups, k, shape, dtype=torch.float32, tol=1e-4):
    tensors, grad_out = make_inputs(c, groups, norm_groups, k, shape, dtype)
    ours = run(tensors, grad_out, groups, norm_groups, "triton")
    ref = run(tensors, grad_out, groups, norm_groups, "torch")
    for name, a, b in zip(NAMES, ours, ref, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    "c,groups,norm_groups,k,shape",
    [
        (8, 8, 4, 5, (2, 5, 7)),  # depthwise (ELA-T/B style), W > H, odd sizes
        (8, 2, 4, 7, (1, 9, 4)),  # grouped conv (ELA-S/L style), H > W, a conv group spans two norm groups
        (6, 3, 3, 3, (2, 3, 1)),  # W = 1: the H strip is x itself
        (6, 1, 1, 1, (1, 1, 6)),  # dense conv, one norm group, H = 1
    ],
)
def test_forward_and_gradients_match_torch_backend(c, groups, norm_groups, k, shape):
    assert_backends_agree(c, groups, norm_groups, k, shape)


def test_chunked_loops_match(monkeypatch):
    # tiny tiles force every loop to take several trips: rows of a plane, channels of a norm group and of a strip,
    # and batches in the weight-gradient kernel (one program per weight slice walks the whole batch)
    monkeypatch.setattr(ela_triton, "_PLANE_TILE", 16)
    monkeypatch.setattr(ela_triton, "_STRIP_TILE", 16)
    monkeypatch.setattr(ela_triton, "_WEIGHT_GRAD_PROGRAMS", 1)
    assert ela_triton._plane_launch(torch.empty(2, 16, 5, 7))[1]["BLOCK_H"] < 5
    assert ela_triton._strip_blocks(torch.empty(2, 8, 5, 7), 4)[0] < 4
    assert_backends_agree(8, 4, 2, 3, (2, 5, 7))


def test_small_planes_are_batched_per_program():
    grid, meta = ela_triton._plane_launch(torch.empty(3, 10, 7, 7))
    assert meta["BLOCK_P"] == 32 and grid == (1,)  # 30 planes of 8x8 tiles fit one program
    assert_backends_agree(10, 10, 5, 5, (3, 7, 7))


def test_float64_agrees_to_rounding():
    # the kernels accumulate in fp64 for fp64 inputs, so the two backends agree to ~1e-15
    assert_backends_agree(8, 4, 2, 3, (2, 4, 5), dtype=torch.float64, tol=1e-11)


def test_float16_within_twice_the_torch_error():
    tensors, grad_out = make_inputs(8, 4, 2, 5, (2, 6, 5), dtype=torch.float64)
    exact = run(tensors, grad_out, 4, 2, "torch")
    half = [t.half() for t in tensors]
    ours = run(half, grad_out.half(), 4, 2, "triton")
    torch_half = run(half, grad_out.half(), 4, 2, "torch")
    for name, a, b, e in zip(NAMES, ours, torch_half, exact, strict=True):
        assert a.dtype == torch.float16, name
        ours_err = (a.double() - e).abs().max().item()
        torch_err = (b.double() - e).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-5, (name, ours_err, torch_err)


def test_channels_last_input_keeps_its_layout():
    tensors, _ = make_inputs(8, 8, 2, 3, (2, 4, 5))
    x = tensors[0].to(memory_format=torch.channels_last)
    out = ela_gate(x, *tensors[1:], 8, 2, backend="triton")
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ela_gate_reference(tensors[0], *tensors[1:], 8, 2), rtol=1e-5, atol=1e-5)


def test_opcheck_triton_backend():
    tensors, grad_out = make_inputs(4, 2, 2, 3, (1, 3, 2))
    args = (*(t.requires_grad_() for t in tensors), 2, 2, 1e-5, "triton")
    torch.library.opcheck(torch.ops.attnzoo.ela_gate.default, args)
    torch.library.opcheck(torch.ops.attnzoo.ela_gate_backward.default,
                          (grad_out, *(t.detach() for t in tensors), 2, 2, 1e-5, "triton"))
