"""Fashion-MNIST checkpoints under ONE recipe: attention variants compared honestly, then saved for the hub.

Every run goes through examples/train_fmnist.py (AdamW + warm-up/cosine, flip/shift augmentation, seed 0,
28x28 grey input normalised with the training statistics, the test split as validation), with the same number
of optimiser steps for every classification row. Rows:

- ResNet-18 backbone narrowed to widths 16-32-64-128 (timm's ResNet, 7x7 stem): without attention, with timm's
  SE, with timm's ``'ela'`` (EfficientLocalAttn), and attnzoo's ``ela_resnet18`` (ELA-B behind the authors'
  local residual), all in the same block slot;
- ``ulsam_mobilenetv2_100`` (weights stored in float16 to fit 4 MiB);
- ``ninformer_cifar`` adapted to 28x28 x 1 channel (4x4 patches: 49 tokens), d=64, d_ffn=128, beside timm's
  ViT with the same tokens, width, depth (4) and FFN (mlp_ratio 2), no class token, mean pooling: self-attention
  (4 heads) where NiNformer has its NiN gating, and timm's defaults elsewhere (learned position embedding, no
  dropout; NiNformer keeps the authors' dropout 0.5);
- ``azhalonet_h0`` with every width x0.375 (749k params, like the narrow ResNet-18) and 4-px blocks with a 1-px
  halo: at 28x28 the stage maps are 7, 4, 2 and 1 px, so the paper's 8-px blocks would make every layer one
  padded block. Its baseline is the same network without attention: timm's ResNet with H0's depths (3-3-7-3),
  7x7 stem of 24 channels and bottleneck widths (mid 2x out: ``base_width=512``), a 3x3 conv where H0 has halo
  attention (1.86M params: the conv has 9 C^2 weights where q/k/v have 3 C^2). timm's own HaloAttn does not run
  here: it asserts that the map side divides the block size (7 px maps, 4-px blocks);
- ``nat_mini`` narrowed to C=32 and three levels of depths 2-2-4 (866k params, 3.3 MiB) with kernel 3: at 28x28
  the tokenizer leaves a 7x7 map, on which NAT's kernel 7 would be global attention;
- MK-UNet T / S / base on the silhouette segmentation task (Dice, IoU).

MACs are attnzoo.profiling.count_macs at 1x1x28x28 (modules as ptflops counts them; work inside custom ops and
functional matmuls is not counted). Images/s: forward of a batch of 256 in eval mode, median of 5, on this CPU.
Checkpoints of registered models go to ``--out/<name>`` (``attnzoo publish NAME.fmnist --from DIR --to weights/``).

Two phases: training writes each checkpoint folder with a ``row.json`` (what was trained, on how much, how long);
the report then loads every checkpoint found under ``--out``, measures MACs and images/s, and writes the table
(so rows can be (re)trained separately with ``--only`` and reported together with ``--report-only``).

    python benchmarks/fmnist_classification.py --out runs/fmnist

The longer recipes train chosen rows for more epochs into their own table, e.g. the 12-epoch one that
ela_resnet18.fmnist, nat_mini.fmnist and ninformer_cifar.fmnist come from (fmnist_classification_12ep.md):

    python benchmarks/fmnist_classification.py --out runs/fmnist12 --epochs 12 --seeds 0 1 2 \
        --only ela_resnet18 resnet18_plain nat_mini --name fmnist_classification_12ep

and the 6-epoch one that ulsam_mobilenetv2_100.fmnist (64 px) comes from (fmnist_classification_6ep.md, the
default name for --epochs 6; it also holds HaloNet-H0's 6-epoch rows):

    python benchmarks/fmnist_classification.py --out runs/fmnist_long --epochs 6 --seeds 0 1 2 \
        --only ulsam_mobilenetv2_100_64px mobilenetv2_100_plain_64px azhalonet_h0 resnet50_plain

azhalonet_h0.fmnist comes from a 12-epoch table of its own, beside its twin (fmnist_classification_12ep_halonet.md;
its own --out, so that its report does not need the other 12-epoch rows' checkpoints):

    python benchmarks/fmnist_classification.py --out runs/fmnist12_halo --epochs 12 --seeds 0 1 2 \
        --only azhalonet_h0 resnet50_plain --name fmnist_classification_12ep_halonet
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _fmnist_runs import load_run, mean_sd, table_name, train_fmnist, train_then_report  # noqa: E402
from _harness import time_ms, write_result  # noqa: E402

NARROW = {"channels": [16, 32, 64, 128]}
# (row label, --model, --model-kwargs, extra train_fmnist flags)
RUNS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("resnet18 (no attention)", "timm:resnet18", NARROW, []),
    ("resnet18 + SE (timm)", "timm:resnet18", {**NARROW, "block_args": {"attn_layer": "se"}}, []),
    ("resnet18 + 'ela' (timm)", "timm:resnet18", {**NARROW, "block_args": {"attn_layer": "ela"}}, []),
    ("ela_resnet18 (attnzoo ELA-B)", "ela_resnet18", NARROW, []),
    ("ulsam_mobilenetv2_100", "ulsam_mobilenetv2_100", {}, ["--save-dtype", "float16"]),
    # at 28 px MobileNetV2's last three stages run on 2x2 and 1x1 maps; 64 px (resized) gives 4x4 and 2x2
    ("ulsam_mobilenetv2_100 (64 px)", "ulsam_mobilenetv2_100", {}, ["--save-dtype", "float16", "--image-size", "64"]),
    ("mobilenetv2_100 (no attention, 64 px)", "timm:mobilenetv2_100", {}, ["--image-size", "64"]),
    ("ninformer_cifar (28x28, d=64)", "ninformer_cifar", {"img_size": 28, "embed_dim": 64, "d_ffn": 128}, []),
    # the attention-free twins below are described in the module docstring
    ("ViT at NiNformer's size (timm, plain Attention)", "timm:vit_small_patch16_224",
     {"img_size": 28, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0,
      "class_token": False, "global_pool": "avg"}, []),
    ("azhalonet_h0 (x0.375 widths, b=4, h=1)", "azhalonet_h0",
     {"width_multiplier": 0.375, "block_size": 4, "halo_size": 1}, []),
    ("H0 without attention (timm ResNet, 3x3 conv)", "timm:resnet50",
     {"layers": [3, 3, 7, 3], "channels": [4, 6, 12, 24], "base_width": 512, "stem_width": 24}, []),
    ("nat_mini (C=32, depths 2-2-4, k=3)", "nat_mini",
     {"embed_dim": 32, "depths": [2, 2, 4], "num_heads": [2, 4, 8], "mlp_ratio": 3.0, "kernel_size": 3,
      "drop_path_rate": 0.1}, []),
    ("mkunet_t", "mkunet_t", {}, ["--in-chans", "3"]),
    ("mkunet_s", "mkunet_s", {}, ["--in-chans", "3"]),
    ("mkunet", "mkunet", {}, ["--in-chans", "3"]),
]


def _folder(model: str, kwargs: dict[str, Any], extra: list[str], seed: int = 0) -> str:
    """Run folder: the model name (timm rows: backbone_attention), ``_NNpx`` for an input other than 28 px, and
    ``_seedN`` for seeds other than 0."""
    name = model
    if model.startswith("timm:"):
        name = f"{model.removeprefix('timm:')}_{kwargs.get('block_args', {}).get('attn_layer', 'plain')}"
    if "--image-size" in extra:
        name += f"_{extra[extra.index('--image-size') + 1]}px"
    return name if seed == 0 else f"{name}_seed{seed}"


@torch.no_grad()
def _speed(model: torch.nn.Module, in_chans: int, side: int) -> tuple[int, float]:
    from attnzoo.profiling import count_macs

    model.eval()
    macs = int(count_macs(model, torch.randn(1, in_chans, side, side), ops=True))
    batch = torch.randn(256, in_chans, side, side)
    return macs, 256 / (time_ms(lambda: model(batch), "cpu", warmup=1, repeat=5) / 1e3)


def train(args: argparse.Namespace) -> None:
    for (label, model, kwargs, extra), seed in itertools.product(RUNS, args.seeds):
        if args.only and _folder(model, kwargs, extra) not in args.only:
            continue
        out = args.out / _folder(model, kwargs, extra, seed)
        segmentation = model.startswith("mkunet")
        subset = args.seg_subset if segmentation else args.train_subset
        argv = ["--model", model, "--model-kwargs", json.dumps(kwargs), "--epochs", str(args.epochs),
                "--seed", str(seed), "--out", str(out), *extra]
        argv += ["--train-subset", str(subset)] if subset else []
        argv += ["--batch-size", "64"] if segmentation else []
        run = train_fmnist().main(argv)
        row = {"label": label, "model": model, "model_kwargs": kwargs, "task": run["task"], "metrics": run["metrics"],
               "params": run["params"], "size_bytes": run["size_bytes"], "train_seconds": run["train_seconds"],
               "steps": run["steps"], "train_images": subset or 60_000, "image_size": run["image_size"],
               "in_chans": 3 if "--in-chans" in extra else 1, "seed": seed}
        (out / "row.json").write_text(json.dumps(row, indent=2))


def _other_seeds(out: Path, model: str, kwargs: dict[str, Any], extra: list[str], metric: str) -> str:
    """'mean ± sd (n)' of ``metric`` over every seed trained for this row, or '' when only seed 0 was."""
    base = _folder(model, kwargs, extra)
    rows = {path.parent.name: json.loads(path.read_text()) for path in out.glob(f"{base}*/row.json")}
    values = [row["metrics"][metric] for name, row in rows.items()
              if name == _folder(model, kwargs, extra, row["seed"])]
    return mean_sd(values) if len(values) > 1 else ""


def report(args: argparse.Namespace) -> None:
    classification, segmentation = [], []
    for _, model, kwargs, extra in RUNS:
        folder = args.out / _folder(model, kwargs, extra)
        if not (folder / "row.json").is_file():
            continue
        row = json.loads((folder / "row.json").read_text())
        trained = load_run(folder, row["model"], row["model_kwargs"], row["in_chans"])
        macs, speed = _speed(trained, row["in_chans"], row["image_size"])
        batch = 64 if row["task"] == "segmentation" else 128
        common = {"params": row["params"], "MMACs": macs / 1e6, "images/s": speed,
                  "checkpoint MiB": row["size_bytes"] / 2**20, "steps x batch": f"{row['steps']} x {batch}",
                  "train s": row["train_seconds"], "folder": folder.name}
        if row["task"] == "classification":
            classification.append({"model": row["label"], "top-1 % (seed 0)": f"{row['metrics']['top1']:.2f}",
                                   "mean ± sd (seeds)": _other_seeds(args.out, model, kwargs, extra, "top1"), **common})
        else:
            segmentation.append({"model": row["label"], "Dice %": f"{row['metrics']['dice']:.2f}",
                                 "IoU %": f"{row['metrics']['iou']:.2f}", **common})
    notes = (f"One recipe for every row: {args.epochs} epochs over the training images (all 60,000 unless "
             "--train-subset; the steps x batch column gives the optimiser steps; segmentation: batch 64, BCE + "
             "soft Dice), AdamW (lr 2e-3, weight decay 0.05 classification / 0.01 segmentation, 5% warm-up then "
             "cosine), random flip + shift by up to 2 px, 28x28 input (rows marked 64 px: resized to 64x64 before the "
             "augmentation, as their pretrained_cfg says) normalised with the training statistics; the "
             "10,000 test images are the validation set. Seed 0 gives the checkpoint and the 'top-1 % (seed 0)' "
             "column (`attnzoo eval NAME` reproduces it from the saved weights); where a row was also trained with "
             "other seeds, the next column gives mean ± sample sd (number of seeds): differences smaller than about "
             "two sd are not evidence that one attention variant beats another. MobileNetV2 ends at a 1x1 map on "
             "28x28 inputs and learns slowest there (2x2 at 64 px). Images/s: forward of a batch of 256, one thread "
             "per run; train seconds were measured with two to five runs sharing the 2-core CPU, one thread each, "
             "and are indicative only. "
             "MMACs: attnzoo.profiling.count_macs(ops=True) at the input size, modules (ptflops convention) plus "
             "the work inside attnzoo's custom ops (ELA's fused gate, HaloAttention's attention); functional "
             "matmuls are not counted. The published MK-UNet checkpoints come from "
             "examples/train_checkpoints.py (benchmarks/results/checkpoints_other.md).")
    sections = [(heading, rows) for heading, rows in (
        ("Classification (top-1 on the test split)", classification),
        ("Silhouette segmentation (mean per-image Dice / IoU)", segmentation)) if rows]
    write_result(args.name or table_name("fmnist_classification", args.epochs),
                 f"Fashion-MNIST: attention variants under one recipe ({args.epochs} epochs)", sections, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=0,
                        help="train on this many images (a seeded subset; 0 = all 60,000)")
    parser.add_argument("--seg-subset", type=int, default=3_200, help="the same for the segmentation rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train each row once per seed (seed 0 is the checkpoint; the others give the spread)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="train only these rows (their seed-0 folder names, e.g. resnet18_se)")
    parser.add_argument("--name", default=None, help="results file name (default: fmnist_classification, with "
                        "_<N>ep for other epoch counts), e.g. to keep a table of other rows under the same recipe")
    train_then_report(parser, train, report)


if __name__ == "__main__":
    main()
