"""MoHAttention: parity with a functional rewrite of the authors' forward, reduction to timm's Attention, the
load-balance loss, bad head splits, and deployment inside a tiny ViT."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import vit_attention_checks as checks
from timm.layers import Attention

from attnzoo.layers.moh import MoHAttention, moh_default_split, moh_head_gates, moh_load_balance_loss

C, B, N = 24, 2, 7


def _authors_forward(x, sd, num_heads, shared_head, routed_head, training=False):
    """``MoH-ViT/attention.py`` / ``MoH-DiT/models.py::MoHAttention.forward`` written out with functional ops, on
    the authors' parameter names (plain softmax attention, no CPB/cosine: the DiT form). Returns (out, l_aux)."""
    Bx, Nx, Cx = x.shape
    head_dim = sd["qkv.weight"].shape[0] // (3 * num_heads)
    _x = x.reshape(Bx * Nx, Cx)
    l_aux = None
    if routed_head > 0:
        gates = F.softmax(F.linear(_x, sd["wg.weight"]), dim=1)
        num_experts = gates.shape[1]
        _, indices = torch.topk(gates, k=routed_head, dim=1)
        mask = F.one_hot(indices, num_classes=num_experts).sum(dim=1)
        if training:
            # the authors' mask.float() is float32; promote_types keeps that for half/float inputs and fp64 here
            ce = mask.to(torch.promote_types(x.dtype, torch.float32)).mean(dim=0)
            l_aux = torch.mean(gates.mean(dim=0) * ce) * num_experts * num_experts
        routed_head_gates = gates * mask
        denom = torch.clamp(routed_head_gates.sum(dim=1, keepdim=True), min=torch.finfo(x.dtype).eps)
        routed_head_gates = (routed_head_gates / denom).reshape(Bx, Nx, -1) * routed_head
    qkv = F.linear(x, sd["qkv.weight"], sd["qkv.bias"]).reshape(Bx, Nx, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = (q * head_dim ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
    heads = (attn @ v).transpose(1, 2)  # B, N, head, dim
    if routed_head > 0:
        if shared_head > 1:
            shared_head_gates = F.softmax(F.linear(_x, sd["wg_1.weight"]), dim=1).reshape(Bx, Nx, -1) * shared_head
        else:  # MoH-ViT's constant gate of a single shared head
            shared_head_gates = torch.ones((Bx, Nx, shared_head), dtype=x.dtype) * shared_head
        if shared_head == 0:
            masked_gates = routed_head_gates
        else:
            weight_0 = F.softmax(F.linear(_x, sd["wg_0.weight"]), dim=1).reshape(Bx, Nx, 2) * 2
            shared_head_gates = torch.einsum("bn,bne->bne", weight_0[:, :, 0], shared_head_gates)
            routed_head_gates = torch.einsum("bn,bne->bne", weight_0[:, :, 1], routed_head_gates)
            masked_gates = torch.cat([shared_head_gates, routed_head_gates], dim=2)
    else:
        masked_gates = F.softmax(F.linear(_x, sd["wg_1.weight"]), dim=1).reshape(Bx, Nx, -1) * shared_head
    heads = torch.einsum("bne,bned->bned", masked_gates, heads).reshape(Bx, Nx, num_heads * head_dim)
    return F.linear(heads, sd["proj.weight"], sd["proj.bias"]), l_aux


def _authors_state_dict(num_heads, shared_head, routed_head, seed=0):
    """Random weights under the authors' names (``wg``, ``wg_0``, ``wg_1`` exist exactly when their code makes them)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    sd = {"qkv.weight": rand(3 * C, C), "qkv.bias": rand(3 * C), "proj.weight": rand(C, C), "proj.bias": rand(C)}
    if routed_head > 0:
        sd["wg.weight"] = rand(num_heads - shared_head, C, scale=1.0)
        if shared_head > 0:
            sd["wg_0.weight"] = rand(2, C, scale=1.0)
    if shared_head > 1:
        sd["wg_1.weight"] = rand(shared_head, C, scale=1.0)
    return sd


# (heads, shared, routed): MoH-DiT-S/2-90 early and late layers, routed only, MoH-ViT's single shared head, all
# routed heads selected
SPLITS = [(6, 3, 2), (6, 6, 0), (6, 0, 2), (6, 1, 2), (4, 2, 2)]


def _layer(num_heads, shared, routed, **kwargs):
    return MoHAttention(C, num_heads, shared, routed, qkv_bias=True, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("num_heads, shared, routed", SPLITS)
def test_matches_authors_forward_with_their_weights(num_heads, shared, routed):
    sd = _authors_state_dict(num_heads, shared, routed)
    layer = _layer(num_heads, shared, routed)
    layer.load_state_dict(sd)  # strict: same parameter names and shapes as the authors' module
    x = torch.randn(B, N, C, dtype=torch.float64)
    expected, _ = _authors_forward(x, sd, num_heads, shared, routed)
    torch.testing.assert_close(layer.eval()(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_heads, shared, routed", [s for s in SPLITS if s[2] > 0])
def test_load_balance_loss_matches_authors(num_heads, shared, routed):
    sd = _authors_state_dict(num_heads, shared, routed, seed=1)
    layer = _layer(num_heads, shared, routed)
    layer.load_state_dict(sd)
    x = torch.randn(B, N, C, dtype=torch.float64)
    out = layer.train()(x)
    expected, l_aux = _authors_forward(x, sd, num_heads, shared, routed, training=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(layer.aux_loss, l_aux, rtol=0, atol=1e-12)
    # a uniform router has P_i = 1/E, so E^2 * mean(P_i f_i) = sum_i f_i = k whichever heads top-k picks
    with torch.no_grad():
        layer.wg.weight.zero_()
    layer(x)
    torch.testing.assert_close(layer.aux_loss, torch.tensor(float(routed), dtype=torch.float64))


@pytest.mark.parametrize("num_heads, shared, routed", [(6, 6, 0), (6, 3, 3), (6, 0, 6), (6, 1, 5)])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_all_heads_on_with_equal_weights_is_timm_attention(num_heads, shared, routed, qk_norm):
    # zero routers: softmax is uniform, and the code's k, h_s and 2 factors turn every gate into exactly 1
    layer = _layer(num_heads, shared, routed, qk_norm=qk_norm, norm_layer=torch.nn.LayerNorm)
    reference = Attention(C, num_heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=torch.nn.LayerNorm,
                          dtype=torch.float64)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.zeros_like(p) if name.startswith("wg") else torch.randn_like(p))
    reference.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("wg")})
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(layer.eval()(x), reference.eval()(x), rtol=0, atol=1e-10)


def test_gates_activate_exactly_the_shared_and_top_k_heads():
    layer = _layer(6, 2, 2)
    x = torch.randn(B, N, C, dtype=torch.float64)
    gates, _ = moh_head_gates(x, 2, 2, layer.wg.weight, layer.wg_0.weight, layer.wg_1.weight)
    assert gates.shape == (B, N, 6)
    assert (gates[..., :2] > 0).all()  # shared heads always on
    assert ((gates[..., 2:] > 0).sum(-1) == 2).all()  # top-2 of the 4 routed heads
    mix = torch.softmax(x @ layer.wg_0.weight.t(), dim=-1) * 2
    torch.testing.assert_close(gates[..., :2].sum(-1), 2 * mix[..., 0])  # sum of h_s * softmax, times 2 alpha_s
    torch.testing.assert_close(gates[..., 2:].sum(-1), 2 * mix[..., 1])  # renormalised top-k times k, times 2 alpha_r
    # the selected heads are the router's top-2
    probs = torch.softmax(x @ layer.wg.weight.t(), dim=-1)
    assert torch.equal(gates[..., 2:] > 0, torch.zeros_like(probs).scatter(-1, probs.topk(2, -1).indices, 1) > 0)


def test_single_head_and_defaults():
    assert MoHAttention(8, 1).active_heads == 1 and moh_default_split(1) == (0, 1)
    assert moh_default_split(6) == (3, 1) and moh_default_split(12) == (6, 3) and moh_default_split(8, 8) == (8, 0)
    layer = MoHAttention(C, 6)
    assert (layer.shared_heads, layer.routed_heads, layer.active_heads) == (3, 1, 4)
    one = MoHAttention(C, 1, shared_heads=1, routed_heads=0, dtype=torch.float64)  # the authors' code crashes here
    reference = Attention(C, 1, dtype=torch.float64)
    reference.load_state_dict(one.state_dict())
    x = torch.randn(B, N, C, dtype=torch.float64)
    torch.testing.assert_close(one(x), reference(x), rtol=0, atol=1e-12)


def test_load_balance_helper_averages_layers_and_clears():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=C, depth=3, num_heads=6,
                              num_classes=3, attn_layer=MoHAttention.configure(shared_heads=2, routed_heads=2))
    assert moh_load_balance_loss(model).item() == 0.0  # no training forward yet
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward(retain_graph=True)
    losses = torch.stack([block.attn.aux_loss for block in model.blocks])
    torch.testing.assert_close(moh_load_balance_loss(model, "sum", clear=False), losses.sum())
    total = moh_load_balance_loss(model)
    torch.testing.assert_close(total, losses.mean())
    assert total.requires_grad and moh_load_balance_loss(model).item() == 0.0  # cleared
    model.eval()(torch.randn(1, 3, 32, 32))
    assert all(block.attn.aux_loss is None for block in model.blocks)  # eval forwards add nothing
    with pytest.raises(ValueError, match="reduction='max' is not one of"):
        moh_load_balance_loss(model, "max")


def test_router_gets_gradients_through_task_and_balance_losses():
    layer = _layer(6, 3, 2).train()
    out = layer(torch.randn(B, N, C, dtype=torch.float64))
    (out.square().mean() + 0.01 * layer.aux_loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_compiled_training_forward_records_the_same_loss():
    layer = MoHAttention(C, 6, 2, 2, qkv_bias=True).train()
    x = torch.randn(B, N, C)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    compiled_loss = layer.aux_loss
    torch.testing.assert_close(out, layer(x))
    torch.testing.assert_close(compiled_loss, layer.aux_loss)


def test_configure_fixes_arguments_for_timm():
    cls = MoHAttention.configure(shared_heads=2, routed_heads=1)
    assert issubclass(cls, MoHAttention) and cls.configured == {"shared_heads": 2, "routed_heads": 1}
    layer = cls(C, num_heads=6, shared_heads=5)  # fixed values win over what the host passes
    assert (layer.shared_heads, layer.routed_heads) == (2, 1)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['top_k'\]"):
        MoHAttention.configure(top_k=2)
    twice = cls.configure(routed_heads=2)  # configuring a configured class adds to its fixed arguments
    assert twice.__mro__[1] is MoHAttention and twice.configured == {"shared_heads": 2, "routed_heads": 2}


def test_configured_layers_pickle_and_deepcopy():
    import copy
    import pickle

    model = checks.tiny_vit(attn_layer=MoHAttention.configure(shared_heads=2, routed_heads=1))
    x = checks.images()
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        attn = clone.blocks[0].attn
        assert isinstance(attn, MoHAttention) and type(attn).configured == {"shared_heads": 2, "routed_heads": 1}
        assert torch.equal(clone(x), model(x))


def test_device_dtype_reset_and_repr():
    layer = MoHAttention(C, 6, 3, 2, dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    assert all(p.is_meta for p in MoHAttention(C, 6, device="meta").parameters())
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    layer.reset_parameters()
    assert all(p.abs().sum() > 0 for name, p in layer.named_parameters() if name.endswith("weight"))
    assert "shared_heads=3, routed_heads=2, active=5/6" in repr(layer)
    assert layer.product_macs(2, 10) == 2 * 6 * 10 * 10 * 8 + 2 * 10 * 24


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=C, num_heads=6, shared_heads=2, routed_heads=5), r"routed_heads=5 \(top-k\) exceeds the 4 routed heads"),
    (dict(dim=C, num_heads=6, shared_heads=7), "shared_heads=7 exceeds num_heads=6"),
    (dict(dim=C, num_heads=6, shared_heads=4, routed_heads=0), "routed_heads=0 leaves the 2 non-shared heads unused"),
    (dict(dim=C, num_heads=6, shared_heads=-1), "MoHAttention: shared_heads must be an int >= 0, got -1"),
    (dict(dim=25, num_heads=6), "dim=25 is not divisible by num_heads=6"),
    (dict(dim=C, num_heads=0), "MoHAttention: num_heads must be a positive int, got 0"),
    (dict(dim=C, num_heads=6, qk_norm=True), "qk_norm/scale_norm need a norm_layer"),
    (dict(dim=C, num_heads=6, attn_drop=1.0), r"attn_drop=1.0, expected a float in \[0, 1\)"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoHAttention(**kwargs)


def test_non_int_head_counts_raise_type_error():
    with pytest.raises(TypeError, match=r"MoHAttention: routed_heads must be an int >= 0, got 1.5 \(float\)"):
        MoHAttention(C, num_heads=6, routed_heads=1.5)
    with pytest.raises(TypeError, match=r"MoHAttention: num_heads must be a positive int, got True \(bool\)"):
        MoHAttention(C, num_heads=True)


TINY = functools.partial(checks.tiny_vit, attn_layer=MoHAttention.configure(shared_heads=1, routed_heads=2))


@pytest.mark.parametrize("check", checks.FAST_CHECKS, ids=lambda c: c.__name__)
def test_deployable_in_a_tiny_vit(check):
    check(TINY)


def test_compile_fullgraph_in_a_tiny_vit():
    checks.check_compile(TINY)


def test_onnx_in_a_tiny_vit(tmp_path):
    checks.check_onnx(TINY, tmp_path)
