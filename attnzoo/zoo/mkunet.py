"""MK-UNet (Rahman, Marculescu; ICCV 2025 Workshops; https://arxiv.org/abs/2509.18493): the segmentation models.

Registered ('segmentation' task): ``mkunet`` (channels 16-32-64-96-160), ``mkunet_s`` (8-16-32-48-80) and
``mkunet_t`` (4-8-16-24-32); with ``num_classes=1`` and 3 input channels they have exactly 315,566 / 93,050 /
27,384 parameters, the authors' counts.

Follows the authors' ``MK_UNet`` forward: five MKIR + 2x2 max-pool encoder stages; five decoder stages of
channel attention, the one shared spatial attention, MKIR, bilinear x2 upsampling and ReLU; grouped attention
gates on the four skips; channel-attention ratios 16, 16, 16, 8, 4; a 1-channel input is repeated to 3 channels
when the model expects 3. Attribute names match the authors' so their state dicts load unchanged.

Deliberate differences:

- The forward returns the final logits tensor (the authors return the one-element list ``[p4]``); with
  ``deep_supervision=True`` it returns ``[p4, p3, p2, p1]``, the order of the authors' comment, every map
  upsampled to the input size. Without deep supervision the three auxiliary heads (which the authors compute
  and throw away) are not run; their parameters still exist, so the counts and state dicts match.
  The authors' cost, 0.3138 GMACs at 3x256x256, is the forward *with* the auxiliary heads.
- Inputs whose sides are not multiples of 32 are zero-padded at the bottom/right to the next multiple of 32
  and the outputs are cropped back, instead of failing on mismatched skip shapes.
- Bad inputs raise ``ValueError`` with the expected and received shapes or dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnzoo._checks import check_int, check_nchw
from attnzoo.layers.attention_gate import GroupedAttentionGate
from attnzoo.layers.cbam import ChannelAttention, SpatialAttention
from attnzoo.layers.mkdc import MKIR
from attnzoo.layers.scripting import NotScriptable
from attnzoo.layers.weight_init import init_mkunet_weights
from attnzoo.zoo._registry import register_model

MKUNET_CHANNELS = {
    "mkunet": (16, 32, 64, 96, 160),
    "mkunet_s": (8, 16, 32, 48, 80),
    "mkunet_t": (4, 8, 16, 24, 32),
}
STRIDE = 32  # five 2x2 poolings


def mkir_stage(in_channels: int, out_channels: int, depth: int, expansion_factor: float,
               kernel_sizes: Sequence[int], device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> nn.Sequential:
    """``depth`` stride-1 MKIR blocks, the first one changing the width (the authors' ``mk_irb_bottleneck``)."""
    check_int("depth", depth, where="mkir_stage")
    return nn.Sequential(*(
        MKIR(in_channels if i == 0 else out_channels, out_channels, 1, expansion_factor, kernel_sizes,
             device=device, dtype=dtype)
        for i in range(depth)
    ))


def mkunet_encoder_stages(in_chans: int, channels: Sequence[int], depths: Sequence[int], expansion_factor: float,
                          kernel_sizes: Sequence[int], device: torch.device | str | None = None,
                          dtype: torch.dtype | None = None) -> list[nn.Sequential]:
    """The five MK-UNet encoder stages (each is followed by a 2x2 max-pool in the forward)."""
    widths = (in_chans, *channels)
    return [mkir_stage(widths[i], widths[i + 1], depths[i], expansion_factor, kernel_sizes, device, dtype)
            for i in range(5)]


def _check_channels(channels: Sequence[int], depths: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    channels, depths = tuple(channels), tuple(depths)
    if len(channels) != 5 or any(not isinstance(c, int) or c < 2 or c % 2 for c in channels):
        raise ValueError(f"channels must be 5 even ints >= 2 (the gates use C/2 groups), got {channels!r}")
    if len(depths) != 5:
        raise ValueError(f"depths must have 5 entries, got {depths!r}")
    return channels, depths


class MKUNet(NotScriptable, nn.Module):
    """MK-UNet: a multi-kernel inverted-residual U-Net with channel/spatial attention and grouped attention gates.

    Args:
        num_classes: output channels (logits; no sigmoid).
        in_chans: input channels. With 3, a 1-channel input is repeated to 3 channels (the authors' behaviour).
        channels: widths C1..C5 of the five stages.
        depths: MKIR blocks per encoder stage (the decoder stages always have one).
        kernel_sizes: MKDC kernel sizes.
        expansion_factor: MKIR expansion.
        gag_kernel: kernel size of the grouped attention gates.
        ca_ratios: channel-attention reduction ratios of the five decoder stages (deepest first).
        deep_supervision: return ``[p4, p3, p2, p1]`` (all at input size) instead of ``p4``.
        device: parameter device.
        dtype: parameter dtype.

    Shapes:
        input: (B, in_chans, H, W), any H, W >= 1; output: (B, num_classes, H, W), or a list of four such maps.
    """

    def __init__(self, num_classes: int = 1, in_chans: int = 3, channels: Sequence[int] = MKUNET_CHANNELS["mkunet"],
                 depths: Sequence[int] = (1, 1, 1, 1, 1), kernel_sizes: Sequence[int] = (1, 3, 5),
                 expansion_factor: float = 2, gag_kernel: int = 3, ca_ratios: Sequence[int] = (16, 16, 16, 8, 4),
                 deep_supervision: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_int("num_classes", num_classes)
        check_int("in_chans", in_chans)
        channels, depths = _check_channels(channels, depths)
        ca_ratios = tuple(ca_ratios)
        if len(ca_ratios) != 5:
            raise ValueError(f"ca_ratios must have 5 entries, got {ca_ratios!r}")
        self.num_classes, self.in_chans, self.channels, self.depths = num_classes, in_chans, channels, depths
        self.deep_supervision = deep_supervision
        factory = dict(device=device, dtype=dtype)
        c1, c2, c3, c4, c5 = channels
        stages = mkunet_encoder_stages(in_chans, channels, depths, expansion_factor, kernel_sizes, **factory)
        self.encoder1, self.encoder2, self.encoder3, self.encoder4, self.encoder5 = stages
        self.AG1, self.AG2, self.AG3, self.AG4 = (
            GroupedAttentionGate(c, c, c // 2, gag_kernel, groups=c // 2, **factory) for c in (c4, c3, c2, c1)
        )
        self.decoder1, self.decoder2, self.decoder3, self.decoder4, self.decoder5 = (
            mkir_stage(cin, cout, 1, expansion_factor, kernel_sizes, **factory)
            for cin, cout in ((c5, c4), (c4, c3), (c3, c2), (c2, c1), (c1, c1))
        )
        self.CA1, self.CA2, self.CA3, self.CA4, self.CA5 = (
            ChannelAttention(c, ratio, **factory) for c, ratio in zip((c5, c4, c3, c2, c1), ca_ratios, strict=True)
        )
        self.SA = SpatialAttention(7, **factory)
        self.out1, self.out2, self.out3, self.out4 = (
            nn.Conv2d(c, num_classes, 1, **factory) for c in (c3, c2, c1, c1)
        )

    def reset_parameters(self) -> None:
        init_mkunet_weights(self)
        # the authors leave the four 1x1 heads at PyTorch's default initialisation
        for head in (self.out1, self.out2, self.out3, self.out4):
            head.reset_parameters()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, in_chans={self.in_chans}, channels={self.channels}, "
                f"depths={self.depths}, deep_supervision={self.deep_supervision}")

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x``, repeat a grey image to RGB when the model expects 3 channels, pad the sides to 32."""
        check_nchw(x, None)
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.repeat(1, 3, 1, 1)  # (B, 3, H, W)
        check_nchw(x, self.in_chans)
        pad_h, pad_w = -x.shape[2] % STRIDE, -x.shape[3] % STRIDE
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x  # (B, in_chans, H32, W32)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features after each pooled stage: strides 2, 4, 8, 16 and 32 (sides must divide by 32)."""
        features = []
        for stage in (self.encoder1, self.encoder2, self.encoder3, self.encoder4, self.encoder5):
            x = F.max_pool2d(stage(x), 2, 2)  # (B, C_i, H / 2^i, W / 2^i)
            features.append(x)
        return features

    def _decode_stage(self, x: torch.Tensor, ca: ChannelAttention, decoder: nn.Sequential) -> torch.Tensor:
        x = ca(x) * x
        x = self.SA(x) * x
        return F.relu(F.interpolate(decoder(x), scale_factor=2.0, mode="bilinear"))  # (B, C_out, 2h, 2w)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x_padded = self._prepare_input(x)
        height, width = x.shape[-2:]
        t1, t2, t3, t4, out = self.forward_features(x_padded)
        out = self._decode_stage(out, self.CA1, self.decoder1)  # (B, C4, H/16, W/16)
        out = out + self.AG1(g=out, x=t4)
        out = self._decode_stage(out, self.CA2, self.decoder2)  # (B, C3, H/8, W/8)
        aux = [self.out1(out)] if self.deep_supervision else []
        out = out + self.AG2(g=out, x=t3)
        out = self._decode_stage(out, self.CA3, self.decoder3)  # (B, C2, H/4, W/4)
        aux += [self.out2(out)] if self.deep_supervision else []
        out = out + self.AG3(g=out, x=t2)
        out = self._decode_stage(out, self.CA4, self.decoder4)  # (B, C1, H/2, W/2)
        aux += [self.out3(out)] if self.deep_supervision else []
        out = out + self.AG4(g=out, x=t1)
        out = self._decode_stage(out, self.CA5, self.decoder5)  # (B, C1, H, W)
        logits = self.out4(out)[..., :height, :width]  # (B, num_classes, H, W)
        if not self.deep_supervision:
            return logits
        size = x_padded.shape[-2:]
        upsampled = [F.interpolate(p, size=size, mode="bilinear")[..., :height, :width] for p in reversed(aux)]
        return [logits, *upsampled]  # p4, p3, p2, p1


def _mkunet(variant: str, **kwargs) -> MKUNet:
    kwargs.setdefault("channels", MKUNET_CHANNELS[variant])
    return MKUNet(**kwargs)


@register_model("segmentation")
def mkunet(**kwargs) -> MKUNet:
    """MK-UNet, channels 16-32-64-96-160: 315,566 params and 0.3138 GMACs at 3x256x256 (num_classes=1)."""
    return _mkunet("mkunet", **kwargs)


@register_model("segmentation")
def mkunet_s(**kwargs) -> MKUNet:
    """MK-UNet-S, channels 8-16-32-48-80: 93,050 params (num_classes=1)."""
    return _mkunet("mkunet_s", **kwargs)


@register_model("segmentation")
def mkunet_t(**kwargs) -> MKUNet:
    """MK-UNet-T, channels 4-8-16-24-32: 27,384 params (num_classes=1)."""
    return _mkunet("mkunet_t", **kwargs)
