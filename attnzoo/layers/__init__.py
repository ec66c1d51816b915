"""Attention layers as nn.Modules, one published method per file."""

from attnzoo.layers.dfa3d import DeformableAttention3D, MultiScaleDeformableAttention, MultiViewLifting
from attnzoo.layers.ela import ELA
from attnzoo.layers.flowformer import FlowAttention
from attnzoo.layers.gated_attention import GatedAttention
from attnzoo.layers.halo import HaloAttention
from attnzoo.layers.minimal_transformer import MinimalAttention, MinimalBlock
from attnzoo.layers.mkdc import MKDC, MKIR
from attnzoo.layers.moh import MoHAttention, moh_load_balance_loss
from attnzoo.layers.ninformer import NiNBlock
from attnzoo.layers.topm import TopMAttentionConv
from attnzoo.layers.ulsam import ULSAM

__all__ = ["DeformableAttention3D", "ELA", "FlowAttention", "GatedAttention", "HaloAttention", "MKDC", "MKIR",
           "MinimalAttention", "MinimalBlock", "MoHAttention", "MultiScaleDeformableAttention", "MultiViewLifting",
           "NiNBlock", "TopMAttentionConv", "ULSAM", "moh_load_balance_loss"]
