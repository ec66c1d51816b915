"""Fashion-MNIST: one small ViT per wave-2 attention method beside timm's plain Attention, 3 seeds each.

Every run goes through examples/train_fmnist.py, the shared classification recipe (AdamW lr 2e-3, weight decay
0.05, 5% warm-up then cosine, flip + 2-px shift, 28x28 grey input normalised with the training statistics, the
10,000 test images as validation), on one ViT trunk: 7x7 patches (16 tokens + class token), width 64, 4 blocks,
4 heads, MLP ratio 4, timm's ViT init and head. Rows differ only in the attention (and, for the minimal
transformer, in the missing MLP):

- timm's ``vit_small_patch16_224`` at that size (plain ``Attention``), the anchor;
- ``moh_vit_small_patch16_224_75`` with 2 shared heads + top-1 of 2 routed in every block (75 % of the heads),
  trained WITHOUT the load-balance loss: the shared recipe has no hook for auxiliary losses;
- ``gated_vit_small_patch16_224`` (elementwise G1 gate);
- ``flowformer_deit_small_patch16_224`` (Flow-Attention);
- ``minimal_vit_small_patch16_224``: MLP-free blocks with symmetric similarity (4 heads), and the single-head
  minimum (collapsed W^QK, no W^V/W^O).

Budget: each run is the recipe's 2 epochs (936 steps x 128 images); ``--epochs N`` trains longer into its own table
(``fmnist_vit_attention_<N>ep.md``), ``--max-steps N`` cuts runs to N optimiser steps for a quicker one
(``fmnist_vit_attention_<N>steps.md``; the cosine schedule then spans those steps). Two phases, as in
benchmarks/fmnist_classification.py: training writes each run's folder with a ``row.json``; the report loads the
checkpoints, measures MACs (module convention, and with the attention products of
``attnzoo.zoo.vit_attention.ATTENTION_MAC_HOOKS``) and images/s (eval forward of 256 images, median of 5), and
writes benchmarks/results/fmnist_vit_attention.md.

    python benchmarks/fmnist_vit_attention.py --out runs/fmnist_vit --shard 0/2 &
    python benchmarks/fmnist_vit_attention.py --out runs/fmnist_vit --shard 1/2 --report-only  # after both finish
    python benchmarks/fmnist_vit_attention.py --out runs/fmnist_vit12 --epochs 12  # the 12-epoch table, which the
    # published ViT checkpoints come from (the best of the 3 seeds each)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _fmnist_runs import (  # noqa: E402
    add_seeded_run_args,
    load_run,
    mean_sd,
    shard_of,
    table_name,
    train_once,
    train_then_report,
)
from _harness import time_ms, write_result  # noqa: E402

TRUNK = {"img_size": 28, "patch_size": 7, "embed_dim": 64, "depth": 4, "num_heads": 4}
# (row label, folder, --model, --model-kwargs)
RUNS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("timm ViT (plain Attention)", "vit_plain", "timm:vit_small_patch16_224", TRUNK),
    ("MoH (2 shared + top-1 of 2), no aux loss", "moh", "moh_vit_small_patch16_224_75",
     {**TRUNK, "shared_heads": 2, "routed_heads": 1}),
    ("gated attention (elementwise G1)", "gated", "gated_vit_small_patch16_224", TRUNK),
    ("Flowformer (Flow-Attention)", "flowformer", "flowformer_deit_small_patch16_224", TRUNK),
    ("minimal: no MLP, symmetric (4 heads)", "minimal_symmetric", "minimal_vit_small_patch16_224", TRUNK),
    ("minimal: no MLP, 1 head, W^QK, no W^V/W^O", "minimal_min", "minimal_vit_small_patch16_224",
     {**TRUNK, "num_heads": 1, "qk": "collapsed", "vo": "none"}),
]
SEEDS = (0, 1, 2)


def train(args: argparse.Namespace) -> None:
    for (label, folder, model, kwargs), seed in shard_of(list(itertools.product(RUNS, args.seeds)), args.shard):
        if args.only and folder not in args.only:
            continue
        argv = ["--model", model, "--model-kwargs", json.dumps(kwargs), "--seed", str(seed), "--no-progress"]
        argv += (["--epochs", "1", "--max-steps", str(args.max_steps)] if args.max_steps
                 else ["--epochs", str(args.epochs)])
        train_once(args.out / f"{folder}_seed{seed}", argv, lambda run, label=label, folder=folder, model=model,
                   kwargs=kwargs, seed=seed: {
                       "label": label, "folder": folder, "model": model, "model_kwargs": kwargs, "seed": seed,
                       "top1": run["metrics"]["top1"], "params": run["params"], "steps": run["steps"],
                       "train_seconds": run["train_seconds"]})


@torch.no_grad()
def _cost(model: torch.nn.Module) -> tuple[float, float, float]:
    from attnzoo.profiling import count_macs
    from attnzoo.zoo.vit_attention import ATTENTION_MAC_HOOKS

    model.eval()
    x = torch.randn(1, 1, 28, 28)
    modules = count_macs(model, x) / 1e6
    total = count_macs(model, x, custom_hooks=ATTENTION_MAC_HOOKS) / 1e6
    batch = torch.randn(256, 1, 28, 28)
    return modules, total, 256 / (time_ms(lambda: model(batch), "cpu", warmup=1, repeat=5) / 1e3)


def report(args: argparse.Namespace) -> None:
    rows, steps, seeds, anchor_top1, anchor_params = [], set(), set(), None, None
    for label, folder, _, _ in RUNS:
        runs = [json.loads(p.read_text()) for p in sorted(args.out.glob(f"{folder}_seed*/row.json"))]
        if not runs:
            continue
        top1 = [r["top1"] for r in runs]
        steps.update(r["steps"] for r in runs)
        seeds.update(r["seed"] for r in runs)
        mean = statistics.mean(top1)
        anchor_top1 = mean if anchor_top1 is None else anchor_top1
        anchor_params = runs[0]["params"] if anchor_params is None else anchor_params
        modules, total, speed = _cost(load_run(args.out / f"{folder}_seed{runs[0]['seed']}", runs[0]["model"],
                                               runs[0]["model_kwargs"], in_chans=1))
        rows.append({"attention": label, "top-1 % mean ± sd": mean_sd(top1),
                     "seeds": " / ".join(f"{t:.2f}" for t in top1), "Δ vs plain": f"{mean - anchor_top1:+.2f}",
                     "params": runs[0]["params"], "params / plain": runs[0]["params"] / anchor_params,
                     "MMACs (modules)": modules, "MMACs (+ attention)": total,
                     "images/s": speed, "steps x batch": f"{runs[0]['steps']} x 128",
                     "train s (mean)": statistics.mean(r["train_seconds"] for r in runs)})
    budget = (f"cut to {args.max_steps} optimiser steps of 128 images" if args.max_steps else
              f"{args.epochs} epochs over the 60,000 training images, "
              f"{' / '.join(f'{n:,}' for n in sorted(steps))} optimiser steps of 128")
    notes = (f"Recipe: examples/train_fmnist.py (the shared classification recipe), {budget}, seeds "
             f"{', '.join(map(str, sorted(seeds)))}; top-1 on the 10,000 test images. Differences smaller than about "
             "two sd are not evidence. MoH is trained without its load-balance loss (the shared loop adds no "
             "auxiliary loss; the authors add 0.01 * the mean over layers). MMACs per 28x28 image: '(modules)' "
             "counts Linear/Conv/LayerNorm/GELU as ptflops does, '(+ attention)' adds the attention products (and "
             "MoH's/gated gating multiplies) through ATTENTION_MAC_HOOKS. Images/s: eval forward of 256 images, one "
             "thread, median of 5; train seconds were measured with two runs sharing the loaded 2-core CPU and are "
             "indicative only.")
    length = f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epochs"
    write_result(table_name("fmnist_vit_attention", args.epochs, args.max_steps),
                 f"Fashion-MNIST: wave-2 ViT attention vs timm's plain Attention ({length})",
                 [("Classification (top-1 on the test split)", rows)], notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seeded_run_args(parser, "runs/fmnist_vit", SEEDS, "the recipe's 2 epochs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (2: the shared recipe)")
    parser.add_argument("--only", nargs="*", default=None, help="train only these row folders (e.g. moh gated)")
    train_then_report(parser, train, report)


if __name__ == "__main__":
    main()
