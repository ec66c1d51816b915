"""The wave-2 ViT classifiers: parameter and MAC counts against the papers, MoH head splits, timm's model checks."""

from __future__ import annotations

import pytest
import timm
import torch
from timm_model_checks import check_timm_classifier

import attnzoo
import attnzoo.zoo  # noqa: F401  (registers the models)
from attnzoo.layers import FlowAttention, GatedAttention, MinimalAttention, MinimalBlock, MoHAttention
from attnzoo.profiling import count_macs, count_params
from attnzoo.zoo import create_model
from attnzoo.zoo.vit_attention import ATTENTION_MAC_HOOKS, MOH_DIT_SPLITS, moh_split_for_depth

NAMES = ["flowformer_deit_small_patch16_224", "gated_vit_small_patch16_224", "minimal_vit_small_patch16_224",
         "moh_vit_base_patch16_224_75", "moh_vit_base_patch16_224_90", "moh_vit_small_patch16_224_75",
         "moh_vit_small_patch16_224_90"]
DEIT_S = 22_050_664  # timm's vit_small_patch16_224 = DeiT-S
DEIT_B = 86_567_656


def test_registered_in_attnzoo_and_timm_without_replacing_timm_names():
    assert set(NAMES) <= set(attnzoo.list_models(task="classification"))
    for name in NAMES:
        assert timm.is_model(name) and timm.models.get_arch_name(name) == name
        assert timm.models.model_entrypoint(name).__module__ == "attnzoo.zoo.vit_attention"


def _router_params(dim, heads, shared, routed):
    """wg (E x C) and wg_0 (2 x C) when routing, wg_1 (h_s x C) when more than one head is shared."""
    return dim * ((heads - shared) if routed else 0) + dim * (2 if routed and shared else 0) + \
        dim * (shared if shared > 1 else 0)


@pytest.mark.parametrize("name, split, dim, heads, base, active", [
    ("moh_vit_small_patch16_224_90", "S_90", 384, 6, DEIT_S, 64),
    ("moh_vit_small_patch16_224_75", "S_75", 384, 6, DEIT_S, 54),
    ("moh_vit_base_patch16_224_90", "B_90", 768, 12, DEIT_B, 129),
    ("moh_vit_base_patch16_224_75", "B_75", 768, 12, DEIT_B, 108),
])
def test_moh_models_reproduce_the_authors_head_splits_at_deit_size(name, split, dim, heads, base, active):
    model = timm.create_model(name)
    shared, routed = MOH_DIT_SPLITS[split]
    attns = [block.attn for block in model.blocks]
    assert all(type(a).__mro__[1] is MoHAttention for a in attns)
    assert [(a.shared_heads, a.routed_heads) for a in attns] == list(zip(shared, routed, strict=True))
    # activation ratio over (block, head) pairs: the authors' 90 / 75 (88.9 %, 75 %, 89.6 %, 75 %)
    assert sum(a.active_heads for a in attns) == active
    assert round(100 * active / (12 * heads)) in ((89, 90) if name.endswith("90") else (75,))
    # "without increasing the number of parameters": DeiT plus the routers, < 0.2 %
    router = sum(_router_params(dim, heads, s, r) for s, r in zip(shared, routed, strict=True))
    assert count_params(model) == base + router and router / base < 2e-3


def test_flowformer_deit_matches_the_paper_size_and_counts_its_linear_cost():
    model = timm.create_model("flowformer_deit_small_patch16_224").eval()
    deit = timm.create_model("vit_small_patch16_224").eval()
    assert all(isinstance(b.attn, FlowAttention) and b.attn.num_heads == 6 for b in model.blocks)
    assert count_params(model) == count_params(deit) == DEIT_S  # the paper's 22M for both
    x = torch.randn(1, 3, 224, 224)
    linear = count_macs(deit, x)
    assert linear == count_macs(model, x) == 4_256_878_312
    # DeiT-S with its attention products is the paper's 4.6G; Flow-Attention replaces 197^2 (64 + 64) per head by
    # 197 (2 * 64^2 + 6 * 64). The paper's 4.2G for DeiT + Flowformer is below even the Linear layers' 4.26G, so it
    # does not reproduce with this (DeiT-S) trunk.
    deit_total, flow_total = (count_macs(m, x, custom_hooks=ATTENTION_MAC_HOOKS) for m in (deit, model))
    assert deit_total == linear + 12 * 6 * 197 * 197 * 128 and round(deit_total / 1e9, 1) == 4.6
    assert flow_total == linear + 12 * 6 * 197 * (2 * 64 * 64 + 6 * 64) and round(flow_total / 1e9, 2) == 4.38


def test_gated_and_minimal_sizes():
    gated = timm.create_model("gated_vit_small_patch16_224")
    assert all(isinstance(b.attn, GatedAttention) and b.attn.gate_variant == "elementwise" for b in gated.blocks)
    assert count_params(gated) == DEIT_S + 12 * (384 * 384 + 384)  # one gate Linear per block
    head = timm.create_model("gated_vit_small_patch16_224", gate="headwise")
    assert count_params(head) == DEIT_S + 12 * (384 * 6 + 6)
    minimal = timm.create_model("minimal_vit_small_patch16_224")
    assert all(isinstance(b, MinimalBlock) and isinstance(b.attn, MinimalAttention) for b in minimal.blocks)
    mlp = 2 * 4 * 384 * 384 + 4 * 384 + 384 + 2 * 384  # the paper's 2hN^2 + hN + N, plus the block's norm2
    key = 384 * 384 + 384  # W^K reused from W^Q
    assert count_params(minimal) == DEIT_S - 12 * (mlp + key)
    smallest = timm.create_model("minimal_vit_small_patch16_224", num_heads=1, qk="collapsed", vo="none")
    assert count_params(smallest) == DEIT_S - 12 * (mlp + 3 * (384 * 384 + 384))  # only W^QK per block
    # the paper's "less than 10 % of the parameters" holds for the blocks (1/12 of a full block plus norms); with
    # ViT-S's patch embedding, position embedding and 1000-class head the whole model keeps 11.5 %
    block = sum(p.numel() for p in smallest.blocks[0].parameters())
    assert block / sum(p.numel() for p in timm.create_model("vit_small_patch16_224").blocks[0].parameters()) < 0.10
    assert round(count_params(smallest) / DEIT_S, 3) == 0.115


def test_moh_split_follows_depth_and_overrides():
    assert moh_split_for_depth([2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 6, 6], 4, "s") == [2, 3, 3, 6]
    assert moh_split_for_depth(3, 2, "s") == [3, 3] and moh_split_for_depth([1, 2], 2, "s") == [1, 2]
    model = create_model("moh_vit_small_patch16_224_75", img_size=32, depth=4)
    assert [(b.attn.shared_heads, b.attn.routed_heads) for b in model.blocks] == [(2, 1), (3, 1), (3, 2), (6, 0)]
    custom = create_model("moh_vit_small_patch16_224_75", img_size=32, depth=2, num_heads=4, embed_dim=32,
                          shared_heads=[2, 1], routed_heads=1)
    assert [(b.attn.shared_heads, b.attn.routed_heads) for b in custom.blocks] == [(2, 1), (1, 1)]
    with pytest.raises(ValueError, match="shared_heads=7 exceeds num_heads=6"):
        create_model("moh_vit_small_patch16_224_90", img_size=32, depth=1, shared_heads=7)
    with pytest.raises(ValueError, match=r"shared_heads=\[\]: expected an int or a non-empty list"):
        create_model("moh_vit_small_patch16_224_90", img_size=32, depth=1, shared_heads=[])


TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=3)  # depth >= 3: timm features_only out_indices=3


@pytest.mark.parametrize("name", NAMES)
def test_passes_timm_model_checks(name):
    # token model: forward_features gives (B, N, C); features_only gives NCHW maps through forward_intermediates
    check_timm_classifier(name, input_size=(3, 32, 32), spatial=False, **TINY)


def test_save_and_from_pretrained_rebuild_the_same_model(tmp_path):
    model = create_model("moh_vit_small_patch16_224_90", num_classes=3, shared_heads=[6, 2, 2], routed_heads=[0, 3, 1],
                         **TINY).eval()
    attnzoo.save_pretrained(model, tmp_path)
    loaded = attnzoo.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert [(b.attn.shared_heads, b.attn.routed_heads) for b in loaded.blocks] == [(6, 0), (2, 3), (2, 1)]
