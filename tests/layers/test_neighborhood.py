"""NeighborhoodAttention2D: NATTEN 0.14's forward (padding included) rewritten on the dense oracle, the authors'
state_dict names, attention dropout, bad arguments, and the module conventions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from na_oracle import dense_attention

from attnzoo.layers import NeighborhoodAttention2D


def natten014_forward(module: NeighborhoodAttention2D, x: torch.Tensor) -> torch.Tensor:
    """NATTEN 0.14's ``NeighborhoodAttention2D.forward`` (``src/natten/natten2d.py``) with its two kernels replaced
    by the dense oracle: pad small maps to the window, qkv, scaled q, attention with rpb, crop, proj."""
    b, h, w, c = x.shape
    window = module.kernel_size[0] * module.dilation[0]
    x = F.pad(x, (0, 0, 0, max(0, window - w), 0, max(0, window - h)))
    hp, wp = x.shape[1:3]
    qkv = module.qkv(x).reshape(b, hp, wp, 3, module.num_heads, module.head_dim)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    out = dense_attention(q, k, v, module.kernel_size, module.dilation, (1, 1), (False, False), module.rpb,
                          scale=module.scale)
    out = out.reshape(b, hp, wp, c)[:, :h, :w]
    return module.proj(out)


@pytest.mark.parametrize("size, kernel, dilation", [((9, 11), 3, 2), ((5, 4), 5, 1), ((3, 8), 3, 3), ((7, 7), 7, 1)])
def test_matches_natten_014_including_padding_of_small_maps(size, kernel, dilation):
    torch.manual_seed(0)
    module = NeighborhoodAttention2D(12, 3, kernel, dilation=dilation, dtype=torch.float64).eval()
    torch.nn.init.normal_(module.qkv.bias)  # padded tokens are keys holding qkv's bias: make it matter
    torch.nn.init.normal_(module.rpb)
    x = torch.randn(2, *size, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), natten014_forward(module, x), rtol=0, atol=1e-12)


def test_state_dict_names_are_natten_s():
    module = NeighborhoodAttention2D(16, 2, 7)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {
        "qkv.weight": (48, 16), "qkv.bias": (48,), "rpb": (2, 13, 13), "proj.weight": (16, 16), "proj.bias": (16,)}
    assert set(NeighborhoodAttention2D(16, 2, 7, rel_pos_bias=False, qkv_bias=False).state_dict()) == {
        "qkv.weight", "proj.weight", "proj.bias"}


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    module = NeighborhoodAttention2D(8, 2, 3, attn_drop=0.5)
    x = torch.randn(2, 6, 6, 8)
    train_a, train_b = module(x), module(x)
    assert not torch.allclose(train_a, train_b)
    module.eval()
    plain = NeighborhoodAttention2D(8, 2, 3).eval()
    plain.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(x), plain(x))
    train_a.sum().backward()
    assert module.rpb.grad is not None and module.qkv.weight.grad is not None


def test_gradients_reach_every_parameter():
    module = NeighborhoodAttention2D(8, 2, 3, dilation=2)
    module(torch.randn(2, 7, 9, 8)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_causal_and_strided_layer_is_the_op():
    torch.manual_seed(0)
    module = NeighborhoodAttention2D(8, 2, (3, 4), stride=(1, 2), is_causal=(True, False), rel_pos_bias=False,
                                     dtype=torch.float64).eval()
    x = torch.randn(1, 6, 8, 8, dtype=torch.float64)
    q, k, v = module.qkv(x).reshape(1, 6, 8, 3, 2, 4).unbind(3)
    want = module.proj(dense_attention(q, k, v, (3, 4), (1, 1), (1, 2), (True, False), scale=0.5).reshape(1, 6, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(module(x), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=10, num_heads=3), "dim=10 must be divisible by num_heads=3"),
    (dict(kernel_size=4), "rel_pos_bias with kernel_size=\\(4, 4\\): NATTEN supports the bias only with odd"),
    (dict(is_causal=True), "rel_pos_bias with is_causal"),
    (dict(kernel_size=3, stride=4), "1 <= stride <= kernel_size"),
    (dict(kernel_size=1), "kernel_size >= 2"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size must be a int or a pair"),
])
def test_bad_arguments(kwargs, match):
    args = {"dim": 12, "num_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        NeighborhoodAttention2D(**args)


def test_bad_input_names_the_expected_layout():
    with pytest.raises(ValueError, match="channels-last map \\(B, H, W, 8\\), got \\(2, 8, 6, 6\\)"):
        NeighborhoodAttention2D(8, 2, 3)(torch.randn(2, 8, 6, 6))


def test_module_conventions():
    module = NeighborhoodAttention2D(8, 2, 3, dilation=(1, 2), dtype=torch.float64)
    assert module.qkv.weight.dtype == module.rpb.dtype == torch.float64
    assert "kernel_size=(3, 3), dilation=(1, 2), stride=(1, 1)" in repr(module)
    before = module.rpb.detach().clone()
    module.reset_parameters()
    assert not torch.equal(before, module.rpb) and module.rpb.abs().max() <= 2.0
    with pytest.raises(RuntimeError, match="not TorchScript-scriptable"):
        torch.jit.script(module)
    with torch.device("meta"):
        assert NeighborhoodAttention2D(8, 2, 3).rpb.is_meta
