"""Attention layers as nn.Modules, one published method per file."""

from attnzoo.layers.dfa3d import DeformableAttention3D, MultiScaleDeformableAttention, MultiViewLifting
from attnzoo.layers.ela import ELA
from attnzoo.layers.halo import HaloAttention
from attnzoo.layers.mkdc import MKDC, MKIR
from attnzoo.layers.ninformer import NiNBlock
from attnzoo.layers.topm import TopMAttentionConv
from attnzoo.layers.ulsam import ULSAM

__all__ = ["DeformableAttention3D", "ELA", "HaloAttention", "MKDC", "MKIR", "MultiScaleDeformableAttention",
           "MultiViewLifting", "NiNBlock", "TopMAttentionConv", "ULSAM"]
