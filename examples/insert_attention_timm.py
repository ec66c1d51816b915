"""Insert ELA or ULSAM into a timm backbone, then fine-tune it on an ImageFolder directory.

The backbone comes from timm's hub with its ImageNet weights when a network is reachable (and attnzoo is not
offline), else randomly initialised. The attention modules go into the attention slot timm's blocks already
have (``block.se``: after the last 3x3 conv's norm in ResNet blocks, after the depthwise conv in MobileNet /
EfficientNet blocks), so the pretrained weights load unchanged and only the new modules start from scratch.

    python examples/insert_attention_timm.py --backbone resnet18 --attention ela --data my_images/ --out runs/r18_ela
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch.nn as nn  # noqa: E402
from _common import (  # noqa: E402
    add_common_args,
    apply_smoke,
    image_folder_splits,
    pil_to_tensor,
    seeded_subset,
    smoke_default,
    write_smoke_images,
)

from attnzoo.apps.evaluation import data_config  # noqa: E402


def slot_channels(block: nn.Module) -> int | None:
    """Channels at a timm block's ``se`` slot, or None when the module has no such slot."""
    if not hasattr(block, "se"):
        return None
    if hasattr(block, "conv_dw"):  # MobileNet/EfficientNet: the slot follows the depthwise conv
        return block.conv_dw.out_channels
    for norm in ("bn3", "bn2"):  # ResNet Bottleneck / BasicBlock: the slot follows the last norm before the add
        if hasattr(block, norm):
            return getattr(block, norm).num_features
    return None


def insert_attention(model: nn.Module, make_layer: Callable[[int], nn.Module]) -> list[str]:
    """Put ``make_layer(channels)`` into every timm block's ``se`` slot; returns the block names."""
    names = []
    for name, block in model.named_modules():
        channels = slot_channels(block)
        if channels is not None:
            block.se = make_layer(channels)
            names.append(name)
    if not names:
        raise ValueError(f"{type(model).__name__} has no timm block with an `se` attention slot "
                         "(ResNet, MobileNet and EfficientNet families have one)")
    return names


def attention_factory(kind: str, variant: str, num_splits: int) -> Callable[[int], nn.Module]:
    from attnzoo.layers.ela import ELA
    from attnzoo.layers.ulsam import ULSAM

    if kind == "ela":
        return lambda channels: ELA(channels, variant=variant)
    if kind == "ulsam":
        return lambda channels: ULSAM(channels, num_splits=num_splits)
    raise ValueError(f"--attention {kind!r}, expected 'ela' or 'ulsam'")


def create_backbone(name: str, pretrained: bool | None) -> tuple[nn.Module, bool]:
    """timm model with hub weights when allowed and reachable; (model, whether the weights were loaded)."""
    import timm

    from attnzoo.hub import offline

    if pretrained is None:
        pretrained = not offline()
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True), True
        except Exception as err:  # noqa: BLE001 - no network, no such weights: fall back, and say why
            print(f"timm weights for {name} unavailable ({type(err).__name__}: {err}); using random init")
    return timm.create_model(name, pretrained=False), False


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18", help="a timm ResNet / MobileNet / EfficientNet name")
    parser.add_argument("--attention", choices=("ela", "ulsam"), default="ela")
    parser.add_argument("--ela-variant", default="B", help="ELA variant T, B, S or L")
    parser.add_argument("--ulsam-splits", type=int, default=4, help="ULSAM subspaces (must divide the channels)")
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageFolder root (train/ + val/, or one folder; --smoke: tiny generated images)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--timm-weights", action=argparse.BooleanOptionalAction, default=None,
                        help="load timm's hub weights (default: when not offline)")
    add_common_args(parser, epochs=3, lr=1e-3, batch_size=32, out="runs/insert_attention_timm")
    args = apply_smoke(parser.parse_args(argv))
    smoke_default(parser, args, "data", write_smoke_images)
    from safetensors.torch import save_file

    from attnzoo.apps.training import seed_everything, train_classifier

    seed_everything(args.seed)
    model, loaded = create_backbone(args.backbone, args.timm_weights)
    cfg = data_config(model, args.image_size)
    transform = pil_to_tensor(cfg["image_size"], cfg["in_chans"], cfg["mean"], cfg["std"])
    train_ds, val_ds, classes = image_folder_splits(args.data, transform, args.val_fraction, args.seed)
    train_ds = seeded_subset(train_ds, args.train_subset, args.seed)
    val_ds = seeded_subset(val_ds, args.val_subset, args.seed)
    model.reset_classifier(len(classes))
    blocks = insert_attention(model, attention_factory(args.attention, args.ela_variant, args.ulsam_splits))
    added = sum(p.numel() for name, p in model.named_parameters() if ".se." in name)
    print(f"{args.backbone} ({'timm weights' if loaded else 'random init'}) + {args.attention.upper()} in "
          f"{len(blocks)} blocks: +{added:,} params")
    result = train_classifier(model, train_ds, val_ds, epochs=args.epochs, lr=args.lr, seed=args.seed,
                              batch_size=args.batch_size, device=args.device, out_dir=args.out,
                              max_steps=args.max_steps, progress=args.progress)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, args.out / "model.safetensors", metadata={"backbone": args.backbone, "attention": args.attention,
                                                                "classes": ",".join(classes)})
    print(f"val top-1 {result.metrics['top1']:.2f} after {result.steps} steps -> {args.out}")
    return {"model": model, "result": result, "blocks": blocks, "timm_weights": loaded}


if __name__ == "__main__":
    main()
