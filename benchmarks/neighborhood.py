"""neighborhood_attention vs SDPA with a dense NA mask and vs FlexAttention, at NAT-Tiny's stage shapes.

    python benchmarks/neighborhood.py                      # CPU, writes benchmarks/results/neighborhood_cpu.md
    python benchmarks/neighborhood.py --device cuda        # GPU rows (benchmarks/gpu_check.sh runs this)
    python benchmarks/neighborhood.py --tiny               # a dry run of the code path (seconds)

Shapes: NAT-Tiny at 224 px, batch 1, the attention of one layer per stage: 56x56 x 2 heads, 28x28 x 4, 14x14 x 8,
7x7 x 16, head dim 32, kernel 7, every dilation of 1, 2, 4, 8 that fits (7 * d <= side), no positional bias (the
three implementations compute the same function; the outputs are compared).

Implementations, all on the same q, k, v in the same process:

* ours: ``attnzoo.kernels.neighborhood_attention`` ('torch' backend: the blocked path, O(N * k^2) memory);
* SDPA: ``torch.nn.functional.scaled_dot_product_attention`` with the boolean N x N NA mask (built once from
  ``neighborhood_windows``, outside the timed region): the dense masked attention a user would write;
* Flex: ``torch.nn.attention.flex_attention`` compiled, with the op's cached NATTEN block mask (the op's 'flex'
  backend). On CPU FlexAttention has no backward, so Flex is timed forward only and compared with ours forward.

Time: median of ``--repeat`` runs after one warm-up (forward + backward unless stated). Memory: the peak that one
forward + backward adds (CPU: high-water RSS, see ``_harness.peak_memory_mb``; CUDA: max_memory_allocated).
``bytes / (N k^2 h)`` divides our peak by the number of attention weights, to show memory growing as N * k^2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _harness import device_slug, peak_memory_mb, threads_from_env, time_ms, write_result  # noqa: E402

from attnzoo.kernels.neighborhood import neighborhood_attention, neighborhood_windows  # noqa: E402

KERNEL = 7
HEAD_DIM = 32
# (stage, side, heads) of NAT-Tiny at 224 px
STAGES = [("stage 1", 56, 2), ("stage 2", 28, 4), ("stage 3", 14, 8), ("stage 4", 7, 16)]
DILATIONS = (1, 2, 4, 8)
TINY_STAGES = [("tiny", 14, 2)]


def dense_mask(side: int, kernel: int, dilation: int, device: str) -> torch.Tensor:
    """(N, N) boolean NA mask of a side x side map: the AND of the two axes' windows (NATTEN's semantics)."""
    start, end, group, _ = neighborhood_windows(side, kernel, dilation, device=device)
    pos = torch.arange(side, device=device)
    key_group, key_gpos = pos % dilation, pos // dilation
    axis = (key_group[None] == group[:, None]) & (key_gpos[None] >= start[:, None]) & (key_gpos[None] < end[:, None])
    return (axis[:, None, :, None] & axis[None, :, None, :]).reshape(side * side, side * side)  # (N, N)


def inputs(side: int, heads: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(1, side, side, heads, HEAD_DIM, generator=gen, device=device, dtype=dtype) for _ in range(3)]


def ours(q, k, v, dilation: int, backend: str = "torch") -> torch.Tensor:
    return neighborhood_attention(q, k, v, KERNEL, dilation, backend=backend)  # (1, H, W, h, D)


def sdpa(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    b, h, w, heads, d = q.shape
    qf, kf, vf = (t.reshape(b, h * w, heads, d).transpose(1, 2) for t in (q, k, v))  # (1, h, N, D)
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, h, w, heads, d)


def fwd_bwd(fn: Callable, tensors: list[torch.Tensor]) -> None:
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = fn(*leaves)
    torch.autograd.grad(out, leaves, out.detach())


def fwd(fn: Callable, tensors: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return fn(*tensors)


def rows_for(stage: str, side: int, heads: int, dilation: int, device: str, dtype: torch.dtype, repeat: int,
             flex: bool) -> list[dict]:
    tensors = inputs(side, heads, device, dtype)
    mask = dense_mask(side, KERNEL, dilation, device)
    impls = {"ours": lambda q, k, v: ours(q, k, v, dilation), "SDPA dense mask": lambda q, k, v: sdpa(q, k, v, mask)}
    if flex:
        impls["Flex"] = lambda q, k, v: ours(q, k, v, dilation, backend="flex")
    reference = fwd(impls["ours"], [t.double() for t in tensors])
    cuda_backward = torch.device(device).type == "cuda"
    timings, rows = {}, []
    for label, fn in impls.items():
        err = (fwd(fn, tensors).double() - reference).abs().max().item()
        forward_ms = time_ms(lambda fn=fn: fwd(fn, tensors), device, warmup=1, repeat=repeat)
        with_backward = label != "Flex" or cuda_backward
        both_ms = time_ms(lambda fn=fn: fwd_bwd(fn, tensors), device, warmup=1, repeat=repeat) \
            if with_backward else float("nan")
        peak = peak_memory_mb(lambda fn=fn: fwd_bwd(fn, tensors), device) if with_backward else float("nan")
        timings[label] = (forward_ms, both_ms, peak)
        rows.append({"stage": f"{stage} {side}x{side}", "dilation": dilation, "impl": label, "fwd ms": forward_ms,
                     "fwd+bwd ms": both_ms, "peak MiB (fwd+bwd)": peak, "max err vs fp64": err})
    ours_fwd, ours_both, ours_peak = timings["ours"]
    for row in rows:
        fwd_ms, both_ms, peak = timings[row["impl"]]
        row["ours / this (fwd+bwd)"] = _ratio(ours_both, both_ms)
        row["ours / this (fwd)"] = _ratio(ours_fwd, fwd_ms)
        row["ours / this (peak)"] = _ratio(ours_peak, peak)
    rows[0]["bytes / (N k^2 h)"] = ours_peak * 2**20 / (side * side * KERNEL ** 2 * heads)
    for row in rows[1:]:
        row["bytes / (N k^2 h)"] = "-"
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--tiny", action="store_true", help="one small shape, one run: a dry run of the code path")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (it compiles once per shape)")
    args = parser.parse_args()
    threads_from_env()
    dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
    rows = []
    for stage, side, heads in TINY_STAGES if args.tiny else STAGES:
        for dilation in DILATIONS:
            if KERNEL * dilation <= side:
                rows += rows_for(stage, side, heads, dilation, args.device, dtype, 1 if args.tiny else args.repeat,
                                 not args.no_flex)
    notes = (f"{'bf16' if dtype == torch.bfloat16 else 'fp32'}, batch 1, kernel {KERNEL}, head dim {HEAD_DIM}, "
             f"median of {1 if args.tiny else args.repeat} runs after one warm-up. 'ours / this' < 1 means ours is "
             "faster (or smaller). Goals (issue 15): ours <= 0.5x SDPA's dense masked time at 56x56, <= 1.0x Flex, "
             "memory growing as N * k^2 (a constant 'bytes / (N k^2 h)').")
    if torch.device(args.device).type == "cpu":
        notes += (" Flex has no CPU backward: its rows compare forward times only. On a CPU shared with other jobs a"
                  " single time may be off by 2-3x; the three implementations of one shape run back to back.")
    name = f"neighborhood_{device_slug(args.device)}" + ("_tiny" if args.tiny else "")
    write_result(name, "Neighborhood attention: ours vs dense masked SDPA vs FlexAttention (NAT-Tiny stages)",
                 [("forward + backward, time and peak memory", rows)], notes)


if __name__ == "__main__":
    main()
