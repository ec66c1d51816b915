"""Input checks shared by layers and ops: bad input gets a ValueError naming the argument, the value and the fix.

Constructor arguments go through :func:`check_int` (every layer, op and model's int hyper-parameters),
:func:`check_probability` (dropout and drop-path rates) and :func:`check_act_layer` (activation names resolved by
timm's factory); tensors through the ``check_*`` shape checks.

The tensor checks read shapes, so ``torch.fx`` cannot trace through them; :mod:`attnzoo.layers` registers each of them
with timm's ``register_notrace_function``, so that timm's FX feature extraction keeps them as leaf calls (they still
run on the real tensors when the traced model does).
"""

from __future__ import annotations

from typing import Any

import torch


def check_int(name: str, value: object, minimum: int = 1, where: str | None = None) -> int:
    """Return ``value`` if it is an int >= ``minimum``: a TypeError for anything else (bools included), a ValueError
    below the minimum; the message names the argument, the value and what was expected. ``where`` prefixes it."""
    prefix = f"{where}: " if where else ""
    expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{prefix}{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{prefix}{name} must be {expected}, got {value!r}")
    return value


def check_probability(name: str, value: object, where: str | None = None) -> float:
    """Return ``value`` as a float if it is a real number in [0, 1) (a dropout or drop-path rate), else a
    ValueError naming the argument and the value. ``where`` prefixes the message."""
    prefix = f"{where}: " if where else ""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{prefix}{name}={value!r}, expected a float in [0, 1)")
    return float(value)


def check_act_layer(act_layer: Any, where: str | None = None) -> Any:
    """timm's activation class for ``act_layer``: a name timm's ``get_act_layer`` knows, or a module class/factory.

    A ValueError for an unknown name and a TypeError for anything else, instead of timm's KeyError or a call failing
    later; pass the result to ``timm.layers.create_act_layer``.
    """
    from timm.layers import get_act_layer  # timm is imported by the layers anyway; not by modules that only check

    prefix = f"{where}: " if where else ""
    if isinstance(act_layer, str):
        try:
            return get_act_layer(act_layer)
        except KeyError:
            raise ValueError(f"{prefix}act_layer={act_layer!r} is not an activation name of timm's get_act_layer "
                             "(e.g. 'relu', 'relu6', 'gelu', 'silu', 'hard_swish') nor an nn.Module class") from None
    if callable(act_layer):  # an nn.Module class or a factory such as functools.partial(nn.LeakyReLU, 0.2)
        return act_layer
    raise TypeError(f"{prefix}act_layer must be an activation name or an nn.Module class, got {act_layer!r}")


def check_nchw(x: torch.Tensor, channels: int | None = None, where: str | None = None, name: str = "x") -> None:
    """Raise unless ``x`` is a floating-point (B, C, H, W) tensor with ``channels`` channels (any count for None).

    ``where`` (e.g. the module's name) prefixes the message.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{prefix}{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{prefix}{name} must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{prefix}{name} must be a floating-point tensor, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{prefix}{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")


def check_tokens(x: torch.Tensor, seq_len: int, dim: int, where: str) -> None:
    """Raise unless ``x`` is a (B, seq_len, dim) token tensor (for layers whose token mixing fixes the length)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[1] != seq_len or x.shape[2] != dim:
        raise ValueError(f"{where}: x must have shape (B, seq_len={seq_len}, dim={dim}), got {tuple(x.shape)}; the "
                         "token-mixing MLP fixes the sequence length at construction")


def check_image_size(x: torch.Tensor, img_size: tuple[int, int], where: str) -> None:
    """Raise unless ``x`` is a (B, C, *img_size) batch (for models whose token count is fixed at construction)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[-2:]) != tuple(img_size):
        got = tuple(x.shape[-2:]) if x.ndim == 4 else "(H, W)"
        raise ValueError(f"{where} was built for {tuple(img_size)} images, got input of shape {tuple(x.shape)}; its "
                         f"token-mixing MLPs fix the token count, so build the model with img_size={got} instead")
