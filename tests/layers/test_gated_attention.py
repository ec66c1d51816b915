"""GatedAttention: parity with a functional rewrite of the authors' Qwen3 attention (their interleaved q_proj
layout), with timm's Attention (gated=True, and a gate of ones), variants, bad input, deployment in a tiny ViT."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import vit_attention_checks as checks
from timm.layers import Attention, RmsNorm

from attnzoo.layers.gated_attention import GatedAttention, gated_attention_state_dict_from_qwen3

C, H, B, N = 24, 4, 2, 7
D = C // H


def _rms(t, weight, eps=1e-6):
    return weight * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps))


def _authors_forward(x, sd, num_heads, gate, qk_norm=False):
    """``modeling_qwen3.py::Qwen3Attention.forward`` (eager) with one KV head per query head, no RoPE (cos=1,
    sin=0) and no mask, as a ViT uses it; on the authors' parameter names and layout."""
    bsz, q_len, _ = x.shape
    head_dim = sd["k_proj.weight"].shape[0] // num_heads
    query_states = F.linear(x, sd["q_proj.weight"], sd.get("q_proj.bias"))
    key_states = F.linear(x, sd["k_proj.weight"], sd.get("k_proj.bias"))
    value_states = F.linear(x, sd["v_proj.weight"], sd.get("v_proj.bias"))
    query_states = query_states.view(bsz, q_len, num_heads, -1)  # num_key_value_heads == num_heads
    gate_width = 1 if gate == "headwise" else head_dim
    query_states, gate_score = torch.split(query_states, [head_dim, gate_width], dim=-1)
    gate_score = gate_score.reshape(bsz, q_len, -1, gate_width)
    query_states = query_states.reshape(bsz, q_len, -1, head_dim).transpose(1, 2)
    key_states = key_states.view(bsz, q_len, -1, head_dim).transpose(1, 2)
    value_states = value_states.view(bsz, q_len, -1, head_dim).transpose(1, 2)
    if qk_norm:
        query_states, key_states = _rms(query_states, sd["q_norm.weight"]), _rms(key_states, sd["k_norm.weight"])
    attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / head_dim ** 0.5
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2)
    attn_output = attn_output * torch.sigmoid(gate_score)
    return F.linear(attn_output.reshape(bsz, q_len, -1), sd["o_proj.weight"], sd.get("o_proj.bias"))


def _authors_state_dict(gate, bias=True, qk_norm=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q_rows = H * D + (H if gate == "headwise" else H * D)
    shapes = {"q_proj": q_rows, "k_proj": H * D, "v_proj": H * D, "o_proj": C}
    sd = {}
    for name, rows in shapes.items():
        sd[f"{name}.weight"] = torch.randn(rows, C, generator=g, dtype=torch.float64) * 0.3
        if bias:
            sd[f"{name}.bias"] = torch.randn(rows, generator=g, dtype=torch.float64) * 0.3
    if qk_norm:
        sd["q_norm.weight"] = 1 + 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
        sd["k_norm.weight"] = 1 + 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    return sd


@pytest.mark.parametrize("gate", ["elementwise", "headwise"])
@pytest.mark.parametrize("bias, qk_norm", [(True, False), (False, True)])
def test_matches_authors_forward_with_their_weights(gate, bias, qk_norm):
    sd = _authors_state_dict(gate, bias, qk_norm)
    layer = GatedAttention(C, H, gate=gate, qkv_bias=bias, proj_bias=bias, qk_norm=qk_norm, norm_layer=RmsNorm,
                           dtype=torch.float64)
    layer.load_state_dict(gated_attention_state_dict_from_qwen3(sd, H, gate))  # strict
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _authors_forward(x, sd, H, gate, qk_norm), rtol=0, atol=1e-10)


def test_elementwise_gate_is_timms_gated_attention():
    layer = GatedAttention(C, H, qkv_bias=True, dtype=torch.float64)
    reference = Attention(C, H, qkv_bias=True, gated=True, dtype=torch.float64)
    reference.load_state_dict(layer.state_dict())  # same names and shapes: qkv, gate, proj
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("gate", ["elementwise", "headwise"])
def test_a_gate_of_ones_is_timm_attention(gate):
    layer = GatedAttention(C, H, gate=gate, qkv_bias=True, dtype=torch.float64)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(float("inf"))  # sigmoid(inf) == 1 exactly
    reference = Attention(C, H, qkv_bias=True, dtype=torch.float64)
    reference.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("gate")})
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=1e-10)
    with torch.no_grad():
        layer.gate.bias.zero_()  # the authors' init regime: gate 0.5 halves the attention branch before proj
        layer.proj.bias.zero_()
        reference.proj.bias.zero_()
    torch.testing.assert_close(layer(x), 0.5 * reference(x), rtol=0, atol=1e-10)


def test_headwise_gate_scales_each_head_by_one_score():
    head = GatedAttention(C, H, gate="headwise", qkv_bias=True, dtype=torch.float64)
    element = GatedAttention(C, H, gate="elementwise", qkv_bias=True, dtype=torch.float64)
    sd = head.state_dict()
    sd["gate.weight"] = sd["gate.weight"].repeat_interleave(D, 0)  # one row per head -> the same row per channel
    sd["gate.bias"] = sd["gate.bias"].repeat_interleave(D, 0)
    element.load_state_dict(sd)
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(head(x), element(x), rtol=0, atol=1e-12)
    assert head.gate.out_features == H and element.gate.out_features == C


def test_gate_is_query_dependent_and_sparse_capable():
    layer = GatedAttention(C, H, qkv_bias=True, dtype=torch.float64)
    x = torch.randn(B, N, C, dtype=torch.float64)
    with torch.no_grad():
        layer.gate.bias.fill_(-40.0)  # gate ~ 0: the attention branch is switched off token by token
        assert layer(x).sub(layer.proj.bias).abs().max() < 1e-12
        layer.gate.bias.zero_()
    # changing one token changes that token's gate, not the others'
    y = x.clone()
    y[:, 3] += 1.0
    assert not torch.allclose(torch.sigmoid(layer.gate(x))[:, 3], torch.sigmoid(layer.gate(y))[:, 3])
    torch.testing.assert_close(layer.gate(x)[:, :3], layer.gate(y)[:, :3])


def test_device_dtype_reset_and_repr():
    layer = GatedAttention(C, H, gate="headwise", dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    assert all(p.is_meta for p in GatedAttention(C, H, device="meta").parameters())
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    layer.reset_parameters()
    assert layer.qkv.weight.abs().sum() > 0 and layer.gate.weight.abs().sum() > 0
    assert "gate='headwise'" in repr(layer) and layer.product_macs(1, N) == H * N * N * 2 * D + N * C


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=C, num_heads=H, gate="G5"), r"gate='G5' is not one of \('elementwise', 'headwise'\)"),
    (dict(dim=C, num_heads=H, gate="value"), r"gate='value' is not one of"),
    (dict(dim=C, num_heads=5), "dim=24 is not divisible by num_heads=5"),
    (dict(dim=C, num_heads=H, scale_norm=True), "qk_norm/scale_norm need a norm_layer"),
    (dict(dim=C, num_heads=H, proj_drop=-0.5), r"proj_drop=-0.5, expected a float in \[0, 1\)"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GatedAttention(**kwargs)


def test_conversion_rejects_unknown_gate():
    with pytest.raises(ValueError, match="gate='sigmoid' is not one of"):
        gated_attention_state_dict_from_qwen3(_authors_state_dict("headwise"), H, "sigmoid")


TINY = functools.partial(checks.tiny_vit, attn_layer=GatedAttention)
TINY_HEADWISE = functools.partial(checks.tiny_vit, attn_layer=GatedAttention.configure(gate="headwise"))


@pytest.mark.parametrize("check", checks.FAST_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("factory", [TINY, TINY_HEADWISE], ids=["elementwise", "headwise"])
def test_deployable_in_a_tiny_vit(check, factory):
    check(factory)


def test_compile_fullgraph_in_a_tiny_vit():
    checks.check_compile(TINY)


def test_onnx_in_a_tiny_vit(tmp_path):
    checks.check_onnx(TINY, tmp_path)
