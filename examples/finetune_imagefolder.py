"""Fine-tune a pretrained attnzoo classifier on an ImageFolder directory with a new number of classes.

The folder is torchvision's ImageFolder layout (one sub-folder per class), either with ``train/`` and ``val/``
inside or as one folder split by ``--val-fraction``. The classifier head is re-initialised for the folder's
classes (timm's behaviour for ``num_classes`` different from the checkpoint); the input size, channels and
normalisation come from the checkpoint's pretrained cfg.

    python examples/finetune_imagefolder.py --model ela_resnet18.fmnist --data my_images/ --out runs/ela_ft
    torchrun --nproc_per_node 2 examples/finetune_ddp.py --model ela_resnet18.fmnist --data my_images/ --out ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    add_common_args,
    apply_smoke,
    image_folder_splits,
    json_kwargs,
    pil_to_tensor,
    seeded_subset,
    smoke_default,
    write_smoke_images,
)

from attnzoo.apps.evaluation import data_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="attnzoo classifier, 'arch.tag' for a published checkpoint (--smoke: ela_resnet18.fmnist)")
    parser.add_argument("--model-kwargs", default=None, help="JSON object of extra create_model arguments")
    parser.add_argument("--data", type=Path, default=None, help="ImageFolder root (--smoke: tiny generated images)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="used when --data has no train/ and val/")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="start from the hub checkpoint (--no-pretrained: random initialisation)")
    add_common_args(parser, epochs=3, lr=1e-3, batch_size=32, out="runs/finetune_imagefolder")
    return parser


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Fine-tune and save with ``attnzoo.save_pretrained`` (rank 0 under torchrun); returns the final metrics."""
    parser = parser or build_parser()
    args = apply_smoke(parser.parse_args(argv))
    smoke_default(parser, args, "model", lambda: "ela_resnet18.fmnist")
    smoke_default(parser, args, "data", write_smoke_images)
    import torch.distributed as dist

    import attnzoo
    from attnzoo.apps.training import seed_everything, train_classifier

    seed_everything(args.seed)
    # the class count is only known from the folder, which needs the model's input config to be read: build
    # the model once to learn its data config, then again with the new head
    probe = attnzoo.create_model(args.model, pretrained=args.pretrained, **json_kwargs(args.model_kwargs))
    cfg = data_config(probe, args.image_size)
    transform = pil_to_tensor(cfg["image_size"], cfg["in_chans"], cfg["mean"], cfg["std"])
    train_ds, val_ds, classes = image_folder_splits(args.data, transform, args.val_fraction, args.seed)
    train_ds = seeded_subset(train_ds, args.train_subset, args.seed)
    val_ds = seeded_subset(val_ds, args.val_subset, args.seed)
    seed_everything(args.seed)
    model = attnzoo.create_model(args.model, pretrained=args.pretrained, num_classes=len(classes),
                                 **json_kwargs(args.model_kwargs))
    model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": len(classes),
                            "input_size": (cfg["in_chans"], cfg["image_size"], cfg["image_size"]),
                            "mean": cfg["mean"], "std": cfg["std"]}
    result = train_classifier(model, train_ds, val_ds, epochs=args.epochs, lr=args.lr, seed=args.seed,
                              batch_size=args.batch_size, device=args.device, out_dir=args.out,
                              max_steps=args.max_steps, progress=args.progress)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == 0:
        metrics = {"top1": round(result.metrics["top1"], 2)}
        attnzoo.save_pretrained(model, args.out, metrics=metrics, dataset=str(args.data))
        print(f"{args.model} on {len(classes)} classes {classes[:5]}{'...' if len(classes) > 5 else ''}: "
              f"val top-1 {metrics['top1']:.2f} after {result.steps} steps -> {args.out}")
    return {"model": model, "result": result, "classes": classes, "args": args}


if __name__ == "__main__":
    main()
