"""Train a registered attnzoo model on Fashion-MNIST with the shared recipe and save it for `attnzoo publish`.

Classifiers learn the 10 classes; segmentation models learn the foreground silhouettes
(``attnzoo.data.fashion_mnist_segmentation``). The test split is the validation set, so the metrics saved with
the checkpoint are the ones ``attnzoo eval NAME`` recomputes.

    python examples/train_fmnist.py --model ela_resnet18 --model-kwargs '{"channels": [16, 32, 64, 128]}' \\
        --epochs 2 --out /tmp/az_ckpt/ela_resnet18
    attnzoo publish ela_resnet18.fmnist --from /tmp/az_ckpt/ela_resnet18 --to weights/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_common_args, apply_smoke, json_kwargs, seeded_subset  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a registered classification or segmentation model")
    parser.add_argument("--model-kwargs", default=None, help="JSON object of extra create_model arguments")
    parser.add_argument("--in-chans", type=int, default=1, help="channels fed to the model (the image repeated)")
    parser.add_argument("--data-root", type=Path, default=None, help="folder with the Fashion-MNIST idx files")
    add_common_args(parser, epochs=2, lr=2e-3, batch_size=128)
    return apply_smoke(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, validate on the test split, save with ``attnzoo.save_pretrained``; returns the saved metrics."""
    args = parse_args(argv)
    import attnzoo
    from attnzoo.data.fashion_mnist import fashion_mnist, fashion_mnist_segmentation, fmnist_cfg, fmnist_transform
    from attnzoo.training import seed_everything, train_classifier, train_segmenter
    from attnzoo.zoo._registry import model_task

    task = model_task(args.model)
    if task not in ("classification", "segmentation"):
        raise ValueError(f"--model {args.model!r} is a {task} model; this script trains image models")
    image_size = args.image_size or 28
    num_classes = 10 if task == "classification" else 1
    seed_everything(args.seed)
    model = attnzoo.create_model(args.model, num_classes=num_classes, in_chans=args.in_chans,
                                 **json_kwargs(args.model_kwargs))
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}),
                            **fmnist_cfg(image_size, args.in_chans, num_classes)}
    model.default_cfg = model.pretrained_cfg  # timm's older alias
    make = fashion_mnist if task == "classification" else fashion_mnist_segmentation
    transform = fmnist_transform(image_size, args.in_chans)
    train_ds = seeded_subset(make("train", root=args.data_root, transform=transform), args.train_subset, args.seed)
    val_ds = seeded_subset(make("test", root=args.data_root, transform=transform), args.val_subset, args.seed)
    train = train_classifier if task == "classification" else train_segmenter
    result = train(model, train_ds, val_ds, epochs=args.epochs, lr=args.lr, seed=args.seed,
                   batch_size=args.batch_size, device=args.device, out_dir=args.out, max_steps=args.max_steps,
                   progress=args.progress)
    keys = ("top1",) if task == "classification" else ("dice", "iou")
    metrics = {k: round(result.metrics[k], 2) for k in keys}
    attnzoo.save_pretrained(model.cpu(), args.out, metrics=metrics, dataset="fashion-mnist")
    params = sum(p.numel() for p in model.parameters())
    size_mb = (args.out / "model.safetensors").stat().st_size / 2**20
    print(f"{args.model}: {params:,} params, {size_mb:.2f} MiB, {result.steps} steps in {result.seconds:.0f} s, "
          f"test {', '.join(f'{k} {v:.2f}' for k, v in metrics.items())} -> {args.out}")
    return metrics


if __name__ == "__main__":
    main()
