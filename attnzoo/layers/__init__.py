"""Attention layers as nn.Modules, one published method per file.

:class:`TopMAttentionConv` is a PyTorch Geometric ``MessagePassing`` conv: it is imported (and PyG with it) on first
use, ``from attnzoo.layers import TopMAttentionConv`` or ``attnzoo.layers.TopMAttentionConv``, so that importing
attnzoo does not import PyG (PEP 562 module ``__getattr__``).
"""

import importlib

from timm.layers import register_notrace_function

from attnzoo import _checks, kernels
from attnzoo.layers.dfa3d import DeformableAttention3D, MultiScaleDeformableAttention
from attnzoo.layers.ela import ELA
from attnzoo.layers.flowformer import FlowAttention
from attnzoo.layers.gated_attention import GatedAttention
from attnzoo.layers.halo import HaloAttention
from attnzoo.layers.knn_graph import knn_graph
from attnzoo.layers.minimal_transformer import MinimalAttention, MinimalBlock
from attnzoo.layers.mkdc import MKDC, MKIR
from attnzoo.layers.moh import MoHAttention, moh_load_balance_loss
from attnzoo.layers.neighborhood import NeighborhoodAttention2D
from attnzoo.layers.ninformer import NiNBlock
from attnzoo.layers.scripting import torch_jit_script_deprecation_silenced
from attnzoo.layers.ulsam import ULSAM

__all__ = ["DeformableAttention3D", "ELA", "FlowAttention", "GatedAttention", "HaloAttention", "MKDC", "MKIR",
           "MinimalAttention", "MinimalBlock", "MoHAttention", "MultiScaleDeformableAttention",
           "NeighborhoodAttention2D", "NiNBlock", "TopMAttentionConv", "ULSAM", "knn_graph",
           "moh_load_balance_loss"]

# What the layers call on their inputs that torch.fx cannot trace through (checks that read shapes, the ops' front
# doors that validate and pick a backend): timm's FX feature extraction keeps these as leaf calls.
for _fn in (_checks.check_nchw, _checks.check_tokens, _checks.check_image_size, kernels.ela_gate,
            kernels.halo_attention, kernels.ms_deform_attn, kernels.deform_attn_3d, kernels.topm_attention,
            kernels.topm_knn, kernels.neighborhood_attention):
    register_notrace_function(_fn)

# layers that subclass a host library's base class, imported on first use: name -> module
_LAZY_LAYERS = {"TopMAttentionConv": "attnzoo.layers.topm"}


def __getattr__(name: str):
    if name not in _LAZY_LAYERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with torch_jit_script_deprecation_silenced():  # the lazy layers import PyG
        value = getattr(importlib.import_module(_LAZY_LAYERS[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
