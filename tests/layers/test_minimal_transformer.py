"""MinimalAttention / MinimalBlock: the paper's equations written out (no authors' code exists), the collapses
being exact where the paper says so, parameter counts against its formulas, bad input, deployment in a ViT."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
import torch.nn.functional as F
import vit_attention_checks as checks
from timm.layers import Attention, Mlp

from attnzoo.layers.minimal_transformer import MinimalAttention, MinimalBlock

C, B, N = 16, 2, 7


def _paper_attention(x, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, heads):
    """Eqs. 1-5 in the paper's row-vector form: ``z_i = sum_j a_ij x_j W^V W^O``, ``a_i = softmax_j(x_i W^Q
    (x_j W^K)^T / sqrt(d))`` per head (Keras' MultiHeadAttention scaling), matrices as ``x @ W`` (in x out).
    ``W^K = None`` means the unit matrix (collapsed), ``W^V = W^O = None`` the unit matrices (noWv.Vo)."""
    d = x.shape[-1] // heads

    def split(t):
        return t.reshape(B, N, heads, d).transpose(1, 2)

    q = split(x @ w_q + b_q)
    k = split(x if w_k is None else x @ w_k + b_k)
    v = split(x if w_v is None else x @ w_v + b_v)
    a = torch.softmax(q @ k.transpose(-2, -1) / d ** 0.5, dim=-1)
    z = (a @ v).transpose(1, 2).reshape(B, N, heads * d)
    return z if w_o is None else z @ w_o + b_o


def _weights(layer):
    """The layer's Linear maps as the paper's right-multiplied matrices (W = weight^T) and biases."""
    out = {}
    for key, module in (("q", layer.q_proj), ("k", layer.k_proj), ("v", layer.v_proj), ("o", layer.proj)):
        out[f"w_{key}"] = None if module is None else module.weight.t()
        out[f"b_{key}"] = None if module is None else module.bias
    return out


def _layer(heads=1, **kwargs):
    torch.manual_seed(0)
    layer = MinimalAttention(C, heads, dtype=torch.float64, **kwargs)
    with torch.no_grad():  # biases non-zero, so that a dropped bias shows
        for name, p in layer.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("heads, qk, vo", [(1, "separate", "separate"), (4, "separate", "separate"),
                                           (1, "collapsed", "separate"), (1, "collapsed", "none"),
                                           (1, "symmetric", "separate"), (4, "symmetric", "separate"),
                                           (1, "symmetric", "none")])
def test_matches_paper_equations(heads, qk, vo):
    layer = _layer(heads, qk=qk, vo=vo)
    w = _weights(layer)
    if qk == "symmetric":  # W^K = W^Q
        w["w_k"], w["b_k"] = w["w_q"], w["b_q"]
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _paper_attention(x, heads=heads, **w), rtol=0, atol=1e-10)


@pytest.mark.parametrize("heads", [1, 4])
def test_unchanged_matrices_are_timm_attention(heads):
    layer = _layer(heads, qk="separate")
    reference = Attention(C, heads, qkv_bias=True, dtype=torch.float64)
    reference.load_state_dict({
        "qkv.weight": torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]),
        "qkv.bias": torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]),
        "proj.weight": layer.proj.weight, "proj.bias": layer.proj.bias})
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=1e-10)


def test_collapsing_qk_and_vo_loses_nothing_for_one_head():
    # Sec. 3: W^QK = W^Q W^K^T and W^VO = W^V W^O. With biases: b_q W^K^T becomes the collapsed bias, the key
    # bias only adds a per-query constant (cancelled by the softmax), and softmax rows sum to 1 so
    # b_V W^O + b_O becomes the collapsed output bias.
    full = _layer(1, qk="separate", vo="separate")
    small = _layer(1, qk="collapsed", vo="collapsed")
    w = _weights(full)
    with torch.no_grad():
        small.q_proj.weight.copy_((w["w_q"] @ w["w_k"].t()).t())
        small.q_proj.bias.copy_(w["b_q"] @ w["w_k"].t())
        small.proj.weight.copy_((w["w_v"] @ w["w_o"]).t())
        small.proj.bias.copy_(w["b_v"] @ w["w_o"] + w["b_o"])
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(small(x), full(x), rtol=0, atol=1e-10)


def test_without_value_and_output_matrices_tokens_are_convex_combinations():
    layer = _layer(1, qk="collapsed", vo="none")
    x = torch.randn(B, N, C, dtype=torch.float64)
    out = layer(x)
    low, high = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    assert ((out >= low - 1e-12) & (out <= high + 1e-12)).all()


def test_symmetric_similarity_is_symmetric_and_self_maximal():
    layer = _layer(4, qk="symmetric")
    x = torch.randn(B, N, C, dtype=torch.float64)
    q = layer.q_proj(x).reshape(B, N, 4, 4).transpose(1, 2)
    scores = q @ q.transpose(-2, -1)  # the layer's keys are its queries
    torch.testing.assert_close(scores, scores.transpose(-2, -1))
    assert (torch.linalg.eigvalsh(scores) > -1e-9).all()  # positive semi-definite Gram matrix


def test_parameter_counts_follow_the_paper():
    def count(module):
        return sum(p.numel() for p in module.parameters())

    n = 384
    bias = dict(qkv_bias=False, proj_bias=False)
    assert count(MinimalAttention(n, 6, qk="separate", **bias)) == 4 * n * n
    assert count(MinimalAttention(n, 6, qk="symmetric", **bias)) == 3 * n * n  # W^Q reused as W^K
    assert count(MinimalAttention(n, 1, qk="collapsed", **bias)) == 3 * n * n
    assert count(MinimalAttention(n, 1, qk="collapsed", vo="collapsed", **bias)) == 2 * n * n  # 50 % of 4 N^2
    assert count(MinimalAttention(n, 1, qk="collapsed", vo="none", **bias)) == n * n  # 25 %
    # Conclusions: an MLP of multiple h has 2hN^2 + hN + N parameters, twice the attention's 4N^2 for h = 4, so
    # dropping it keeps about a third
    mlp = count(Mlp(n, 4 * n))
    assert mlp == 2 * 4 * n * n + 4 * n + n
    attention = count(Attention(n, 6, qkv_bias=True))
    assert abs(attention / (attention + mlp) - 1 / 3) < 1e-3
    # blocks of the minimum variant (collapsed W^QK, no W^V/W^O) are under 10 % of a full block with MLP
    full_block = count(timm.models.vision_transformer.Block(n, 6, qkv_bias=True))
    minimum = count(MinimalBlock(n, 1, attn_layer=MinimalAttention.configure(qk="collapsed", vo="none")))
    assert minimum == n * n + n + 2 * n and minimum / full_block < 0.10


def test_block_has_no_mlp_and_is_a_pre_norm_residual():
    block = MinimalBlock(C, 4, attn_layer=MinimalAttention.configure(qk="symmetric"), init_values=0.5,
                         dtype=torch.float64).eval()
    assert {name.split(".")[0] for name, _ in block.named_parameters()} == {"norm1", "attn", "ls1"}
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(block(x), x + 0.5 * block.attn(block.norm1(x)), rtol=0, atol=1e-12)
    plain = MinimalBlock(C, 4, attn_layer=Attention)  # timm's Attention: the paper's "unchanged" matrices
    assert type(plain.attn) is Attention and not hasattr(plain, "mlp")
    assert type(MinimalBlock(C, 4, attn_layer="attn").attn) is Attention


def test_vit_with_minimal_blocks_trains():
    model = checks.tiny_vit(block_fn=MinimalBlock, attn_layer=MinimalAttention.configure(qk="symmetric"),
                            drop_path_rate=0.1).train()
    assert all(isinstance(b, MinimalBlock) for b in model.blocks)
    assert model.blocks[1].drop_path_rate == pytest.approx(0.1)
    model(checks.images()).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_device_dtype_reset_and_repr():
    layer = _layer(1, qk="collapsed", vo="collapsed")
    assert layer.k_proj is None and layer.v_proj is None and layer.proj is not None
    assert all(p.is_meta for p in MinimalAttention(C, 4, device="meta").parameters())
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    layer.reset_parameters()
    assert layer.q_proj.weight.abs().sum() > 0 and layer.proj.weight.abs().sum() > 0
    assert "qk='collapsed', vo='collapsed'" in repr(layer) and "no MLP" in repr(MinimalBlock(C, 4))
    assert layer.product_macs(1, N) == N * N * 2 * C


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=C, num_heads=4, qk="collapsed"), "qk='collapsed' needs num_heads=1, got 4"),
    (dict(dim=C, num_heads=4, vo="collapsed"), "vo='collapsed' needs num_heads=1, got 4"),
    (dict(dim=C, num_heads=2, vo="none"), "vo='none' needs num_heads=1, got 2"),
    (dict(dim=C, num_heads=1, qk="cholesky"), r"qk='cholesky' is not one of \('separate', 'collapsed', 'symmetric'\)"),
    (dict(dim=C, num_heads=1, vo="identity"), r"vo='identity' is not one of \('separate', 'collapsed', 'none'\)"),
    (dict(dim=C, num_heads=3), "dim=16 is not divisible by num_heads=3"),
    (dict(dim=C, num_heads=4, qk_norm=True), "qk_norm=True is not supported"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MinimalAttention(**kwargs)


def test_bad_block_arguments_raise():
    with pytest.raises(ValueError, match="attn_layer='flash' is not one of"):
        MinimalBlock(C, 4, attn_layer="flash")
    with pytest.raises(ValueError, match=r"drop_path=1.5, expected a float in \[0, 1\)"):
        MinimalBlock(C, 4, drop_path=1.5)


TINY = functools.partial(checks.tiny_vit, block_fn=MinimalBlock, attn_layer=MinimalAttention.configure(qk="symmetric"))
TINY_MIN = functools.partial(checks.tiny_vit, block_fn=MinimalBlock, num_heads=1,
                             attn_layer=MinimalAttention.configure(qk="collapsed", vo="none"))


@pytest.mark.parametrize("check", checks.FAST_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("factory", [TINY, TINY_MIN], ids=["symmetric", "wqk-novo"])
def test_deployable_in_a_tiny_vit(check, factory):
    check(factory)


def test_compile_fullgraph_in_a_tiny_vit():
    checks.check_compile(TINY)


def test_onnx_in_a_tiny_vit(tmp_path):
    checks.check_onnx(TINY, tmp_path)


def test_uses_fused_attention_like_timm(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = MinimalAttention(C, 4)
    layer(torch.randn(B, N, C))
    assert calls == ([1] if layer.fused_attn else [])
