"""FlowAttention / flow_attention: parity with functional rewrites of the authors' vision and core modules, the
L != S case, the flow identities, low precision, refused arguments, deployment inside a tiny ViT."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import vit_attention_checks as checks

from attnzoo.layers.flowformer import FlowAttention, flow_attention

C, H, B, N = 24, 4, 2, 9
D = C // H
EPS = 1e-6


def _my_sum(a, b):
    return torch.sum(a * b[:, :, None, :], dim=-1)  # "nhld,nhd->nhl"


def _authors_cv_core(q, k, v):
    """The body of ``Flowformer_CV/flowformer.py::Flow_Attention.forward`` after the projection, on (B, h, L, d)
    queries and (B, h, S, d) keys/values (the CV code only calls it with L == S; the formula is general)."""
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    sink_incoming = 1.0 / (_my_sum(q + 1e-6, k.sum(dim=2) + 1e-6) + 1e-6)
    source_outgoing = 1.0 / (_my_sum(k + 1e-6, q.sum(dim=2) + 1e-6) + 1e-6)
    conserved_sink = _my_sum(q + 1e-6, (k * source_outgoing[:, :, :, None]).sum(dim=2) + 1e-6) + 1e-6
    conserved_source = _my_sum(k + 1e-6, (q * sink_incoming[:, :, :, None]).sum(dim=2) + 1e-6) + 1e-6
    conserved_source = torch.clamp(conserved_source, min=-1.0, max=1.0)
    sink_allocation = torch.sigmoid(conserved_sink * (float(q.shape[2]) / float(k.shape[2])))
    source_competition = torch.softmax(conserved_source, dim=-1) * float(k.shape[2])
    kv = k.transpose(-2, -1) @ (v * source_competition[:, :, :, None])
    return ((q @ kv) * sink_incoming[:, :, :, None]) * sink_allocation[:, :, :, None]


def _authors_cv_forward(x, sd, num_heads):
    """``Flowformer_CV/flowformer.py::Flow_Attention.forward`` on the authors' names (``qkv``, ``proj``)."""
    B_, N_, C_ = x.shape
    qkv = F.linear(x, sd["qkv.weight"], sd["qkv.bias"]).reshape(B_, N_, 3, num_heads, C_ // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = _authors_cv_core(q, k, v).transpose(1, 2).reshape(B_, N_, C_)
    return F.linear(out, sd["proj.weight"], sd["proj.bias"])


def _authors_core(q, k, v, eps=1e-6):
    """``Flow_Attention.py::Flow_Attention.forward`` (the core module) after projection: eps inside the sums only."""
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    sink_incoming = 1.0 / torch.einsum("nhld,nhd->nhl", q + eps, k.sum(dim=2) + eps)
    source_outgoing = 1.0 / torch.einsum("nhld,nhd->nhl", k + eps, q.sum(dim=2) + eps)
    conserved_sink = torch.einsum("nhld,nhd->nhl", q + eps, (k * source_outgoing[:, :, :, None]).sum(dim=2) + eps)
    conserved_source = torch.einsum("nhld,nhd->nhl", k + eps, (q * sink_incoming[:, :, :, None]).sum(dim=2) + eps)
    conserved_source = torch.clamp(conserved_source, min=-1.0, max=1.0)
    sink_allocation = torch.sigmoid(conserved_sink * (float(q.shape[2]) / float(k.shape[2])))
    source_competition = torch.softmax(conserved_source, dim=-1) * float(k.shape[2])
    kv = torch.einsum("nhld,nhlm->nhdm", k, v * source_competition[:, :, :, None])
    return torch.einsum("nhld,nhdm->nhlm", q * sink_incoming[:, :, :, None], kv) * sink_allocation[:, :, :, None]


def _qkv(L, S, dv=D, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, width, generator=g, dtype=torch.float64) * scale
            for n, width in ((L, D), (S, D), (S, dv))]


def test_layer_matches_authors_vision_forward_with_their_weights():
    g = torch.Generator().manual_seed(0)
    sd = {"qkv.weight": torch.randn(3 * C, C, generator=g), "qkv.bias": torch.randn(3 * C, generator=g),
          "proj.weight": torch.randn(C, C, generator=g), "proj.bias": torch.randn(C, generator=g)}
    sd = {k: (v * 0.5).double() for k, v in sd.items()}
    layer = FlowAttention(C, H, dtype=torch.float64)
    layer.load_state_dict(sd)  # strict: the authors' names
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _authors_cv_forward(x, sd, H), rtol=0, atol=1e-10)


@pytest.mark.parametrize("L, S, dv", [(9, 9, D), (5, 13, D), (13, 5, 3)])
def test_functional_matches_authors_formula_for_any_lengths(L, S, dv):
    q, k, v = _qkv(L, S, dv, scale=2.0)
    torch.testing.assert_close(flow_attention(q, k, v), _authors_cv_core(q, k, v), rtol=0, atol=1e-10)
    # the core module places eps differently: a few eps apart (relative), never the 1e-10 of the vision form
    core = _authors_core(q, k, v)
    torch.testing.assert_close(flow_attention(q, k, v), core, rtol=1e-4, atol=1e-6)
    assert (flow_attention(q, k, v) - core).abs().max() > 1e-10


def test_flow_identities_hold():
    # with eps -> 0 the conserved flows sum to the other side's length: sum_i I^_i = S and sum_j O^_j = L
    q, k, _ = _qkv(7, 11)
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    incoming = 1 / torch.einsum("bhld,bhd->bhl", q, k.sum(2))
    outgoing = 1 / torch.einsum("bhsd,bhd->bhs", k, q.sum(2))
    conserved_sink = torch.einsum("bhld,bhd->bhl", q, (k * outgoing[..., None]).sum(2))
    conserved_source = torch.einsum("bhsd,bhd->bhs", k, (q * incoming[..., None]).sum(2))
    torch.testing.assert_close(conserved_sink.sum(-1), torch.full((B, H), 11.0, dtype=torch.float64))
    torch.testing.assert_close(conserved_source.sum(-1), torch.full((B, H), 7.0, dtype=torch.float64))


def test_output_of_a_sink_is_a_reweighted_mean_of_values():
    # a constant value vector v_j = c gives R_i = c * allocation_i * (phi(q_i) . sum_j phi(k_j) comp_j) / I_i; with
    # one source the competition is 1 * S = 1 and the result is c * sigmoid(I^_i L / S) * (almost) 1
    q, k, _ = _qkv(6, 1)
    v = torch.full((B, H, 1, D), 3.0, dtype=torch.float64)
    out = flow_attention(q, k, v)
    qs, ks = torch.sigmoid(q), torch.sigmoid(k)
    conserved_sink = ((qs + EPS) * ((ks / (((ks + EPS) * (qs.sum(2, keepdim=True) + EPS)).sum(-1, keepdim=True)
                                            + EPS)).sum(2, keepdim=True) + EPS)).sum(-1) + EPS
    torch.testing.assert_close(out, 3.0 * torch.sigmoid(conserved_sink * 6).unsqueeze(-1).expand_as(out),
                               rtol=1e-5, atol=1e-6)


def test_cost_is_linear_in_tokens():
    layer = FlowAttention(C, H)
    assert layer.product_macs(1, 2 * N) == 2 * layer.product_macs(1, N)
    assert layer.product_macs(1, N) == H * N * (2 * D * D + 6 * D)


def test_low_precision_keeps_normalisers_in_float32():
    q, k, v = _qkv(2048, 2048, scale=2.0)
    reference = flow_attention(q, k, v)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        out = flow_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.double() - reference).abs().max() < tol * reference.abs().max()


def test_gradients_reach_every_parameter():
    layer = FlowAttention(C, H, dtype=torch.float64)
    layer(torch.randn(B, N, C, dtype=torch.float64)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_device_dtype_reset_and_repr():
    layer = FlowAttention(C, H, dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    assert all(p.is_meta for p in FlowAttention(C, H, device="meta").parameters())
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    layer.reset_parameters()
    assert layer.qkv.weight.abs().sum() > 0 and layer.proj.weight.abs().sum() > 0
    assert "num_heads=4, head_dim=6, eps=1e-06" in repr(layer)
    assert FlowAttention(C).num_heads == 12 and FlowAttention(C).qkv.bias is not None  # the authors' defaults


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=C, num_heads=5), "dim=24 is not divisible by num_heads=5"),
    (dict(dim=C, num_heads=H, attn_drop=0.1), "attn_drop=0.1 is not supported: Flow-Attention forms no attention"),
    (dict(dim=C, num_heads=H, qk_norm=True), "qk_norm=True is not supported"),
    (dict(dim=C, num_heads=H, scale_norm=True), "scale_norm=True is not supported"),
    (dict(dim=C, num_heads=H, eps=0.0), "eps=0.0, expected a float > 0"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowAttention(**kwargs)


def test_masks_and_causal_are_refused():
    layer = FlowAttention(C, H)
    x = torch.randn(B, N, C)
    with pytest.raises(ValueError, match="attn_mask/is_causal are not supported"):
        layer(x, attn_mask=torch.zeros(N, N))
    with pytest.raises(ValueError, match="attn_mask/is_causal are not supported"):
        layer(x, is_causal=True)


TINY = functools.partial(checks.tiny_vit, attn_layer=FlowAttention)


@pytest.mark.parametrize("check", checks.FAST_CHECKS, ids=lambda c: c.__name__)
def test_deployable_in_a_tiny_vit(check):
    check(TINY)


def test_compile_fullgraph_in_a_tiny_vit():
    checks.check_compile(TINY)


def test_onnx_in_a_tiny_vit(tmp_path):
    checks.check_onnx(TINY, tmp_path)
