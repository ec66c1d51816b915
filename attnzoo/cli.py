"""The ``attnzoo`` console script: list, info, publish, eval, viz and demo."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from attnzoo.hub import TASKS


def _cmd_list(args: argparse.Namespace) -> int:
    from attnzoo import list_models

    for name in list_models(args.pattern, pretrained=args.pretrained, task=args.task):
        print(name)
    return 0


def model_summary(name: str) -> dict[str, Any]:
    """What ``attnzoo info`` prints: task, parameters, input size, MACs and, if published, the checkpoint record.

    ``macs`` is one forward of a single image at ``input_size`` (:func:`attnzoo.profiling.count_macs`: modules as
    ptflops counts them, plus the attention inside attnzoo's custom ops and the ViT attention products).
    """
    import torch

    from attnzoo import hub
    from attnzoo.profiling import count_macs
    from attnzoo.zoo import create_model, model_task, split_name, tag_record
    from attnzoo.zoo.vit_attention import ATTENTION_MAC_HOOKS

    arch, tag = split_name(name)
    summary: dict[str, Any] = {"name": name, "task": model_task(name)}
    record = tag_record(arch, tag) if tag is not None else next(iter(hub.records_for(arch)), None)
    try:
        model = create_model(arch, **(record.model_kwargs if record else {}))
    except TypeError as err:  # graph models need their feature widths
        summary["build"] = f"needs arguments: {err}"
    else:
        summary["params"] = sum(p.numel() for p in model.parameters())
        # the checkpoint's input size when there is one (the model above is built with its kwargs)
        cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **(record.pretrained_cfg if record else {})}
        if "input_size" in cfg:
            summary["input_size"] = list(cfg["input_size"])
            summary["macs"] = count_macs(model, torch.randn(1, *cfg["input_size"]), ops=True,
                                         custom_hooks=ATTENTION_MAC_HOOKS)
    if record is not None:
        r = record
        summary["checkpoint"] = {"name": r.name, "model_kwargs": r.model_kwargs, "metrics": r.metrics,
                                 "dataset": r.dataset, "sha256": r.sha256, "size": r.size, "reproduce": r.eval_command,
                                 "sources": [s for s in (r.hub_dir and f"embedded:{r.hub_dir}/{r.file}", r.url,
                                                         r.hf_hub_id and f"hf-hub:{r.hf_hub_id}@{r.hf_revision}")
                                             if s]}
    return summary


def _cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(model_summary(args.name), indent=2))
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from attnzoo.hub import publish

    with warnings.catch_warnings(record=True) as caught:  # e.g. a kept model card: one line, not a source excerpt
        warnings.simplefilter("always")
        record = publish(args.name, args.source, args.to, url=args.url, hf_hub_id=args.hf_hub_id,
                         hf_revision=args.hf_revision)
    for warning in caught:
        print(f"attnzoo publish: warning: {warning.message}", file=sys.stderr)
    print(f"published {record.name}: sha256 {record.sha256}, {record.size} bytes -> {args.to}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from attnzoo.apps.evaluation import evaluate

    print(json.dumps(evaluate(args.name), indent=2))
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    from attnzoo.apps.viz import main as viz_main

    print(viz_main(args.name, args.image, args.out))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from attnzoo.apps.demo import run_demo

    run_demo()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'ela_*'")
    p.add_argument("--pretrained", action="store_true", help="only 'arch.tag' names with published weights")
    p.add_argument("--task", choices=TASKS)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="parameters, input size, MACs, checkpoint metrics and sources of a model")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("publish", help="add a save_pretrained folder to a hub folder (or hf-hub:ORG/REPO)")
    p.add_argument("name", help="arch.tag")
    p.add_argument("--from", dest="source", required=True, help="folder written by attnzoo.save_pretrained")
    p.add_argument("--to", required=True, help="hub folder (e.g. weights/) or hf-hub:ORG/REPO")
    p.add_argument("--url", help="https URL the file will also be served from")
    p.add_argument("--hf-hub-id", help="Hugging Face Hub repo id the file will also be served from")
    p.add_argument("--hf-revision", help="the commit (40 hex digits) of --hf-hub-id that holds the file")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("eval", help="evaluate a published checkpoint and print its metrics")
    p.add_argument("name", help="arch.tag")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("viz", help="draw an attention map of a model over an image")
    p.add_argument("name")
    p.add_argument("image")
    p.add_argument("--out", default="attention.png")
    p.set_defaults(func=_cmd_viz)

    p = sub.add_parser("demo", help="evaluate the published classifiers and fine-tune one (the main job)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure caused by its input is one ``error:`` line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:  # bad names, arguments, files, hubs, downloads
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"attnzoo {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
