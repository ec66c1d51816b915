"""The wave-2 ViT attention layers vs timm's Attention (SDPA), forward+backward, side by side in one process.

    python benchmarks/vit_attention.py            # CPU table -> benchmarks/results/vit_attention_cpu.md
    python benchmarks/vit_attention.py --quick    # small shapes, to check that the script runs

Shapes: ViT-S (197 tokens, 384 wide, 6 heads) at batch 8, and 1,024 and 4,096 tokens at batch 1 (384 wide, 6
heads), where Flowformer's linear cost should show. Every layer is built at the same width and head count
(timm's ``Attention(qkv_bias=True)`` is the anchor); each step is ``layer(x).sum().backward()`` in train mode.
The layers and timm run in alternating rounds and each keeps its best round's median, so background load on the
shared machine hits all alike. MACs are the layer's forward multiply-accumulates: Linear layers plus the
attention products (``attnzoo.zoo.vit_attention.ATTENTION_MAC_HOOKS``).

Layers: MoH at the authors' MoH-DiT-S/2-90 early-block split (3 shared + top-2 of 3 routed; every head is still
computed, as in the authors' code), gated attention with the elementwise and the headwise G1 gate, Flow-Attention,
and the minimal transformer's symmetric attention (6 heads) and its single-head collapsed W^QK without W^V/W^O.
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

# (label, batch, tokens, dim, heads)
SHAPES = [("ViT-S/16 (224 px)", 8, 197, 384, 6), ("1,024 tokens", 1, 1024, 384, 6), ("4,096 tokens", 1, 4096, 384, 6)]
QUICK_SHAPES = [("tiny", 2, 65, 64, 4), ("tiny, 256 tokens", 1, 256, 64, 4)]


def layers(dim: int, heads: int, device: str) -> dict[str, nn.Module]:
    from timm.layers import Attention

    from attnzoo.layers import FlowAttention, GatedAttention, MinimalAttention, MoHAttention

    shared = heads // 2
    built = {
        "timm Attention": Attention(dim, heads, qkv_bias=True),
        "MoH (h_s=3, top-2 of 3)" if heads == 6 else "MoH": MoHAttention(dim, heads, shared, heads - shared - 1,
                                                                          qkv_bias=True),
        "gated (elementwise)": GatedAttention(dim, heads, qkv_bias=True),
        "gated (headwise)": GatedAttention(dim, heads, gate="headwise", qkv_bias=True),
        "Flow-Attention": FlowAttention(dim, heads, qkv_bias=True),
        "minimal (symmetric)": MinimalAttention(dim, heads, qk="symmetric"),
        "minimal (1 head, W^QK, no W^V/W^O)": MinimalAttention(dim, 1, qk="collapsed", vo="none"),
    }
    return {name: layer.to(device).train() for name, layer in built.items()}


def fwd_bwd(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    return run


def rows_for(shape: tuple[str, int, int, int, int], device: str, rounds: int) -> list[dict]:
    from attnzoo.profiling import count_macs
    from attnzoo.zoo.vit_attention import ATTENTION_MAC_HOOKS

    label, batch, tokens, dim, heads = shape
    torch.manual_seed(0)
    built = layers(dim, heads, device)
    x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)
    steps = {name: fwd_bwd(layer, x) for name, layer in built.items()}
    repeat = 3 if tokens >= 2048 else 5
    mem = {name: peak_memory_mb(step, device) for name, step in steps.items()}
    ms = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            ms[name] = min(ms[name], time_ms(step, device, warmup=1, repeat=repeat))
    print(label, {k: round(v, 2) for k, v in ms.items()}, flush=True)
    anchor = "timm Attention"
    rows = []
    for name, layer in built.items():
        macs = count_macs(layer, x.detach(), custom_hooks=ATTENTION_MAC_HOOKS)
        rows.append({"shape": label, "input": f"{batch}x{tokens}x{dim}, {heads} heads", "layer": name,
                     "params": sum(p.numel() for p in layer.parameters()), "fwd GMACs": macs / 1e9,
                     "fwd+bwd ms": ms[name], "time / timm": ms[name] / ms[anchor], "peak MiB": mem[name],
                     "mem / timm": mem[name] / mem[anchor] if mem[anchor] > 0 else "-"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("BENCH_THREADS", "1")  # 2 OpenMP threads on a loaded 2-core machine mostly spin
    threads_from_env()
    sections = [(f"{shape[0]}: forward+backward vs timm Attention (SDPA)", rows_for(shape, args.device, args.rounds))
                for shape in (QUICK_SHAPES if args.quick else SHAPES)]
    where = (f"a shared 2-core machine with {torch.get_num_threads()} intra-op thread(s) (other jobs were running: "
             "treat ratios, not absolute times, as the result)" if args.device == "cpu" else args.device)
    notes = (f"Measured on {where}. Times: median of 5 runs (3 at 4,096 tokens) after a warm-up, best of "
             f"{args.rounds} alternating rounds. Memory: peak added by one fwd+bwd step after a warm-up step "
             "(CPU: high-water RSS over the RSS before the step, in-process; CUDA: max_memory_allocated). "
             "timm's Attention and the SDPA-based layers use PyTorch's fused CPU attention kernel, which never "
             "stores the N x N weights; Flow-Attention is plain PyTorch (no custom kernel).")
    suffix = "cpu" if args.device == "cpu" else torch.device(args.device).type
    write_result(f"vit_attention_{suffix}{'_quick' if args.quick else ''}",
                 "Wave-2 ViT attention layers vs timm Attention", sections, notes)


if __name__ == "__main__":
    main()
