"""segmentation-models-pytorch integration: the MK-UNet encoder as an smp encoder, and smp U-Nets with ELA/ULSAM.

Two directions, both with real smp objects:

1. :class:`MKUNetEncoder` is registered in smp's encoder table as ``attnzoo-mkunet``, ``attnzoo-mkunet_s`` and
   ``attnzoo-mkunet_t`` when this module is imported, which ``import attnzoo`` arranges for the moment smp is
   imported (or at once if it already is; see :mod:`attnzoo.zoo.host_models`), so every smp architecture
   builds on it: ``smp.Unet("attnzoo-mkunet", encoder_weights=None)``, ``smp.FPN(...)``,
   ``smp.DeepLabV3Plus(..., encoder_output_stride=16)``. smp's models default to ``encoder_weights="imagenet"``,
   which these encoders do not have: pass ``encoder_weights=None``. The encoder's state dict uses the
   ``encoder1``..``encoder5`` names of :class:`attnzoo.zoo.mkunet.MKUNet`, so a trained MK-UNet's encoder loads
   into it directly (:meth:`MKUNetEncoder.load_from_mkunet`).
2. :class:`AttentionUnet` is an ``smp.Unet`` whose decoder attention (smp only offers None or 'scse') is ELA,
   ULSAM, scSE or any module factory. Registered in attnzoo as ``smp_unet_ela`` and ``smp_unet_ulsam`` (by
   :mod:`attnzoo.zoo.host_models`, whose entrypoints import this module, and smp, when called).

MK-UNet pools with a functional 2x2 max-pool after each stage, so smp's dilation hook (``output_stride`` 8 or 16)
drops the pools of the deepest stages and dilates the convs of any stage that would otherwise see a finer grid
than in the undilated network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.encoders._base import EncoderMixin
from segmentation_models_pytorch.encoders._utils import replace_strides_with_dilation

from attnzoo.layers.ela import ELA
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.ulsam import ULSAM
from attnzoo.zoo.mkunet import MKUNET_CHANNELS, MKUNet, mkir_stage, mkunet_encoder_stages

SMP_ENCODER_PREFIX = "attnzoo-"


class MKUNetEncoder(NotScriptable, nn.Module, EncoderMixin):
    """The MK-UNet encoder (five MKIR stages, each followed by a 2x2 max-pool) with smp's encoder contract.

    Args:
        channels: widths C1..C5 of the five stages.
        depths: MKIR blocks per stage.
        kernel_sizes: MKDC kernel sizes.
        expansion_factor: MKIR expansion.
        depth: number of stages used (smp's ``encoder_depth``, 1..5).
        output_stride: recorded for smp; smp calls :meth:`make_dilated` when it is 8 or 16.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, 3, H, W) (or the ``in_channels`` smp set); output: ``depth + 1`` maps, the input first, then
        (B, C_i, H / 2^i, W / 2^i) (strides capped at ``output_stride``).
    """

    def __init__(self, channels: Sequence[int], depths: Sequence[int] = (1, 1, 1, 1, 1),
                 kernel_sizes: Sequence[int] = (1, 3, 5), expansion_factor: float = 2, depth: int = 5,
                 output_stride: int = 32, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(depth, int) or not 1 <= depth <= 5:
            raise ValueError(f"{type(self).__name__} depth should be in range [1, 5], got {depth!r}")
        self._stage_args = (tuple(depths), tuple(kernel_sizes), expansion_factor)
        self._depth, self._in_channels, self._output_stride = depth, 3, output_stride
        self._out_channels = [3, *channels]
        self.channels = tuple(channels)
        stages = mkunet_encoder_stages(3, self.channels, depths, expansion_factor, kernel_sizes, device, dtype)[:depth]
        for i, stage in enumerate(stages, start=1):
            self.add_module(f"encoder{i}", stage)
        self._pool = (True,) * depth

    def _stages(self) -> list[nn.Module]:
        return [getattr(self, f"encoder{i}") for i in range(1, self._depth + 1)]

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Rebuild the first stage for ``in_channels`` (both its expansion conv and its skip projection read them).

        Only the first stage is re-initialised; smp calls this right after construction.
        """
        if in_channels == self._in_channels:
            return
        depths, kernel_sizes, expansion_factor = self._stage_args
        self._in_channels = in_channels
        self._out_channels[0] = in_channels
        old = self.encoder1[0].pconv1[0].weight
        self.encoder1 = mkir_stage(in_channels, self.channels[0], depths[0], expansion_factor, kernel_sizes,
                                   device=old.device, dtype=old.dtype)

    def make_dilated(self, output_stride: int) -> None:
        if output_stride not in (8, 16):
            raise ValueError(f"Output stride should be 16 or 8, got {output_stride}.")
        self._output_stride = output_stride
        self._pool = tuple(2 ** i <= output_stride for i in range(1, self._depth + 1))
        for i, stage in enumerate(self._stages(), start=1):
            # stage i normally runs at stride 2^(i-1); capped at output_stride its convs dilate to compensate
            rate = 2 ** (i - 1) // output_stride
            if rate >= 2:
                replace_strides_with_dilation(stage, rate)

    def load_from_mkunet(self, model: MKUNet) -> None:
        """Copy the encoder weights of a (trained) :class:`MKUNet` with the same channels into this encoder."""
        if not isinstance(model, MKUNet) or model.channels != self.channels:
            raise ValueError(f"model must be an MKUNet with channels {self.channels}, got "
                             f"{getattr(model, 'channels', type(model).__name__)}")
        state = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in dict(self.named_children())}
        self.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for stage, pool in zip(self._stages(), self._pool, strict=True):
            x = stage(x)
            if pool:
                x = F.max_pool2d(x, 2, 2)  # (B, C_i, H / 2^i, W / 2^i)
            features.append(x)
        return features


def register_smp_encoders() -> None:
    """Add the three MK-UNet encoders to smp's encoder table (idempotent; never replaces a foreign entry)."""
    for variant, channels in MKUNET_CHANNELS.items():
        name = SMP_ENCODER_PREFIX + variant
        existing = smp.encoders.encoders.get(name)
        if existing is not None and existing["encoder"].__qualname__ != MKUNetEncoder.__qualname__:
            raise ValueError(f"smp encoder {name!r} is already registered by {existing['encoder']!r}")
        smp.encoders.encoders[name] = {"encoder": MKUNetEncoder, "pretrained_settings": {},
                                       "params": {"channels": channels}}


register_smp_encoders()

AttentionFactory = Callable[[int], nn.Module]
DECODER_ATTENTIONS: dict[str, Callable[..., nn.Module]] = {"ela": ELA, "ulsam": ULSAM}


def _attention_factory(decoder_attention: str | AttentionFactory | None,
                       kwargs: Mapping[str, Any]) -> AttentionFactory:
    if decoder_attention is None:
        return lambda channels: nn.Identity()
    if decoder_attention == "scse":
        return lambda channels: smp.base.modules.Attention("scse", in_channels=channels, **kwargs)
    if isinstance(decoder_attention, str):
        if decoder_attention not in DECODER_ATTENTIONS:
            raise ValueError(f"decoder_attention={decoder_attention!r} is not one of "
                             f"{sorted([*DECODER_ATTENTIONS, 'scse'])}, None or a callable(channels) -> nn.Module")
        layer = DECODER_ATTENTIONS[decoder_attention]
        return lambda channels: layer(channels, **kwargs)
    if callable(decoder_attention):
        return lambda channels: decoder_attention(channels, **kwargs)
    raise TypeError(f"decoder_attention must be a str, a callable or None, got {decoder_attention!r}")


class AttentionUnet(NotScriptable, smp.Unet):
    """smp's U-Net with attnzoo attention in the decoder, at the two places smp puts its scSE attention.

    In each decoder block the attention runs on the concatenation of the upsampled map and the skip (before the
    first 3x3 conv) and on the block output; a block without a skip has only the second one. Everything else
    (encoders, decoder convs, heads, ``save_pretrained``) is smp's.

    Args:
        encoder_name: any smp encoder, including ``attnzoo-mkunet*``.
        encoder_depth: number of encoder stages (3..5).
        encoder_weights: smp pretrained weights name, None for random initialisation (the default here, so that
            building needs no network).
        decoder_channels: widths of the decoder blocks.
        decoder_attention: 'ela', 'ulsam', 'scse', None, or a callable ``(channels, **kwargs) -> nn.Module``.
        decoder_attention_kwargs: keyword arguments for each attention module (e.g. ``{'variant': 'L'}`` for ELA,
            ``{'num_splits': 4}`` for ULSAM).
        in_channels: input channels.
        classes: output channels.
        **kwargs: the other ``smp.Unet`` arguments (``activation``, ``aux_params``, ``decoder_interpolation``...).

    Shapes:
        input: (B, in_channels, H, W) with H, W divisible by the encoder's output stride;
        output: (B, classes, H, W).
    """

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights: str | None = None,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
                 decoder_attention: str | AttentionFactory | None = "ela",
                 decoder_attention_kwargs: Mapping[str, Any] | None = None, in_channels: int = 3, classes: int = 1,
                 **kwargs: Any) -> None:
        if kwargs.get("decoder_attention_type") is not None:
            raise ValueError("pass decoder_attention to AttentionUnet, not smp's decoder_attention_type, got "
                             f"decoder_attention_type={kwargs['decoder_attention_type']!r}")
        kwargs.pop("decoder_attention_type", None)
        build = _attention_factory(decoder_attention, dict(decoder_attention_kwargs or {}))
        super().__init__(encoder_name=encoder_name, encoder_depth=encoder_depth, encoder_weights=encoder_weights,
                         decoder_channels=decoder_channels, in_channels=in_channels, classes=classes, **kwargs)
        self.decoder_attention_name = (decoder_attention if isinstance(decoder_attention, str) or decoder_attention
                                       is None else getattr(decoder_attention, "__name__", repr(decoder_attention)))
        # smp's UnetDecoder order: deepest feature first; its blocks take skips from the next-shallower features
        skips = [*list(self.encoder.out_channels[1:])[::-1][1:], 0]
        for block, skip in zip(self.decoder.blocks, skips, strict=True):
            block.attention1 = build(block.conv1[0].in_channels) if skip else nn.Identity()
            block.attention2 = build(block.conv2[0].out_channels)

    def extra_repr(self) -> str:
        return f"decoder_attention={self.decoder_attention_name!r}"
