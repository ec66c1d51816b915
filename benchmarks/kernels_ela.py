"""ELA gate (``attnzoo::ela_gate``): Triton kernels vs the eager and the compiled PyTorch reference.

    python benchmarks/kernels_ela.py --device cuda           # H100: correctness (fp32, bf16) + timing table
    TRITON_INTERPRET=1 python benchmarks/kernels_ela.py --device cpu --tiny   # smoke run of the same code path

:func:`gpu_check` first checks correctness at a realistic shape: fp32 against the 'torch' backend, and bf16 with
flash-attention's rule (max |triton_bf16 - ref_fp32| <= 2 * max |torch_bf16 - ref_fp32| + 1e-5, for the output and
every gradient). It then times forward and forward+backward at ResNet-50 stage shapes with the ELA-S settings that
``ela_resnet50`` uses (k=5, conv groups C/8, GroupNorm 16), in bf16, for the eager reference, the reference under
``torch.compile`` and the Triton kernels. ELA is memory-bound, so speed is reported as GB/s of the minimal traffic:
forward 3 passes over the feature map (read x for the strip means, read x and write y for the gated product);
forward+backward 7 (backward: read grad_out and x for the gate gradients, read grad_out and write grad_x). The
kernels' backward moves one pass more (it re-reads x for the strip means, since the op saves only its inputs),
so their ceiling is 7/8 of the roofline for fwd+bwd. Fractions are of the H100 SXM's 3.35 TB/s. At the small
late-stage shapes the tensors fit in the 50 MB L2, so those numbers can exceed what HBM alone would allow.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _harness import kernel_backend, kernel_bench_cli, time_ms  # noqa: E402

from attnzoo.kernels.ela import ela_gate, ela_gate_reference  # noqa: E402

HBM_GBPS = 3350.0
FWD_PASSES, FWD_BWD_PASSES = 3, 7
# (batch, channels, side): ResNet-50's four stages at 224x224 input
STAGES = [(64, 256, 56), (64, 512, 28), (64, 1024, 14), (64, 2048, 7)]
TINY_STAGES = [(1, 16, 5), (2, 16, 3)]
NAMES = ("out", "grad_x", "grad_weight", "grad_norm_weight", "grad_norm_bias")


def ela_s_config(channels: int) -> tuple[int, int, int]:
    """(kernel_size, conv groups, GroupNorm groups) of ELA-S, the ``ela_resnet50`` default."""
    return 5, channels // 8, 16


def make_inputs(batch: int, channels: int, side: int, dtype: torch.dtype, device: str,
                seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, int, int]:
    """Random (x, weight, norm_weight, norm_bias), grad_out, groups, norm_groups; generated in fp32, then cast."""
    k, groups, norm_groups = ela_s_config(channels)
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, channels, side, side)
    x = torch.randn(shape, generator=g, device=device) + 0.25
    weight = torch.randn(channels, channels // groups, k, generator=g, device=device) * (channels // groups * k) ** -0.5
    gamma = 1 + 0.2 * torch.randn(channels, generator=g, device=device)
    beta = 0.2 * torch.randn(channels, generator=g, device=device)
    grad_out = torch.randn(shape, generator=g, device=device)
    return [t.to(dtype) for t in (x, weight, gamma, beta)], grad_out.to(dtype), groups, norm_groups


def _leaves(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    return [t.detach().to(dtype or t.dtype).requires_grad_() for t in tensors]


def outputs_and_grads(fn: Callable, tensors: list[torch.Tensor], grad_out: torch.Tensor,
                      dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """[out, grad_x, grad_weight, grad_norm_weight, grad_norm_bias] of ``fn`` on copies of ``tensors`` in ``dtype``."""
    leaves = _leaves(tensors, dtype)
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, grad_out.to(out.dtype))]


def check_correctness(device: str, backend: str, low: torch.dtype, shape: tuple[int, int, int]) -> list[dict]:
    """fp32 parity with the 'torch' backend, then the flash-attention rule in ``low`` precision."""
    # cuDNN runs fp32 convolutions in TF32 by default, which would make the fp32 reference the less exact side
    torch.backends.cudnn.allow_tf32 = False
    tensors, grad_out, groups, norm_groups = make_inputs(*shape, torch.float32, device, seed=1)

    def op(name: str) -> Callable:
        return lambda *t: ela_gate(*t, groups, norm_groups, backend=name)

    ref = outputs_and_grads(op("torch"), tensors, grad_out)
    ours = outputs_and_grads(op(backend), tensors, grad_out)
    ours_low = outputs_and_grads(op(backend), tensors, grad_out, low)
    torch_low = outputs_and_grads(op("torch"), tensors, grad_out, low)
    rows = []
    for i, name in enumerate(NAMES):
        scale = ref[i].abs().max().item()
        fp32_err = (ours[i] - ref[i]).abs().max().item()
        ours_err = (ours_low[i].float() - ref[i]).abs().max().item()
        torch_err = (torch_low[i].float() - ref[i]).abs().max().item()
        ok = fp32_err <= 1e-4 * max(scale, 1.0) and ours_err <= 2 * torch_err + 1e-5
        rows.append({"tensor": name, "max |ref|": scale, "fp32 max err": fp32_err, f"ours {low} err": ours_err,
                     f"torch {low} err": torch_err, "pass": "yes" if ok else "NO"})
    return rows


def _bench(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return time_ms(fn, device, warmup=1, repeat=1)  # CPU runs are smoke tests (the interpreter is slow)


def _bench_graph(fn: Callable[[], object]) -> float:
    """CUDA-graph replay time: device time without the host's launch overhead (NaN if capture fails)."""
    import triton

    try:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    except RuntimeError as err:
        print(f"CUDA graph capture failed: {err}", flush=True)
        return float("nan")


def _time_fwd_and_fwd_bwd(fn: Callable, leaves: list[torch.Tensor], grad_out: torch.Tensor,
                          device: str) -> tuple[float, ...]:
    """(fwd ms, fwd+bwd ms) and on CUDA also the fwd+bwd CUDA-graph replay ms."""
    with torch.no_grad():
        fwd = _bench(lambda: fn(*leaves), device)

    def fwd_bwd() -> None:
        torch.autograd.grad(fn(*leaves), leaves, grad_out)

    return (fwd, _bench(fwd_bwd, device)) + ((_bench_graph(fwd_bwd),) if device == "cuda" else ())


def _ops(backend: str, groups: int, norm_groups: int, compiled: Callable, compile_backend: str) -> dict[str, Callable]:
    return {"eager (torch)": lambda *t: ela_gate(*t, groups, norm_groups, backend="torch"),
            f"torch.compile ({compile_backend})": lambda *t: compiled(*t, groups, norm_groups),
            f"ours ({backend})": lambda *t: ela_gate(*t, groups, norm_groups, backend=backend)}


def time_stages(device: str, backend: str, dtype: torch.dtype, stages: list[tuple[int, int, int]],
                compile_backend: str) -> list[dict]:
    """Forward and forward+backward ms of eager / compiled reference / ours at each stage shape."""
    compiled = torch.compile(ela_gate_reference, dynamic=False, backend=compile_backend)
    rows = []
    for batch, channels, side in stages:
        tensors, grad_out, groups, norm_groups = make_inputs(batch, channels, side, dtype, device)
        leaves = _leaves(tensors)
        times = {name: _time_fwd_and_fwd_bwd(fn, leaves, grad_out, device)
                 for name, fn in _ops(backend, groups, norm_groups, compiled, compile_backend).items()}
        nbytes = grad_out.numel() * grad_out.element_size()
        eager = times["eager (torch)"]
        for name, (fwd, fwd_bwd, *graph) in times.items():
            fwd_gbps = FWD_PASSES * nbytes / fwd / 1e6
            fwd_bwd_gbps = FWD_BWD_PASSES * nbytes / fwd_bwd / 1e6
            row = {"shape (B, C, H=W)": f"({batch}, {channels}, {side})", "impl": name, "fwd ms": fwd,
                   "fwd GB/s": fwd_gbps, "fwd % roof": 100 * fwd_gbps / HBM_GBPS, "fwd+bwd ms": fwd_bwd,
                   "fwd+bwd GB/s": fwd_bwd_gbps, "fwd+bwd % roof": 100 * fwd_bwd_gbps / HBM_GBPS}
            if graph:
                row["fwd+bwd ms, CUDA graph"] = graph[0]
                row["graph % roof"] = 100 * FWD_BWD_PASSES * nbytes / graph[0] / 1e6 / HBM_GBPS
            row["speed-up vs eager (fwd / fwd+bwd)"] = f"{eager[0] / fwd:.2f}x / {eager[1] / fwd_bwd:.2f}x"
            rows.append(row)
        print(*(f"{r['shape (B, C, H=W)']} {r['impl']}: fwd {r['fwd ms']:.4f} ms ({r['fwd % roof']:.0f}%), "
                f"fwd+bwd {r['fwd+bwd ms']:.4f} ms ({r['fwd+bwd % roof']:.0f}%)" for r in rows[-len(times):]),
              sep="\n", flush=True)
    return rows


def kernel_breakdown(device: str, backend: str, dtype: torch.dtype, shape: tuple[int, int, int],
                     iters: int) -> list[dict]:
    """Per-kernel time of one fwd+bwd of ours (torch.profiler), to see which step is off the roofline."""
    from torch.profiler import ProfilerActivity, profile

    tensors, grad_out, groups, norm_groups = make_inputs(*shape, dtype, device)
    leaves = _leaves(tensors)

    def step() -> None:
        torch.autograd.grad(ela_gate(*leaves, groups, norm_groups, backend=backend), leaves, grad_out)

    step()
    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", 0.0) if cuda else event.self_cpu_time_total
        if total > 0 and event.count >= iters:
            rows.append({"shape": str(shape), "kernel": event.key[:60], "calls/iter": event.count // iters,
                         "us/iter": total / iters})
    return sorted(rows, key=lambda r: -r["us/iter"])[:12]


def gpu_check(device: str = "cuda", tiny: bool = False) -> list[tuple[str, list[dict]]]:
    """Sections (heading, rows) for benchmarks/kernels.py: correctness, timing, per-kernel time (see the module doc).

    The compiled anchor uses inductor on CUDA; CPU runs are dry runs, so there it uses 'aot_eager' (no C++ build).
    """
    backend = kernel_backend(device)
    stages = TINY_STAGES if tiny else STAGES
    check_shape = (1, 16, 6) if tiny else (8, 256, 56)
    correctness = check_correctness(device, backend, torch.bfloat16, check_shape)
    print(correctness, flush=True)
    compile_backend = "inductor" if device == "cuda" else "aot_eager"
    timing = time_stages(device, backend, torch.bfloat16, stages, compile_backend)
    iters = 10 if device == "cuda" else 1
    breakdown = [row for shape in (stages[0], stages[-1])
                 for row in kernel_breakdown(device, backend, torch.bfloat16, shape, iters)]
    return [(f"Correctness at (B, C, H=W) = {check_shape}, ELA-S", correctness),
            ("Timing, bf16, ELA-S (k=5, groups=C/8, GN 16)", timing),
            ("Per-kernel time of ours, one fwd+bwd", breakdown)]


def main() -> None:
    kernel_bench_cli("kernels_ela", "ELA gate: Triton kernels vs eager and compiled PyTorch", gpu_check,
                     "Minimal traffic: fwd 3 passes over the (B, C, H, W) tensor, fwd+bwd 7; roofline 3.35 TB/s "
                     "(H100 SXM). The Triton backward re-reads x once more for the strip means (the op saves only its "
                     "inputs).")


if __name__ == "__main__":
    main()
