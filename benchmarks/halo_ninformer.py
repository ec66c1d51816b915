"""HaloAttention vs timm's HaloAttn, and a NiNformer block vs timm's ViT Block, side by side.

    python benchmarks/halo_ninformer.py                 # CPU tables -> benchmarks/results/halo_ninformer.md
    python benchmarks/halo_ninformer.py --device cuda   # the same on a GPU -> halo_ninformer_cuda.md
    python benchmarks/halo_ninformer.py --quick         # small shapes, to check that the script runs

Everything is forward+backward in train mode (``out.sum().backward()``, parameter and input gradients), anchor
and ours in the same process with the same weights. On a shared machine the two are timed in alternating rounds
and each keeps its best round's median, so background load hits both alike.

1. Halo attention at the four stage shapes of timm's ``halonet26t`` at 256x256 input (block 8, halo 2, 8 heads,
   the bottleneck width ``c / 4`` of each stage; stage 4's first layer is the strided one), plus one map that is
   not a multiple of the block size, which only ours accepts. Ours runs the ``attnzoo::halo_attention`` op
   (PyTorch path on CPU, Triton on CUDA).
2. NiNformer block (``attnzoo.layers.NiNBlock``) vs timm's ``vision_transformer.Block`` at equal width and FFN
   size, at the authors' CIFAR shape (64 tokens, d=256, FFN 512) and a ViT-S/16-like one (196 tokens, d=384).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from _harness import peak_memory_mb, threads_from_env, time_ms, write_result  # noqa: E402

# (label, bottleneck channels, input side, stride) of halo layers in halonet26t at 256 px
HALO_SHAPES = [("stage 1", 64, 64, 1), ("stage 2", 128, 32, 1), ("stage 3", 256, 16, 1), ("stage 4, s2", 512, 16, 2),
               ("stage 4", 512, 8, 1)]
HALO_ODD = ("stage 3, 20x20", 256, 20, 1)
QUICK_HALO_SHAPES = [("stage 3", 64, 16, 1), ("stage 4, s2", 128, 16, 2)]
# (label, tokens, dim, FFN hidden, heads of the ViT block)
NIN_SHAPES = [("CIFAR (authors')", 64, 256, 512, 8), ("ViT-S/16-like", 196, 384, 1536, 6)]
QUICK_NIN_SHAPES = [("tiny", 16, 64, 128, 4)]


def fwd_bwd(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x).sum().backward()

    return run


Case = tuple[dict, dict[str, Callable[[], None]]]  # (row start, {name: fwd+bwd step})


def measure(cases: list[Case], device: str, rounds: int) -> list[tuple[dict, dict[str, float], dict[str, float]]]:
    """Peak MiB that one step adds (after a warm-up step, see ``peak_memory_mb``) and the median ms of each step,
    best of ``rounds`` rounds in which the steps alternate."""
    results = []
    for row, fns in cases:
        mem = {name: peak_memory_mb(fn, device) for name, fn in fns.items()}
        ms = {name: float("inf") for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                ms[name] = min(ms[name], time_ms(fn, device))
        results.append((row, ms, mem))
        print(row["input"], ms, mem, flush=True)
    return results


def halo_rows(shapes: list[tuple[str, int, int, int]], batch: int, device: str, rounds: int) -> list[dict]:
    from timm.layers.halo_attn import HaloAttn

    from attnzoo.layers.halo import HaloAttention

    cases = []
    for label, chs, side, stride in [*shapes, HALO_ODD]:
        torch.manual_seed(0)
        kwargs = dict(dim=chs, stride=stride, num_heads=8, block_size=8, halo_size=2, device=device)
        timm_layer = HaloAttn(**kwargs)
        ours = HaloAttention(**kwargs)
        ours.load_state_dict(timm_layer.state_dict())
        x = torch.randn(batch, chs, side, side, device=device, requires_grad=True)
        fns = {"ours": fwd_bwd(ours, x)}
        if side % 8 == 0:
            fns["timm"] = fwd_bwd(timm_layer, x)
        cases.append(({"layer": label, "input": f"{batch}x{chs}x{side}x{side}", "stride": stride}, fns))
    rows = []
    for row, ms, mem in measure(cases, device, rounds):
        on_timm = "timm" in ms
        row.update({"timm ms": ms.get("timm", "asserts"), "ours ms": ms["ours"],
                    "ours/timm time": ms["ours"] / ms["timm"] if on_timm else "-",
                    "timm MiB": mem.get("timm", "-"), "ours MiB": mem["ours"],
                    "ours/timm mem": mem["ours"] / mem["timm"] if on_timm and mem["timm"] > 0 else "-"})
        rows.append(row)
    return rows


def nin_rows(shapes: list[tuple[str, int, int, int, int]], batch: int, device: str, rounds: int) -> list[dict]:
    from timm.models.vision_transformer import Block

    from attnzoo.layers.ninformer import NiNBlock

    cases = []
    for label, tokens, dim, ffn, heads in shapes:
        torch.manual_seed(0)
        vit = Block(dim, heads, mlp_ratio=ffn / dim, qkv_bias=True, device=device)
        nin = NiNBlock(dim, tokens, d_ffn=ffn, device=device)
        x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)
        row = {"shape": label, "input": f"{batch}x{tokens}x{dim}", "FFN": ffn,
               "ViT params": sum(p.numel() for p in vit.parameters()),
               "NiN params": sum(p.numel() for p in nin.parameters())}
        cases.append((row, {"vit": fwd_bwd(vit, x), "nin": fwd_bwd(nin, x)}))
    rows = []
    for row, ms, mem in measure(cases, device, rounds):
        row.update({"ViT ms": ms["vit"], "NiN ms": ms["nin"], "NiN/ViT time": ms["nin"] / ms["vit"],
                    "ViT MiB": mem["vit"], "NiN MiB": mem["nin"],
                    "NiN/ViT mem": mem["nin"] / mem["vit"] if mem["vit"] > 0 else "-"})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="batch of the halo rows (NiN rows use 8x this)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("BENCH_THREADS", "1")  # 2 OpenMP threads on a loaded 2-core machine mostly spin
    threads_from_env()
    halo_shapes = QUICK_HALO_SHAPES if args.quick else HALO_SHAPES
    nin_shapes = QUICK_NIN_SHAPES if args.quick else NIN_SHAPES
    sections = [
        ("HaloAttention vs timm HaloAttn (fwd+bwd, halonet26t stage shapes, block 8, halo 2, 8 heads)",
         halo_rows(halo_shapes, args.batch, args.device, args.rounds)),
        ("NiNBlock vs timm ViT Block (fwd+bwd, equal width and FFN)",
         nin_rows(nin_shapes, 8 * args.batch, args.device, args.rounds)),
    ]
    where = (f"a shared 2-core machine with {torch.get_num_threads()} intra-op thread(s) (other jobs were running: "
             "treat ratios, not absolute times, as the result)" if args.device == "cpu" else args.device)
    notes = (f"Measured on {where}. Times: median of 5 runs after 2 warm-ups, best of {args.rounds} alternating "
             "rounds. Memory: peak added by one fwd+bwd step after a warm-up step (CPU: high-water RSS, reset "
             "through /proc/self/clear_refs after malloc_trim, over the RSS before the step, in-process; CUDA: "
             "max_memory_allocated). 'asserts': timm's HaloAttn requires sides divisible by the block size; "
             "ours pads the 20x20 map to 24x24 and crops.")
    suffix = "" if args.device == "cpu" else f"_{torch.device(args.device).type}"
    write_result(f"halo_ninformer{suffix}{'_quick' if args.quick else ''}",
                 "HaloAttention and NiNformer block vs timm", sections, notes)


if __name__ == "__main__":
    main()
