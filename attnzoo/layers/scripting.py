"""How a layer declares that TorchScript cannot compile it.

The attnzoo layers check their inputs with Python (f-string errors naming the shapes) and reach their kernels
through Python front doors that pick a backend and apply the autocast rule; TorchScript compiles neither. A module
that mixes in :class:`NotScriptable` says so the way smp's tests read it (``_is_torch_scriptable = False``) and
makes ``torch.jit.script`` fail at once with a message naming what works instead, rather than with a compiler error
deep inside a helper. ``torch.jit.script`` calls ``__prepare_scriptable__`` on every submodule, so one such layer
anywhere in a model is enough.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["NotScriptable", "torch_jit_script_deprecation_silenced"]


@contextlib.contextmanager
def torch_jit_script_deprecation_silenced() -> Iterator[None]:
    """Around an import of PyTorch Geometric: PyG scripts a class at import, which recent torch releases report as a
    FutureWarning on every run of every program; it is PyG's to fix, so it is silenced for that import only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        yield


class NotScriptable:
    """Mixin for nn.Modules that TorchScript cannot compile (see the module docstring)."""

    _is_torch_scriptable = False

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"{type(self).__name__} is not TorchScript-scriptable (its input checks and kernel front door are "
            "Python). Deploy it with torch.export.export(model, args), torch.onnx.export(model, args, dynamo=True) "
            "or torch.compile(model) instead.")
