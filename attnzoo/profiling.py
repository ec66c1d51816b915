"""Parameter and multiply-accumulate counts, with the conventions papers use when they quote "FLOPs".

Most vision papers (MK-UNet, ULSAM, ELA, ...) report numbers from ptflops' PyTorch backend with
``count_functional=False``: forward hooks on a fixed set of module types, each type with its own cost rule,
and *nothing* for functional calls (``F.interpolate``, ``F.max_pool2d``, ``torch.cat``, ``x * y``, ...).
:func:`count_macs` follows those rules so that published numbers reproduce, and is independent of ptflops.

Conventions (cost of one call, summed over every call, so a module shared by several stages counts each time):

- ``Conv1d/2d/3d``: ``prod(kernel) * in_channels / groups * out_channels * prod(output spatial) * batch``,
  plus ``numel(output)`` for the bias. Transposed convs use the *input* spatial size in place of the output's.
- ``Linear``: ``prod(input.shape[:-1]) * (in_features * out_features + out_features if bias)``.
- ``BatchNorm*``, ``InstanceNorm*``, ``GroupNorm``, ``LayerNorm``: ``numel(input)``, doubled when affine.
- ``ReLU``, ``ReLU6``, ``LeakyReLU``, ``PReLU``, ``ELU``, ``GELU``: ``numel(output)``. ``Sigmoid``, ``SiLU``,
  ``Hardswish``, ``Softmax`` and other activations count zero, as in ptflops.
- Max/avg pooling, adaptive or not: ``numel(input)``.
- ``Upsample``: ``numel(output)``.
- Everything else (functional ops, parameters used directly, attention products) counts zero: pass
  ``custom_hooks`` to price a module type yourself, and ``ops=True`` to count attnzoo's custom ops.

Where this differs from ptflops on purpose:

- A module is priced by the nearest counted class in its MRO, so subclasses count too (timm's
  ``BatchNormAct2d`` counts as a BatchNorm and its inner activation module as an activation); ptflops matches
  the exact type only and skips them.
- The total is for the whole example batch; ptflops divides by the batch size. Use a batch of one to compare
  with published per-image numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

MacHook = Callable[[nn.Module, tuple[Any, ...], Any], int]


def _first_tensor(value: Any) -> torch.Tensor:
    """The tensor a hook prices: the first one of a tuple/list of inputs or outputs."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def _conv_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    x, y = _first_tensor(inputs), _first_tensor(output)
    transposed = getattr(module, "transposed", False)
    positions = x.shape[0] * math.prod((x if transposed else y).shape[2:])
    per_position = math.prod(module.kernel_size) * module.in_channels * (module.out_channels // module.groups)
    bias = y.numel() if module.bias is not None else 0
    return per_position * positions + bias


def _linear_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    x = _first_tensor(inputs)
    rows = math.prod(x.shape[:-1])
    per_row = module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
    return rows * per_row


def _norm_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    affine = bool(getattr(module, "affine", False) or getattr(module, "elementwise_affine", False))
    return _first_tensor(inputs).numel() * (2 if affine else 1)


def _output_numel(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    return _first_tensor(output).numel()


def _input_numel(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    return _first_tensor(inputs).numel()


_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
          nn.GroupNorm, nn.LayerNorm)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU)

DEFAULT_MAC_HOOKS: dict[type[nn.Module], MacHook] = {
    **{cls: _conv_macs for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                   nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)},
    nn.Linear: _linear_macs,
    **{cls: _norm_macs for cls in _NORMS},
    **{cls: _output_numel for cls in _ACTIVATIONS},
    **{cls: _input_numel for cls in _POOLS},
    nn.Upsample: _output_numel,
}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements, each shared parameter counted once.

    Args:
        model: the module to count.
        trainable_only: count only parameters with ``requires_grad``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _hook_for(module: nn.Module, hooks: Mapping[type[nn.Module], MacHook]) -> MacHook | None:
    for cls in type(module).__mro__:
        if cls in hooks:
            return hooks[cls]
    return None


def count_macs(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...] | Mapping[str, Any],
               custom_hooks: Mapping[type[nn.Module], MacHook] | None = None, per_module: bool = False,
               ops: bool = False) -> int | tuple[int, dict[str, int]]:
    """Multiply-accumulates of one forward pass over ``example_input``, counted on modules as ptflops does.

    ``ops=True`` adds the work inside attnzoo's custom ops (halo, neighborhood, top-m, deformable attention, the
    ELA gate), which no module hook sees: each op's registered FLOP formula (``torch.utils.flop_counter``, read
    through ``FlopCounterMode``) halved, as one multiply-accumulate is two FLOPs. ``per_module`` then holds them
    under ``'<op> (attnzoo op)'``.

    The model runs once under ``torch.no_grad()`` in eval mode (BatchNorm uses running statistics, dropout is
    off); its training flag is restored afterwards. See the module docstring for what each type costs.

    Args:
        model: the module to run.
        example_input: a tensor, a tuple of positional arguments, or a dict of keyword arguments.
        custom_hooks: extra or overriding ``{module type: fn(module, inputs, output) -> MACs}`` rules.
        per_module: also return ``{qualified module name: MACs}`` for every module that counted something.
        ops: also count attnzoo's custom ops (off by default: published numbers follow ptflops, which cannot).

    Returns:
        The total MACs, or ``(total, per_module_counts)`` when ``per_module`` is set.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, (torch.Tensor, tuple, Mapping)):
        raise TypeError("example_input must be a Tensor, a tuple of positional arguments or a dict of keyword "
                        f"arguments, got {type(example_input).__name__}")
    hooks = {**DEFAULT_MAC_HOOKS, **(custom_hooks or {})}
    counts: dict[str, int] = {}
    handles = []

    def make_hook(name: str, price: MacHook) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            counts[name] = counts.get(name, 0) + int(price(module, inputs, output))
        return hook

    for name, module in model.named_modules():
        price = _hook_for(module, hooks)
        if price is not None:
            handles.append(module.register_forward_hook(make_hook(name, price)))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False) if ops else contextlib.nullcontext()
    try:
        with torch.no_grad(), counter:
            if isinstance(example_input, torch.Tensor):
                model(example_input)
            elif isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(**example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if ops:
        for op, flops in counter.get_flop_counts().get("Global", {}).items():
            if str(op).startswith("attnzoo."):
                counts[f"{str(op).removeprefix('attnzoo.')} (attnzoo op)"] = flops // 2
    total = sum(counts.values())
    return (total, counts) if per_module else total


def sdpa_product_macs(batch: int, heads: int, queries: int, keys: int, head_dim: int,
                      value_dim: int | None = None) -> int:
    """MACs of ``q k^T`` and ``attn v``: ``B H L S (d + d_v)`` (softmax and scaling are not counted).

    The attention products are functional matmuls, which module hooks do not see: attention layers price them
    with this in their ``custom_hooks`` entry of :func:`count_macs`.
    """
    return batch * heads * queries * keys * (head_dim + (head_dim if value_dim is None else value_dim))
