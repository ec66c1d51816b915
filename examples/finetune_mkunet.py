"""Fine-tune MK-UNet on a folder of image/mask pairs (binary segmentation, Dice/IoU).

Layout: ``DATA/images/<stem>.png`` and ``DATA/masks/<stem>.png`` (any common image format; a mask pixel above
127 is foreground), optionally as ``DATA/train/{images,masks}`` and ``DATA/val/{images,masks}``; otherwise
``--val-fraction`` of the pairs are held out. Starts from the Fashion-MNIST silhouette checkpoint when one is
published for the model (``--no-pretrained`` to start from scratch); sides need not be multiples of 32.

    python examples/finetune_mkunet.py --model mkunet_s --data my_pairs/ --image-size 128 --out runs/mkunet_s
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ImageMaskFolder,
    add_common_args,
    apply_smoke,
    seeded_subset,
    smoke_default,
    split_train_val,
    write_smoke_images,
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mkunet_t", help="mkunet, mkunet_s or mkunet_t (optionally .tag)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with images/ and masks/ (--smoke: tiny generated pairs)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="read images as gray or RGB")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start from the published checkpoint (default: when one exists)")
    add_common_args(parser, epochs=20, lr=2e-3, batch_size=8, out="runs/finetune_mkunet")
    args = apply_smoke(parser.parse_args(argv))
    smoke_default(parser, args, "data", lambda: write_smoke_images(masks=True))
    import attnzoo
    from attnzoo.apps.training import seed_everything, train_segmenter
    from attnzoo.zoo import model_task, split_name

    if model_task(args.model) != "segmentation":
        raise ValueError(f"--model {args.model!r} is not a segmentation model; see `attnzoo list --task segmentation`")
    pretrained = args.pretrained
    if pretrained is None:
        pretrained = any(n.startswith(split_name(args.model)[0] + ".") for n in attnzoo.list_pretrained())
    seed_everything(args.seed)
    model = attnzoo.create_model(args.model, pretrained=pretrained, num_classes=1, in_chans=args.in_chans)
    # the published checkpoints hold Fashion-MNIST statistics; a new folder gets ImageNet's unless it is grey
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = cfg.get("mean", (0.485, 0.456, 0.406)[:args.in_chans] if args.in_chans == 3 else (0.5,))
    std = cfg.get("std", (0.229, 0.224, 0.225)[:args.in_chans] if args.in_chans == 3 else (0.5,))
    if len(mean) != args.in_chans:
        mean, std = (sum(mean) / len(mean),) * args.in_chans, (sum(std) / len(std),) * args.in_chans
    image_size = args.image_size or 128

    def folder(root: Path) -> ImageMaskFolder:
        return ImageMaskFolder(root, image_size, args.in_chans, mean, std)

    if (args.data / "train").is_dir() and (args.data / "val").is_dir():
        train_ds, val_ds = folder(args.data / "train"), folder(args.data / "val")
    else:
        train_ds, val_ds = split_train_val(folder(args.data), args.val_fraction, args.seed)
    train_ds = seeded_subset(train_ds, args.train_subset, args.seed)
    val_ds = seeded_subset(val_ds, args.val_subset, args.seed)
    print(f"{args.model} ({'pretrained' if pretrained else 'random init'}): {len(train_ds)} train / "
          f"{len(val_ds)} val pairs at {image_size}x{image_size}")
    result = train_segmenter(model, train_ds, val_ds, epochs=args.epochs, lr=args.lr, seed=args.seed,
                             batch_size=args.batch_size, device=args.device, out_dir=args.out,
                             max_steps=args.max_steps, progress=args.progress)
    model.pretrained_cfg = {"input_size": (args.in_chans, image_size, image_size), "mean": tuple(mean),
                            "std": tuple(std), "num_classes": 1}
    metrics = {k: round(result.metrics[k], 2) for k in ("dice", "iou")}
    attnzoo.save_pretrained(model.cpu(), args.out, metrics=metrics, dataset=str(args.data))
    print(f"val Dice {metrics['dice']:.2f}, IoU {metrics['iou']:.2f} after {result.steps} steps -> {args.out}")
    return {"model": model, "result": result}


if __name__ == "__main__":
    main()
