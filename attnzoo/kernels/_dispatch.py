"""Backend selection shared by every op in :mod:`attnzoo.kernels`.

Each public op takes ``backend='auto'|'torch'|'triton'`` and resolves it here *before* entering its
``torch.library.custom_op``; the resolved name travels into the op as a string argument, so the op boundary
(``opcheck``, ``torch.compile``, ``register_autograd``) sees one op whatever runs inside it.

'auto' picks Triton on CUDA tensors when Triton imports, the PyTorch reference otherwise. The default comes
from ``ATTNZOO_BACKEND`` or :func:`set_backend`. 'triton' on CPU tensors is allowed only under
``TRITON_INTERPRET=1`` (the test suite runs every kernel that way).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import torch

BACKENDS = ("auto", "torch", "triton")
_default_backend: str | None = None


def _check_backend_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    return backend


def set_backend(backend: str) -> None:
    """Set the process-wide default backend for every attnzoo op (overrides ``ATTNZOO_BACKEND``)."""
    global _default_backend
    _default_backend = _check_backend_name(backend)


def get_backend() -> str:
    """The default backend: :func:`set_backend`'s value, else ``ATTNZOO_BACKEND``, else 'auto'."""
    if _default_backend is not None:
        return _default_backend
    env = os.environ.get("ATTNZOO_BACKEND", "auto")
    try:
        return _check_backend_name(env)
    except ValueError as err:
        raise ValueError(f"ATTNZOO_BACKEND={env!r} is not one of {BACKENDS}") from err


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` works (cached: the answer does not change within a process)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """Turn 'auto'/None into 'torch' or 'triton' for ``tensor``'s device, and refuse impossible requests."""
    backend = get_backend() if backend is None else _check_backend_name(backend)
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' was requested but `import triton` fails; install triton or use "
                               "backend='torch'")
        if not tensor.is_cuda and not triton_interpreting():
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import, for "
                             f"tests); got a tensor on {tensor.device}. Use backend='torch' or 'auto'.")
    return backend


def reference_vjp(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], grad_out: torch.Tensor,
                  *args) -> list[torch.Tensor | None]:
    """Gradients of ``fn(*inputs, *args)`` w.r.t. the floating-point ``inputs``, by differentiating the reference.

    Used as the 'torch' backend of an op's backward: the backward op's implementation differentiates the
    PyTorch reference, so the reference and its gradient can never drift apart. It uses ``torch.func.vjp``
    because a custom op's implementation runs with the autograd dispatch keys excluded, where plain
    ``torch.autograd.grad`` records no graph. ``None`` and non-floating inputs get ``None`` gradients.
    """
    wrt = [i for i, t in enumerate(inputs) if t is not None and t.is_floating_point()]

    def partial(*diff: torch.Tensor) -> torch.Tensor:
        full = list(inputs)
        for i, t in zip(wrt, diff, strict=True):
            full[i] = t
        return fn(*full, *args)

    _, vjp = torch.func.vjp(partial, *(inputs[i] for i in wrt))
    result: list[torch.Tensor | None] = [None] * len(inputs)
    for i, g in zip(wrt, vjp(grad_out), strict=True):
        result[i] = g
    return result
