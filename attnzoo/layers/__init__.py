"""Attention layers as nn.Modules, one published method per file."""

from timm.layers import register_notrace_function

from attnzoo import _checks, kernels
from attnzoo.layers.dfa3d import DeformableAttention3D, MultiScaleDeformableAttention
from attnzoo.layers.ela import ELA
from attnzoo.layers.flowformer import FlowAttention
from attnzoo.layers.gated_attention import GatedAttention
from attnzoo.layers.halo import HaloAttention
from attnzoo.layers.minimal_transformer import MinimalAttention, MinimalBlock
from attnzoo.layers.mkdc import MKDC, MKIR
from attnzoo.layers.moh import MoHAttention, moh_load_balance_loss
from attnzoo.layers.neighborhood import NeighborhoodAttention2D
from attnzoo.layers.ninformer import NiNBlock
from attnzoo.layers.topm import TopMAttentionConv
from attnzoo.layers.ulsam import ULSAM

__all__ = ["DeformableAttention3D", "ELA", "FlowAttention", "GatedAttention", "HaloAttention", "MKDC", "MKIR",
           "MinimalAttention", "MinimalBlock", "MoHAttention", "MultiScaleDeformableAttention",
           "NeighborhoodAttention2D", "NiNBlock", "TopMAttentionConv", "ULSAM", "moh_load_balance_loss"]

# What the layers call on their inputs that torch.fx cannot trace through (checks that read shapes, the ops' front
# doors that validate and pick a backend): timm's FX feature extraction keeps these as leaf calls.
for _fn in (_checks.check_nchw, _checks.check_tokens, _checks.check_image_size, kernels.ela_gate,
            kernels.halo_attention, kernels.ms_deform_attn, kernels.deform_attn_3d, kernels.topm_attention,
            kernels.topm_knn, kernels.neighborhood_attention):
    register_notrace_function(_fn)
