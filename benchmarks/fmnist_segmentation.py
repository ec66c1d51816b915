"""Fashion-MNIST silhouettes: MK-UNet T / S / base beside smp's Unet(resnet18), the checkpoints' recipe, 3 seeds.

Every run is the recipe that trained the published ``mkunet*.fmnist_seg`` checkpoints
(examples/train_checkpoints.py: 600 steps x 32 images of a seeded 19,200-image subset, AdamW lr 3e-3, 5 % warm-up
+ cosine, flip/shift, BCE + per-image soft Dice, grey input repeated to 3 channels), through
examples/train_fmnist.py. The baseline is ``smp.Unet('resnet18', encoder_weights=None)``: 28 px is not a multiple
of its output stride 32, so the input is zero-padded to 32 px and the logits cropped back
(``train_fmnist.PaddedToStride``, what smp's own error message advises). Seed 0 of an MK-UNet row retrains the
published checkpoint; Dice and IoU are the per-image means over the 10,000 test silhouettes, as ``attnzoo eval``
computes them.

    python benchmarks/fmnist_segmentation.py --out runs/fmnist_seg --shard 0/2 &
    python benchmarks/fmnist_segmentation.py --out runs/fmnist_seg --shard 1/2 --report-only  # after both finish
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _fmnist_runs import (  # noqa: E402
    EXAMPLES,
    add_seeded_run_args,
    load_run,
    mean_sd,
    shard_of,
    train_once,
    train_then_report,
)
from _harness import write_result  # noqa: E402

sys.path.insert(0, str(EXAMPLES))
from train_checkpoints import SEGMENTATION_ARGS, SEGMENTERS  # noqa: E402

# (row label, --model)
RUNS: list[tuple[str, str]] = [
    *((name, name) for name in SEGMENTERS),
    ("smp Unet(resnet18), no attention", "smp:resnet18"),
]
SEEDS = (0, 1, 2)


def _folder(model: str, seed: int | str) -> str:
    """Run folder of ``model`` at ``seed`` (``'*'``: the glob of every seed)."""
    return f"{model.replace('smp:', 'smp_unet_')}_seed{seed}"


def train(args: argparse.Namespace) -> None:
    for (label, model), seed in shard_of(list(itertools.product(RUNS, args.seeds)), args.shard):
        argv = ["--model", model, "--in-chans", "3", "--seed", str(seed), "--no-progress", *SEGMENTATION_ARGS]
        if args.max_steps:
            argv += ["--max-steps", str(args.max_steps)]
        train_once(args.out / _folder(model, seed), argv, lambda run, label=label, model=model, seed=seed: {
            "label": label, "model": model, "seed": seed, **run["metrics"], "params": run["params"],
            "steps": run["steps"], "train_seconds": run["train_seconds"]})


def report(args: argparse.Namespace) -> None:
    from attnzoo.profiling import count_macs

    rows = []
    for label, model in RUNS:
        runs = [json.loads(p.read_text()) for p in sorted(args.out.glob(f"{_folder(model, '*')}/row.json"))]
        if not runs:
            continue
        trained = load_run(args.out / _folder(model, runs[0]["seed"]), model, {}, in_chans=3).eval()
        with torch.no_grad():
            macs = count_macs(trained, torch.randn(1, 3, 28, 28)) / 1e6
        rows.append({"model": label, "Dice % mean ± sd": mean_sd([r["dice"] for r in runs]),
                     "IoU % mean ± sd": mean_sd([r["iou"] for r in runs]),
                     "Dice per seed": " / ".join(f"{r['dice']:.2f}" for r in runs), "params": runs[0]["params"],
                     "MMACs (28 px)": macs, "steps x batch": f"{runs[0]['steps']} x 32",
                     "train s (mean)": statistics.mean(r["train_seconds"] for r in runs)})
    budget = f"cut to {args.max_steps} steps" if args.max_steps else "600 steps x 32 images"
    notes = (f"Recipe: the published checkpoints' ({budget}, seeds {', '.join(map(str, args.seeds))}); Dice / IoU "
             "are per-image means over the 10,000 test silhouettes in percent. Differences smaller than about two "
             "sd are not evidence. MMACs: attnzoo.profiling.count_macs at 1x3x28x28 (modules, ptflops convention; "
             "the smp row includes its 32-px padded input). Train seconds were measured with two runs sharing the "
             "2-core CPU, one thread each, and are indicative only.")
    write_result("fmnist_segmentation", "Fashion-MNIST silhouettes: MK-UNet vs smp Unet(resnet18)",
                 [("Segmentation (test split)", rows)], notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seeded_run_args(parser, "runs/fmnist_seg", SEEDS, "the recipe's 600")
    train_then_report(parser, train, report)


if __name__ == "__main__":
    main()
