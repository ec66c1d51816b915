"""Triton halo attention kernels (under TRITON_INTERPRET=1 on CPU) against the 'torch' backend of the same op."""

import pytest
import torch

from attnzoo.kernels.halo import halo_attention

pytest.importorskip("triton")


def make_inputs(bh=3, dqk=5, dv=7, size=(7, 9), block_size=4, halo_size=1, stride=1, dtype=torch.float32, seed=0,
                shared_kv=False):
    """Random op inputs; ``shared_kv`` makes k and v strided channel slices of one map, as a fused kv conv gives."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    win = block_size + 2 * halo_size
    q = torch.randn(bh, dqk, -(-h // stride), -(-w // stride), generator=gen, dtype=dtype)
    if shared_kv:
        kv = torch.randn(bh, dqk + dv, h, w, generator=gen, dtype=dtype)
        k, v = kv[:, :dqk], kv[:, dqk:]
    else:
        k = torch.randn(bh, dqk, h, w, generator=gen, dtype=dtype)
        v = torch.randn(bh, dv, h, w, generator=gen, dtype=dtype)
    tables = [torch.randn(2 * win - 1, dqk, generator=gen, dtype=dtype) for _ in range(2)]
    return q, k, v, *tables


def run(inputs, options, backend, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = halo_attention(*leaves, **options, backend=backend)
    return out, torch.autograd.grad(out, leaves, grad_out)


def grad_out_like(inputs, options):
    q, _, v = inputs[:3]
    return torch.randn(q.shape[0], v.shape[1], *q.shape[2:], generator=torch.Generator().manual_seed(1),
                       dtype=q.dtype)


CASES = {
    # odd 7x9 map (partial last blocks on both axes), 3 heads, dqk 5 / dv 7 (masked channel lanes), timm borders
    "odd_map_timm_borders": (dict(), dict(block_size=4, halo_size=1, scale=0.45)),
    # strided queries, scaled position term, masked padding, k/v as strided slices of one kv map
    "stride2_scale_pos_mask_padding_shared_kv": (
        dict(bh=2, size=(9, 6), block_size=4, halo_size=2, stride=2, shared_kv=True),
        dict(block_size=4, halo_size=2, stride=2, scale=0.3, scale_pos_embed=True, mask_padding=True)),
    # win 18 > 16: two chunks of window rows (online softmax) and two query chunks per block
    "window_over_16_chunked": (dict(bh=1, dqk=3, dv=2, size=(10, 11), block_size=8, halo_size=5),
                               dict(block_size=8, halo_size=5, scale=0.5)),
    # halo 0: the window is the block itself; masked borders of the partial blocks
    "no_halo_masked": (dict(bh=2, dqk=4, dv=3, size=(5, 7), block_size=3, halo_size=0),
                       dict(block_size=3, halo_size=0, scale=0.7, mask_padding=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_halo_triton_matches_torch_fp32(case):
    make, options = CASES[case]
    inputs = make_inputs(**make)
    grad_out = grad_out_like(inputs, options)
    out, grads = run(inputs, options, "triton", grad_out)
    ref, ref_grads = run(inputs, options, "torch", grad_out)
    assert out.dtype == torch.float32 and ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for name, grad, expected in zip(("q", "k", "v", "height_rel", "width_rel"), grads, ref_grads, strict=True):
        assert expected.abs().max() > 0.1, name
        torch.testing.assert_close(grad, expected, rtol=0, atol=5e-5, msg=lambda m, n=name: f"grad {n}: {m}")


def test_halo_triton_fp16_within_twice_torch_error():
    """Flash-attention's rule: the kernel's fp16 error vs the fp32 reference is at most 2x the torch fp16 path's."""
    options = dict(block_size=4, halo_size=2, scale=0.4)
    inputs = make_inputs(bh=2, size=(6, 7), block_size=4, halo_size=2)
    grad_out = grad_out_like(inputs, options)
    ref = run(inputs, options, "torch", grad_out)
    low = [t.half() for t in inputs]
    ours = run(low, options, "triton", grad_out.half())
    theirs = run(low, options, "torch", grad_out.half())
    for name, r, o, t in zip(("out", "q", "k", "v", "height_rel", "width_rel"), (ref[0], *ref[1]),
                             (ours[0], *ours[1]), (theirs[0], *theirs[1]), strict=True):
        assert o.dtype == torch.float16, name
        err, base = (o.float() - r).abs().max().item(), (t.float() - r).abs().max().item()
        assert 0 < base < 0.05 and err <= 2 * base + 1e-5, (name, err, base)


def test_halo_triton_gradcheck_fp64():
    inputs = make_inputs(bh=1, dqk=2, dv=2, size=(3, 5), block_size=2, halo_size=1, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in inputs]

    def fn(*tensors):
        return halo_attention(*tensors, block_size=2, halo_size=1, scale=0.6, backend="triton")

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True, atol=1e-6)


def test_halo_triton_opcheck():
    inputs = [t.requires_grad_() for t in make_inputs(bh=1, dqk=2, dv=3, size=(3, 4), block_size=2, halo_size=1)]
    args = (*inputs, 2, 1, 1, 0.5, False, False, "triton")
    torch.library.opcheck(torch.ops.attnzoo.halo_attention.default, args)
