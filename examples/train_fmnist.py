"""Train a registered attnzoo model on Fashion-MNIST with the shared recipe and save it for `attnzoo publish`.

Classifiers learn the 10 classes; segmentation models learn the foreground silhouettes
(``attnzoo.data.fashion_mnist_segmentation``). The test split is the validation set, so the metrics saved with
the checkpoint are the ones ``attnzoo eval NAME`` recomputes.

``--save-dtype float16`` stores the weights in half precision (to fit the 4 MiB embedded hub); the model is then
re-evaluated with the rounded weights, and those are the metrics saved. ``--model timm:NAME`` trains a plain timm
model under the same recipe (the attention-free / SE / timm-ELA baselines of the comparison table); it is saved
as ``model.safetensors`` + ``metrics.json`` only, since the attnzoo hub publishes registered models.
``--model smp:ENCODER`` does the same for segmentation with ``smp.Unet(ENCODER)`` (random init), the input
zero-padded to the encoder's output stride and the logits cropped back (28 px is not a multiple of 32).

    python examples/train_fmnist.py --model ela_resnet18 --model-kwargs '{"channels": [16, 32, 64, 128]}' \\
        --epochs 2 --out runs/ela_resnet18
    attnzoo publish ela_resnet18.fmnist --from runs/ela_resnet18 --to weights/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import add_common_args, apply_smoke, json_kwargs, seeded_subset, smoke_default  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a registered classification/segmentation model, timm:NAME "
                        "or smp:ENCODER (--smoke: ela_resnet18)")
    parser.add_argument("--model-kwargs", default=None, help="JSON object of extra create_model arguments")
    parser.add_argument("--in-chans", type=int, default=1, help="channels fed to the model (the image repeated)")
    parser.add_argument("--data-root", type=Path, default=None, help="folder with the Fashion-MNIST idx files")
    parser.add_argument("--save-dtype", choices=("float32", "float16"), default="float32",
                        help="dtype of the stored weights (metrics are measured with the stored weights)")
    add_common_args(parser, epochs=2, lr=2e-3, batch_size=128, out="runs/train_fmnist")
    args = apply_smoke(parser.parse_args(argv))
    smoke_default(parser, args, "model", lambda: "ela_resnet18")
    return args


HOSTS = ("timm:", "smp:")


class PaddedToStride(torch.nn.Module):
    """An smp model on any input size: zero-pad H and W to its encoder's output stride, crop the logits back.

    smp refuses other sizes and tells you to pad; padding evenly on both sides keeps the image centred.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.model.encoder.output_stride
        (h, w), (pad_h, pad_w) = x.shape[-2:], (-x.shape[-2] % stride, -x.shape[-1] % stride)
        top, left = pad_h // 2, pad_w // 2
        logits = self.model(torch.nn.functional.pad(x, (left, pad_w - left, top, pad_h - top)))
        return logits[..., top:top + h, left:left + w]


def task_of(name: str) -> str:
    """'classification' or 'segmentation' for an attnzoo name, ``timm:NAME`` or ``smp:ENCODER``."""
    from attnzoo.zoo import model_task

    if name.startswith(HOSTS):
        return "classification" if name.startswith("timm:") else "segmentation"
    return model_task(name)


def build(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> tuple[Any, str]:
    """(model, task) for an attnzoo name, ``timm:NAME`` or ``smp:ENCODER``."""
    import attnzoo

    task = task_of(name)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name.removeprefix("timm:"), num_classes=num_classes, in_chans=in_chans,
                                 **kwargs), task
    if name.startswith("smp:"):
        import segmentation_models_pytorch as smp

        return PaddedToStride(smp.Unet(name.removeprefix("smp:"), encoder_weights=None, in_channels=in_chans,
                                       classes=num_classes, **kwargs)), task
    if task not in ("classification", "segmentation"):
        raise ValueError(f"--model {name!r} is a {task} model; this script trains image models")
    return attnzoo.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs), task


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, validate on the test split, save; returns the saved metrics, the model and the run's numbers."""
    args = parse_args(argv)
    import json

    from safetensors.torch import save_model

    import attnzoo
    from attnzoo.apps.training import (
        evaluate_classifier,
        evaluate_segmenter,
        seed_everything,
        train_classifier,
        train_segmenter,
    )
    from attnzoo.data.fashion_mnist import fashion_mnist, fashion_mnist_segmentation, fmnist_cfg, fmnist_transform

    image_size = args.image_size or 28
    is_host = args.model.startswith(HOSTS)
    num_classes = 10 if task_of(args.model) == "classification" else 1
    seed_everything(args.seed)
    model, task = build(args.model, num_classes, args.in_chans, json_kwargs(args.model_kwargs))
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}),
                            **fmnist_cfg(image_size, args.in_chans, num_classes)}
    if task == "classification" and not model.pretrained_cfg.get("fixed_input_size"):
        # timm's default-cfg contract: forward_features at input_size is pool_size (1x1 for a stride-32 CNN at 28 px)
        with torch.no_grad():
            features = model.eval().forward_features(torch.zeros(1, *model.pretrained_cfg["input_size"]))
        model.pretrained_cfg["pool_size"] = tuple(features.shape[-2:])
    model.default_cfg = model.pretrained_cfg  # timm's older alias
    make = fashion_mnist if task == "classification" else fashion_mnist_segmentation
    transform = fmnist_transform(image_size, args.in_chans)
    train_ds = seeded_subset(make("train", root=args.data_root, transform=transform), args.train_subset, args.seed)
    val_ds = seeded_subset(make("test", root=args.data_root, transform=transform), args.val_subset, args.seed)
    train = train_classifier if task == "classification" else train_segmenter
    result = train(model, train_ds, val_ds, epochs=args.epochs, lr=args.lr, seed=args.seed,
                   batch_size=args.batch_size, device=args.device, out_dir=args.out, max_steps=args.max_steps,
                   progress=args.progress)
    final = result.metrics
    model.cpu()
    if args.save_dtype == "float16":
        model.half().float()  # round the weights as stored, then measure what will be published
        evaluate = evaluate_classifier if task == "classification" else evaluate_segmenter
        final = evaluate(model, val_ds, device="cpu")
        model.half()
    keys = ("top1",) if task == "classification" else ("dice", "iou")
    metrics = {k: round(final[k], 2) for k in keys}
    if is_host:
        save_model(model, str(args.out / "model.safetensors"))
        (args.out / "metrics.json").write_text(json.dumps({"model": args.model, "model_kwargs": json_kwargs(
            args.model_kwargs), "metrics": metrics, "dataset": "fashion-mnist"}, indent=2))
    else:
        attnzoo.save_pretrained(model, args.out, metrics=metrics, dataset="fashion-mnist")
    model.float()
    params = sum(p.numel() for p in model.parameters())
    size = (args.out / "model.safetensors").stat().st_size
    print(f"{args.model}: {params:,} params, {size / 2**20:.2f} MiB, {result.steps} steps in {result.seconds:.0f} s, "
          f"test {', '.join(f'{k} {v:.2f}' for k, v in metrics.items())} -> {args.out}")
    return {"metrics": metrics, "model": model, "task": task, "params": params, "size_bytes": size,
            "train_seconds": result.seconds, "steps": result.steps, "image_size": image_size}


if __name__ == "__main__":
    main()
