"""`attnzoo viz NAME IMAGE`: draw what a model's attention modules do over an image.

Forward hooks are put on modules by class name (their own or a base class's), so any model that contains the
layers works, attnzoo's or timm's: the gating modules (ELA, ULSAM, timm's ``EfficientLocalAttn``) and the halo
attentions (attnzoo's ``HaloAttention``, timm's ``HaloAttn``).

- A gating module multiplies its input by an attention map (ELA: ``a_h * a_w`` per channel; ULSAM:
  ``1 + softmax map`` per channel group). What is drawn is that modulation seen through the module's own
  input and output, ``mean_c |y| / mean_c |x|`` at every position: above 1 where the module amplifies.
- A halo attention lets each query block of ``block_size`` pixels attend to a window ``halo_size`` pixels
  wider on every side. What is drawn is the layer's output energy ``mean_c |y|`` with, over the position where
  it peaks, the query block (solid) and its attention window (dashed), in image pixels.

``IMAGE`` is an image file, or ``fmnist:INDEX`` for a Fashion-MNIST test image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GATING_CLASSES", "HALO_CLASSES", "AttentionMap", "attention_kind", "attention_maps", "draw_maps",
           "load_image", "main"]

GATING_CLASSES = ("ELA", "ULSAM", "EfficientLocalAttn")
HALO_CLASSES = ("HaloAttention", "HaloAttn")


def attention_kind(module: nn.Module) -> str | None:
    """'gate' / 'halo' when the module's class (or a base class, e.g. ResidualELA's ELA) is a known one."""
    names = {cls.__name__ for cls in type(module).__mro__}
    if names & set(GATING_CLASSES):
        return "gate"
    if names & set(HALO_CLASSES):
        return "halo"
    return None


@dataclass
class AttentionMap:
    """One hooked module's map over the image.

    Shapes:
        values: (H_img, W_img), upsampled from the module's feature map.
    """

    module: str
    kind: str  # 'gate' or 'halo'
    values: torch.Tensor
    feature_size: tuple[int, int]
    block: tuple[int, int, int, int] | None = None  # (top, left, height, width) in image pixels
    window: tuple[int, int, int, int] | None = None


def load_image(image: str | os.PathLike, cfg: dict[str, Any], root: str | os.PathLike | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input (1, C, S, S) normalised, display image (S, S) or (S, S, 3) in [0, 1]) for a file or fmnist:N."""
    from attnzoo.data.fashion_mnist import fashion_mnist, fmnist_transform

    size, in_chans = cfg["image_size"], cfg["in_chans"]
    text = str(image)
    if text.startswith("fmnist:"):
        index = int(text.removeprefix("fmnist:"))
        ds = fashion_mnist("test", root=root)
        if not 0 <= index < len(ds):
            raise ValueError(f"image {text!r}: index must be in [0, {len(ds)})")
        raw = fmnist_transform(size, 1, None, None)(ds.image(index))  # (1, S, S) in [0, 1]
        rgb = raw.expand(3, -1, -1) if in_chans == 3 else raw
    else:
        from PIL import Image

        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"image {text!r} is neither a file nor fmnist:INDEX")
        with Image.open(path) as img:
            img = img.convert("L" if in_chans == 1 else "RGB").resize((size, size), Image.BILINEAR)
            rgb = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().div(255)
        rgb = rgb.view(size, size, -1).permute(2, 0, 1)  # (C, S, S)
    if rgb.shape[0] != in_chans:
        raise ValueError(f"the model takes {in_chans} channels; images give 1 or 3")
    mean = torch.tensor(cfg["mean"]).view(-1, 1, 1)
    std = torch.tensor(cfg["std"]).view(-1, 1, 1)
    display = rgb[0] if in_chans == 1 else rgb.permute(1, 2, 0)
    return ((rgb - mean) / std).unsqueeze(0), display


def _to_image(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) map -> (H_img, W_img), bilinear."""
    return F.interpolate(values[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor, max_maps: int | None = None) -> list[AttentionMap]:
    """Run ``model(x)`` (batch of one) with hooks on the attention modules; their maps in depth order.

    Args:
        model: any model containing modules of the classes in :data:`GATING_CLASSES` / :data:`HALO_CLASSES`.
        x: (1, C, H, W) model input.
        max_maps: keep this many, spread evenly over depth (first and last included); None keeps all.

    Modules that output a single spatial position (deep stages of small inputs) give no map.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x: got shape {tuple(x.shape)}, expected one image (1, C, H, W)")
    image_size = tuple(x.shape[-2:])
    captured: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            # clones: host blocks often modify the output in place afterwards (ResNet's `x += shortcut`)
            captured.append((name, module, inputs[0].detach().clone(), output.detach().clone()))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if attention_kind(m) is not None]
    if not handles:
        raise ValueError(f"{type(model).__name__} has no module of the classes {GATING_CLASSES + HALO_CLASSES}")
    was_training = model.training
    try:
        model.eval()(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    maps = []
    for name, module, inp, out in captured:
        h, w = inp.shape[-2:]
        if out.shape[-2:].numel() == 1:  # one output position (a deep stage of a small input): nothing to show
            continue
        if attention_kind(module) == "gate":
            # (h, w): how much the module scales the features at each position
            ratio = out[0].abs().mean(0) / inp[0].abs().mean(0).clamp_min(1e-6)
            maps.append(AttentionMap(name, "gate", _to_image(ratio, image_size), (h, w)))
            continue
        energy = out[0].abs().mean(0)  # (h_out, w_out)
        scale_y, scale_x = image_size[0] / h, image_size[1] / w  # image pixels per input feature pixel
        out_stride = h / energy.shape[0]
        peak = int(energy.argmax())
        py, px = divmod(peak, energy.shape[1])
        py, px = int(py * out_stride), int(px * out_stride)  # (py, px) in input feature pixels
        bs, halo = int(module.block_size), int(module.halo_size)
        top, left = (py // bs) * bs, (px // bs) * bs
        block = (round(top * scale_y), round(left * scale_x), round(bs * scale_y), round(bs * scale_x))
        window = (round((top - halo) * scale_y), round((left - halo) * scale_x),
                  round((bs + 2 * halo) * scale_y), round((bs + 2 * halo) * scale_x))
        maps.append(AttentionMap(name, "halo", _to_image(energy, image_size), (h, w), block, window))
    if max_maps is not None and len(maps) > max_maps:
        keep = sorted({round(i * (len(maps) - 1) / max(1, max_maps - 1)) for i in range(max_maps)})
        maps = [maps[i] for i in keep]
    return maps


def draw_maps(axes: Sequence[Any], display: torch.Tensor, maps: Sequence[AttentionMap]) -> None:
    """Draw each map over the display image on its own matplotlib axes (as many axes as maps)."""
    from matplotlib.patches import Rectangle

    cmap = "gray" if display.dim() == 2 else None
    for ax, m in zip(axes, maps, strict=True):
        ax.imshow(display.numpy(), cmap=cmap)
        shown = ax.imshow(m.values.numpy(), cmap="jet", alpha=0.5)
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        label = "|y|/|x|" if m.kind == "gate" else "|y|"
        ax.set_title(f"{m.module} {label}\n(features {m.feature_size[0]}x{m.feature_size[1]})", fontsize=8)
        for rect, style in ((m.block, "-"), (m.window, "--")):
            if rect is not None:
                top, left, height, width = rect
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False, edgecolor="white",
                                       linestyle=style, linewidth=1.5))
        ax.set_axis_off()


def main(name: str, image: str | os.PathLike, out: str | os.PathLike | None = None, max_maps: int = 4,
         image_size: int | None = None, root: str | os.PathLike | None = None) -> Path:
    """Build ``name`` (with its published weights when it has some), draw its attention maps, save a PNG.

    Args:
        name: a registered model ('arch' or 'arch.tag').
        image: an image file, or ``fmnist:INDEX`` for a Fashion-MNIST test image.
        out: PNG path (default ``attention_<name>.png``).
        max_maps: attention modules drawn, spread over depth.
        image_size: input side (default: the model's pretrained cfg).
        root: Fashion-MNIST folder for ``fmnist:INDEX``.

    Returns:
        the PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from attnzoo.apps.evaluation import data_config
    from attnzoo.data.fashion_mnist import CLASSES
    from attnzoo.zoo import create_model, list_pretrained, model_task, split_name

    arch, tag = split_name(name)
    pretrained = any(n == name or (tag is None and n.startswith(arch + ".")) for n in list_pretrained())
    model = create_model(name, pretrained=pretrained).eval()
    x, display = load_image(image, data_config(model, image_size), root)
    maps = attention_maps(model, x, max_maps)
    fig = Figure(figsize=(3.2 * (len(maps) + 1), 3.4), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(maps) + 1, squeeze=False)[0]
    axes[0].imshow(display.numpy(), cmap="gray" if display.dim() == 2 else None)
    title = f"{name} ({'pretrained' if pretrained else 'untrained'})"
    if model_task(name) == "classification":
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top = int(probs.argmax())
        fmnist = str(image).startswith("fmnist:") and probs.numel() == len(CLASSES)
        title += f"\npredicted {CLASSES[top] if fmnist else top}: {100 * probs[top]:.1f}%"
    axes[0].set_title(title, fontsize=8)
    axes[0].set_axis_off()
    draw_maps(axes[1:], display, maps)
    path = Path(out) if out is not None else Path(f"attention_{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
