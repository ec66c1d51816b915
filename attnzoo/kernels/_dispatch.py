"""Backend selection shared by every op in :mod:`attnzoo.kernels`.

Each public op takes ``backend='auto'|'torch'|'triton'`` and resolves it here *before* entering its
``torch.library.custom_op``; the resolved name travels into the op as a string argument, so the op boundary
(``opcheck``, ``torch.compile``, ``register_autograd``) sees one op whatever runs inside it.

'auto' picks Triton on CUDA tensors when Triton imports, the PyTorch reference otherwise. The default comes
from ``ATTNZOO_BACKEND`` or :func:`set_backend`. 'triton' on CPU tensors is allowed only under
``TRITON_INTERPRET=1`` (the test suite runs every kernel that way).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType

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


def triton_accepts(tensor: torch.Tensor) -> bool:
    """Whether the Triton launchers take ``tensor``: a CUDA tensor, or any tensor under the interpreter."""
    return tensor.is_cuda or triton_interpreting()


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` works (cached: the answer does not change within a process)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_kernels(module: str) -> ModuleType:
    """The launcher module ``attnzoo.kernels.<module>``, imported on first use so that only the 'triton' backend
    pays for importing (and, on a GPU, initialising) Triton."""
    return importlib.import_module(f"attnzoo.kernels.{module}")


def accumulation_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, object]:
    """(torch, triton) accumulation dtype of the Triton kernels for ``dtype`` inputs: fp64 for fp64 (so gradcheck
    runs through the kernels), fp32 otherwise. Called by the launchers only, so importing Triton here is free."""
    import triton.language as tl

    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """Turn a backend request into 'torch' or 'triton' for ``tensor``'s device; refuse impossible requests.

    'auto' and None both defer to the process default (:func:`set_backend`, ``ATTNZOO_BACKEND``), which is itself
    'auto' unless set: Triton on CUDA tensors when Triton imports, the PyTorch path otherwise.
    """
    backend = get_backend() if backend in (None, "auto") else _check_backend_name(backend)
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' was requested but `import triton` fails; install triton or use "
                               "backend='torch'")
        if not triton_accepts(tensor):
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import, for "
                             f"tests); got a tensor on {tensor.device}. Use backend='torch' or 'auto'.")
    return backend


@contextlib.contextmanager
def _autograd_enabled_inside_custom_op() -> Iterator[None]:
    """Re-enable the Autograd dispatch key that ``torch.library.custom_op`` excludes around its implementation.

    Without it ``torch.enable_grad()`` alone records no graph there. (``torch.func.vjp`` would also work for
    simple references, but fails under ``opcheck`` on references that index with integer tensors.)
    """
    autograd = torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradFunctionality)
    exclude = torch._C._dispatch_tls_local_exclude_set() - autograd
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def reference_vjp(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], grad_out: torch.Tensor,
                  *args) -> list[torch.Tensor | None]:
    """Gradients of ``fn(*inputs, *args)`` w.r.t. the floating-point ``inputs``, by autograd on the reference.

    Used as the 'torch' backend of an op's backward (it may be called inside a custom op's implementation):
    the backward op differentiates the PyTorch reference, so the reference and its gradient can never drift
    apart. ``None`` and non-floating inputs get ``None`` gradients.
    """
    with _autograd_enabled_inside_custom_op():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None for t in inputs]
        out = fn(*leaves, *args)
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, grad_out, allow_unused=True))
    result: list[torch.Tensor | None] = []
    for t in leaves:
        if t is not None and t.requires_grad:
            g = next(grads)
            result.append(torch.zeros_like(t) if g is None else g)
        else:
            result.append(None)
    return result
