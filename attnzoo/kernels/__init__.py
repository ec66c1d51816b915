"""Functional ops: PyTorch references, Triton kernels and the op boundary between them."""

from attnzoo.kernels._dispatch import get_backend, resolve_backend, set_backend

__all__ = ["get_backend", "resolve_backend", "set_backend"]
