"""Shared by the Fashion-MNIST training benchmarks: the training example as a module, a run back from its folder,
and the spread over seeds.

Runs go through examples/train_fmnist.py so that every table is trained by the recipe users get; a run folder
holds what that script saved (an attnzoo ``save_pretrained`` folder, or ``model.safetensors`` for a plain
``timm:``/``smp:`` baseline) plus the benchmark's ``row.json``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from _harness import threads_from_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@functools.cache
def train_fmnist() -> ModuleType:
    """examples/train_fmnist.py, imported by path (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("train_fmnist", EXAMPLES / "train_fmnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_run(folder: Path, model: str, model_kwargs: dict[str, Any], in_chans: int) -> torch.nn.Module:
    """The trained model of a run folder: attnzoo models through from_pretrained, baselines rebuilt and loaded."""
    import attnzoo

    script = train_fmnist()
    if not model.startswith(script.HOSTS):
        return attnzoo.from_pretrained(folder)
    from safetensors.torch import load_model

    num_classes = 10 if script.task_of(model) == "classification" else 1
    net, _ = script.build(model, num_classes, in_chans, model_kwargs)
    load_model(net, folder / "model.safetensors")
    return net


def mean_sd(values: Sequence[float]) -> str:
    """'mean ± sample sd (n)'; the sd is 'nan' for one value."""
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {sd:.2f} ({len(values)})"


def table_name(base: str, epochs: int, max_steps: int = 0) -> str:
    """The results file of a run length: ``base`` for the shared 2-epoch recipe, ``base_<N>ep`` for a longer one,
    ``base_<N>steps`` for a run cut to N steps, so that neither overwrites the shared table."""
    return f"{base}_{max_steps}steps" if max_steps else base if epochs == 2 else f"{base}_{epochs}ep"


def add_seeded_run_args(parser: argparse.ArgumentParser, out: str, seeds: Sequence[int], recipe: str) -> None:
    """--out, --max-steps, --seeds and --shard, for a table of several seeds per row trained by parallel shards."""
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--max-steps", type=int, default=0, help=f"cut each run to N steps (0: {recipe})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--shard", default="0/1", help="K/N: train every N-th run starting at K (parallel processes)")


def shard_of(jobs: Sequence[Any], shard: str) -> list[Any]:
    """Every N-th job starting at K, for ``shard='K/N'``."""
    index, shards = (int(part) for part in shard.split("/"))
    return list(jobs)[index::shards]


def train_once(out: Path, argv: list[str], row: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Train ``train_fmnist.py argv`` into ``out`` and write ``row(run)`` as its row.json, unless it is there
    already (rerun a run by deleting its folder)."""
    if (out / "row.json").is_file():
        return
    run = train_fmnist().main([*argv, "--out", str(out)])
    (out / "row.json").write_text(json.dumps(row(run), indent=2))


def train_then_report(parser: argparse.ArgumentParser, train: Callable[[argparse.Namespace], None],
                      report: Callable[[argparse.Namespace], None]) -> None:
    """The benchmarks' two phases: train (unless --report-only), then report what --out holds."""
    parser.add_argument("--report-only", action="store_true", help="skip training, report what --out holds")
    args = parser.parse_args()
    threads_from_env()
    if not args.report_only:
        train(args)
    report(args)
