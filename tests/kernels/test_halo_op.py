"""The attnzoo::halo_attention op: a per-pixel loop reference, gradients, the op boundary and input checks."""

import math

import pytest
import torch

from attnzoo.kernels.halo import _halo_backward_torch, halo_attention, halo_attention_reference


def loop_reference(q, k, v, height_rel, width_rel, block_size, halo_size, stride, scale, scale_pos_embed,
                   mask_padding):
    """One query pixel at a time, straight from the definition (window = block grown by the halo)."""
    _, _, h, w = k.shape
    win = block_size + 2 * halo_size
    qb = block_size // stride
    out = q.new_zeros(q.shape[0], v.shape[1], *q.shape[2:])
    for i in range(q.shape[2]):
        for j in range(q.shape[3]):
            qi, qj = i % qb, j % qb
            top, left = (i // qb) * block_size - halo_size, (j // qb) * block_size - halo_size
            qv = q[:, :, i, j]
            logits, values = [], []
            for kh in range(win):
                for kw in range(win):
                    r, c = top + kh, left + kw
                    inside = 0 <= r < h and 0 <= c < w
                    if mask_padding and not inside:
                        continue
                    key = k[:, :, r, c] if inside else torch.zeros_like(k[:, :, 0, 0])
                    rel = height_rel[kh - qi + win - 1] + width_rel[kw - qj + win - 1]
                    pos = (qv * rel).sum(-1)
                    dot = (qv * key).sum(-1)
                    logits.append((dot + pos) * scale if scale_pos_embed else dot * scale + pos)
                    values.append(v[:, :, r, c] if inside else torch.zeros_like(v[:, :, 0, 0]))
            attn = torch.stack(logits, -1).softmax(-1)  # (BH, keys)
            out[:, :, i, j] = torch.einsum("bn,bnc->bc", attn, torch.stack(values, 1))
    return out


def make_inputs(bh, dqk, dv, h, w, block_size, halo_size, stride, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    win = block_size + 2 * halo_size

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return (rand(bh, dqk, math.ceil(h / stride), math.ceil(w / stride)), rand(bh, dqk, h, w), rand(bh, dv, h, w),
            rand(2 * win - 1, dqk), rand(2 * win - 1, dqk))


# (block_size, halo_size, stride, H, W, scale_pos_embed, mask_padding)
CASES = [
    (4, 1, 1, 8, 8, False, False),
    (4, 2, 2, 8, 8, True, False),
    (3, 1, 1, 7, 5, False, True),
    (4, 1, 2, 7, 6, True, True),
    (2, 0, 1, 4, 6, False, False),
    (3, 2, 1, 5, 4, False, False),
]


@pytest.mark.parametrize("block_size,halo_size,stride,h,w,scale_pos_embed,mask_padding", CASES)
def test_forward_matches_loop_reference(block_size, halo_size, stride, h, w, scale_pos_embed, mask_padding):
    inputs = make_inputs(2, 3, 2, h, w, block_size, halo_size, stride)
    args = (block_size, halo_size, stride, 0.7, scale_pos_embed, mask_padding)
    expected = loop_reference(*inputs, *args)
    torch.testing.assert_close(halo_attention(*inputs, *args), expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(halo_attention_reference(*inputs, *args), expected, atol=1e-12, rtol=1e-12)


def test_unmasked_border_keys_are_a_sink():
    # With zero keys/values in the softmax, a constant value map yields less than the constant at the borders.
    q, k, _, hr, wr = make_inputs(1, 2, 1, 8, 8, 4, 2, 1)
    v = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    unmasked = halo_attention(q, k, v, hr, wr, 4, 2)
    masked = halo_attention(q, k, v, hr, wr, 4, 2, mask_padding=True)
    torch.testing.assert_close(masked, torch.ones_like(masked))
    assert unmasked.max() < 1.0 and unmasked.min() > 0.0


@pytest.mark.parametrize("block_size,halo_size,stride,h,w,scale_pos_embed,mask_padding", CASES[:4])
def test_gradcheck_float64(block_size, halo_size, stride, h, w, scale_pos_embed, mask_padding):
    inputs = [t.requires_grad_() for t in make_inputs(1, 2, 2, h, w, block_size, halo_size, stride)]
    args = (block_size, halo_size, stride, 0.6, scale_pos_embed, mask_padding)
    assert torch.autograd.gradcheck(lambda *t: halo_attention(*t, *args), inputs, fast_mode=True)


@pytest.mark.parametrize("block_size,halo_size,stride,h,w,scale_pos_embed,mask_padding", CASES)
def test_hand_written_backward_matches_autograd_of_reference(block_size, halo_size, stride, h, w, scale_pos_embed,
                                                             mask_padding):
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, 4, h, w, block_size, halo_size, stride)]
    args = (block_size, halo_size, stride, 0.45, scale_pos_embed, mask_padding)
    out = halo_attention_reference(*inputs, *args)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, inputs, grad_out)
    got = _halo_backward_torch(grad_out, out.detach(), *[t.detach() for t in inputs], *args)
    for name, g, e in zip(("q", "k", "v", "height_rel", "width_rel"), got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-11, msg=lambda m, name=name: f"grad {name}: {m}")


def test_opcheck():
    q, k, v, hr, wr = [t.float().requires_grad_() for t in make_inputs(2, 4, 3, 7, 8, 4, 1, 2)]
    op = torch.ops.attnzoo.halo_attention.default
    torch.library.opcheck(op, (q, k, v, hr, wr, 4, 1, 2, 0.5, False, True, "torch"))
    torch.library.opcheck(op, (q, k, v, hr, wr, 4, 1, 2, 0.5, True, False, "torch"))


def test_compile_fullgraph_matches_eager():
    inputs = [t.float().requires_grad_() for t in make_inputs(2, 4, 3, 8, 8, 4, 2, 1)]

    def fn(*t):
        return halo_attention(*t, 4, 2, 1, 0.5).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(fn(*inputs), inputs)
    compiled_grads = torch.autograd.grad(compiled(*inputs), inputs)
    for e, c in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(c, e)


def test_bad_inputs_raise_clear_errors():
    q, k, v, hr, wr = make_inputs(2, 3, 2, 8, 8, 4, 1, 1)
    with pytest.raises(ValueError, match="q has shape"):
        halo_attention(q[..., :4], k, v, hr, wr, 4, 1)
    with pytest.raises(ValueError, match="v has shape"):
        halo_attention(q, k, v[..., :4], hr, wr, 4, 1)
    with pytest.raises(ValueError, match=r"height_rel has shape \(11, 3\); expected .*\(15, 3\)"):
        halo_attention(q, k, v, hr, wr, 4, 2)
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        halo_attention(q, k, v, hr, wr, 4, 1, stride=3)
    with pytest.raises(ValueError, match="block_size=3 must be divisible by stride=2"):
        halo_attention(q[..., ::2, ::2], k, v, hr[:9], wr[:9], 3, 1, stride=2)
    with pytest.raises(ValueError, match="halo_attention: halo_size must be an int >= 0, got -1"):
        halo_attention(q, k, v, hr, wr, 4, -1)
    with pytest.raises(TypeError, match="halo_attention: block_size must be a positive int"):
        halo_attention(q, k, v, hr, wr, 4.0, 1)
    with pytest.raises(ValueError, match="k is torch.float32"):
        halo_attention(q, k.float(), v, hr, wr, 4, 1)
    with pytest.raises(TypeError, match="v must be a floating-point tensor"):
        halo_attention(q, k, v.long(), hr, wr, 4, 1)
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        halo_attention(q, k, v, hr, wr, 4, 1, backend="cuda")
