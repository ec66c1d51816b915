"""DFA3D: time and peak memory of the naive reference (depth-expanded volume + 3-D grid_sample) vs the efficient
path (per-corner depth score + weighted bilinear gather), at BEVFormer-like shapes.

The naive path is the anchor: it builds the (h, w, D, C) volume of every level (the paper's definition). The
efficient path is :func:`attnzoo.kernels.dfa3d.deform_attn_3d_efficient` (forward) and the public op with the
'torch' backend (forward + backward through its chunked VJP); with ``--device cuda`` the op's Triton backend is
timed too. Goal from issue 6: the efficient path needs at most 1/10 of the naive path's memory.

    python benchmarks/dfa3d.py                                # CPU, BEVFormer-small-like shapes
    python benchmarks/dfa3d.py --device cuda --preset unit    # the authors' unit-test shapes (naive: ~21 GB)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import peak_memory_mb, threads_from_env, time_ms, write_result  # noqa: E402

from attnzoo.kernels.dfa3d import deform_attn_3d, deform_attn_3d_efficient, deform_attn_3d_naive  # noqa: E402

# name -> (views folded into the batch, levels (h, w), heads, head_dim, depth bins, queries per view, points)
PRESETS = {
    # BEVFormer-small-like: 6 cameras, one stride-32 level of a 0.8-scale nuScenes frame (736 x 1280 -> 23 x 40),
    # 8 heads x 32 = 256 channels, d_bound (2, 58, 0.5) -> 112 bins, 8 points, 2,500 (visible) queries per view
    "small": (6, [(23, 40)], 8, 32, 112, 2500, 8),
    # the authors' unittest_DFA3D.py shapes (BEVFormer-base: 4 levels of a 928 x 1600 frame, 9,502 queries)
    "unit": (6, [(116, 200), (58, 100), (29, 50), (15, 25)], 8, 32, 112, 9502, 8),
    "tiny": (2, [(8, 12), (4, 6)], 2, 8, 16, 64, 4),
}


def make_inputs(preset: str, device: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    bs, levels, nh, channels, num_bins, nq, num_points = PRESETS[preset]
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = torch.tensor(levels, device=device)
    sizes = shapes.prod(1)
    num_keys = int(sizes.sum())
    value = torch.randn(bs, num_keys, nh, channels, generator=gen, device=device, dtype=dtype)
    depth = torch.randn(bs, num_keys, num_bins, generator=gen, device=device, dtype=dtype).softmax(-1)
    locations = torch.rand(bs, nq, nh, len(levels), num_points, 3, generator=gen, device=device, dtype=dtype)
    weights = torch.rand(bs, nq, nh, len(levels), num_points, generator=gen, device=device, dtype=dtype)
    return value, depth, shapes, torch.cumsum(sizes, 0) - sizes, locations, weights


PATHS = {
    "naive": ("naive (volume + 3-D grid_sample)", deform_attn_3d_naive),
    "torch": ("efficient (depth score + gather), torch", lambda *a: deform_attn_3d(*a, backend="torch")),
    "triton": ("efficient, triton kernel", lambda *a: deform_attn_3d(*a, backend="triton")),
}
MODES = ("forward", "forward + backward")


def runner(path: str, mode: str, inputs: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    fn = PATHS[path][1]

    def forward() -> None:
        with torch.no_grad():
            fn(*inputs)

    def forward_backward() -> None:
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))

    return forward if mode == MODES[0] else forward_backward


def measure(path: str, mode: str, inputs: tuple[torch.Tensor, ...], args: argparse.Namespace) -> dict:
    """Median time and peak memory of one path; one that runs out of device memory is reported as such."""
    run = runner(path, mode, inputs)
    try:
        return {"time (ms)": time_ms(run, args.device, warmup=1, repeat=args.repeat),
                "peak memory (MiB)": peak_memory_mb(run, args.device)}
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"time (ms)": "out of memory", "peak memory (MiB)": "out of memory"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    threads_from_env()
    inputs = make_inputs(args.preset, args.device)
    paths = ["naive", "torch"] + (["triton"] if args.device.startswith("cuda") else [])
    try:
        with torch.no_grad():
            max_diff = f"{float((deform_attn_3d_naive(*inputs) - deform_attn_3d_efficient(*inputs)).abs().max()):.2e}"
    except torch.OutOfMemoryError:
        max_diff = "not measured (the naive path ran out of memory)"
    sections = []
    for mode in MODES:
        rows = [{"path": PATHS[path][0], **measure(path, mode, inputs, args)} for path in paths]
        anchor = rows[0]
        for row in rows:
            for key, ratio in (("time (ms)", "time vs naive"), ("peak memory (MiB)", "memory vs naive")):
                both = isinstance(row[key], float) and isinstance(anchor[key], float)
                row[ratio] = row[key] / anchor[key] if both else "-"
        sections.append((mode, rows))
    bs, levels, nh, channels, num_bins, nq, num_points = PRESETS[args.preset]
    volume_mib = bs * nh * channels * num_bins * sum(h * w for h, w in levels) * 4 / 2**20
    notes = (f"Preset `{args.preset}`: {bs} views folded into the batch, levels {levels}, {nh} heads x {channels} "
             f"channels, {num_bins} depth bins, {nq} queries per view, {num_points} points per head and level, fp32. "
             f"Largest single tensor of the naive path, the depth-expanded volume: {volume_mib:.0f} MiB. "
             f"Max |naive - efficient| on these inputs: {max_diff}. Peak memory is what one call adds after a warm-up "
             "call (CPU: VmHWM, reset through /proc/self/clear_refs after malloc_trim, over the RSS before the call, "
             "in-process; CUDA: max_memory_allocated). "
             + (f"Measured on a shared 2-core machine (other jobs running) with {torch.get_num_threads()} thread(s): "
                "times are indicative only." if args.device == "cpu" else ""))
    write_result(f"dfa3d_{args.device.split(':')[0]}" + ("" if args.preset == "small" else f"_{args.preset}"),
                 "DFA3D: naive volume vs efficient depth-score path", sections, notes)


if __name__ == "__main__":
    main()
