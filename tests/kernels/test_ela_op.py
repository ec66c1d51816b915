"""The ``attnzoo::ela_gate`` op: parity with a from-the-paper reference, gradients, op-boundary checks, errors."""


import pytest
import torch

from attnzoo.kernels.ela import ela_gate, ela_gate_reference


def paper_ela(x, weight, gamma, beta, groups, norm_groups, eps=1e-5):
    """ELA written out by hand: explicit strip sums, a per-tap 1-D conv and a hand-rolled GroupNorm."""
    b, c, h, w = x.shape
    k = weight.shape[-1]
    cin = c // groups

    def conv1d(z):  # z: (B, C, L), zero padding k // 2, grouped
        length = z.shape[-1]
        zp = torch.nn.functional.pad(z, (k // 2, k // 2))
        out = torch.zeros_like(z)
        for o in range(c):
            first = (o // (c // groups)) * cin
            for t in range(k):
                out[:, o] += (weight[o, :, t, None] * zp[:, first:first + cin, t:t + length]).sum(1)
        return out

    def group_norm(z):
        zg = z.reshape(b, norm_groups, -1)
        mean = zg.mean(-1, keepdim=True)
        var = zg.var(-1, unbiased=False, keepdim=True)
        zg = (zg - mean) / torch.sqrt(var + eps)
        return zg.reshape_as(z) * gamma[:, None] + beta[:, None]

    a_h = torch.sigmoid(group_norm(conv1d(x.sum(3) / w)))
    a_w = torch.sigmoid(group_norm(conv1d(x.sum(2) / h)))
    return x * a_h[:, :, :, None] * a_w[:, :, None, :]


def make_args(c=16, groups=16, norm_groups=4, k=5, shape=(2, 5, 7), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(c, c // groups, k, generator=g, dtype=dtype) * 0.5
    gamma = 1 + 0.1 * torch.randn(c, generator=g, dtype=dtype)
    beta = 0.1 * torch.randn(c, generator=g, dtype=dtype)
    return x, weight, gamma, beta, groups, norm_groups


@pytest.mark.parametrize("c,groups,norm_groups,k", [(16, 16, 4, 5), (16, 2, 8, 7), (12, 3, 6, 3), (8, 1, 1, 1)])
def test_forward_matches_paper_formula(c, groups, norm_groups, k):
    args = make_args(c, groups, norm_groups, k, dtype=torch.float64)
    expected = paper_ela(*args)
    torch.testing.assert_close(ela_gate(*args, backend="torch"), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ela_gate_reference(*args), expected, rtol=1e-12, atol=1e-12)


def test_each_strip_is_normalised_with_its_own_statistics():
    # x varies along H only: the W strip is constant, so with one channel per norm group and k=1 its gate is exactly
    # sigmoid(beta); statistics pooled over both strips (as a concatenated strip would give) would move it
    x, weight, gamma, beta, groups, norm_groups = make_args(c=8, groups=8, norm_groups=8, k=1, dtype=torch.float64)
    x = torch.randn(2, 8, 5, 1, dtype=torch.float64).expand(2, 8, 5, 7).contiguous()
    out = ela_gate(x, weight, gamma, beta, groups, norm_groups, backend="torch")
    z_h = weight[:, 0, 0, None] * x[..., 0]  # (B, C, H)
    z_h = (z_h - z_h.mean(-1, keepdim=True)) / torch.sqrt(z_h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    a_h = torch.sigmoid(gamma[:, None] * z_h + beta[:, None])
    expected = x * a_h[..., None] * torch.sigmoid(beta)[None, :, None, None]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    x, weight, gamma, beta, groups, norm_groups = make_args(c=8, groups=2, norm_groups=4, k=3, shape=(2, 3, 4),
                                                            dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, weight, gamma, beta))
    assert torch.autograd.gradcheck(lambda *t: ela_gate(*t, groups, norm_groups, backend="torch"), inputs)


def test_backward_matches_autograd_of_reference():
    args = make_args(c=16, groups=2, norm_groups=8, k=7, dtype=torch.float64)
    grad_out = torch.randn_like(args[0])
    ours = [t.clone().requires_grad_() for t in args[:4]]
    ref = [t.clone().requires_grad_() for t in args[:4]]
    ela_gate(*ours, *args[4:], backend="torch").backward(grad_out)
    paper_ela(*ref, *args[4:]).backward(grad_out)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_opcheck():
    x, weight, gamma, beta, groups, norm_groups = make_args(c=8, groups=4, norm_groups=2, k=3, shape=(2, 3, 5))
    args = (x.requires_grad_(), weight.requires_grad_(), gamma.requires_grad_(), beta.requires_grad_(), groups,
            norm_groups, 1e-5, "torch")
    torch.library.opcheck(torch.ops.attnzoo.ela_gate.default, args)
    grad_out = torch.randn(2, 8, 3, 5)
    torch.library.opcheck(torch.ops.attnzoo.ela_gate_backward.default,
                          (grad_out, *(t.detach() for t in args[:4]), groups, norm_groups, 1e-5, "torch"))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: (a[0][0],) + a[1:], "4-D"),
        (lambda a: (a[0].long(),) + a[1:], "floating-point"),
        (lambda a: a[:1] + (a[1][:, :, :4],) + a[2:], "odd k"),
        (lambda a: a[:1] + (a[1][:8],) + a[2:], r"weight must have shape \(16, 1, 5\)"),
        (lambda a: a[:2] + (a[2][:3],) + a[3:], "norm_weight must have shape"),
        (lambda a: a[:3] + (a[3].double(),) + a[4:], "dtype and device"),
        (lambda a: a[:4] + (5, a[5]), "groups must be a positive int dividing C=16, got 5"),
        (lambda a: a[:5] + (0,), "norm_groups must be a positive int dividing C=16, got 0"),
    ],
)
def test_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        ela_gate(*change(make_args()), backend="torch")


def test_bad_backend():
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        ela_gate(*make_args(), backend="cuda")
