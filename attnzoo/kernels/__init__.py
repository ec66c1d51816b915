"""Functional ops: PyTorch references, Triton kernels and the torch.library op boundary between them.

Every op takes ``backend='auto'|'torch'|'triton'`` (see :mod:`attnzoo.kernels._dispatch`).
"""

from attnzoo.kernels._dispatch import get_backend, resolve_backend, set_backend
from attnzoo.kernels.dfa3d import (
    deform_attn_3d,
    deform_attn_3d_efficient,
    deform_attn_3d_naive,
    ms_deform_attn,
    ms_deform_attn_efficient,
    ms_deform_attn_naive,
)
from attnzoo.kernels.ela import ela_gate, ela_gate_reference
from attnzoo.kernels.halo import halo_attention, halo_attention_reference
from attnzoo.kernels.neighborhood import neighborhood_attention, neighborhood_attention_reference
from attnzoo.kernels.topm import topm_attention, topm_attention_reference, topm_knn, topm_knn_reference

__all__ = [
    "deform_attn_3d", "deform_attn_3d_efficient", "deform_attn_3d_naive", "ela_gate", "ela_gate_reference",
    "get_backend", "halo_attention", "halo_attention_reference", "ms_deform_attn", "ms_deform_attn_efficient",
    "ms_deform_attn_naive", "neighborhood_attention", "neighborhood_attention_reference", "resolve_backend",
    "set_backend", "topm_attention", "topm_attention_reference", "topm_knn", "topm_knn_reference",
]
