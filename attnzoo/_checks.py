"""Input checks shared by layers and ops: bad input gets a ValueError naming the argument, the value and the fix."""

from __future__ import annotations

import torch


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
