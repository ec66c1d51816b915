"""Top-m attention and k-NN Triton kernels: correctness in fp32/bf16, then speed against the PyTorch path and PyG.

    python benchmarks/kernels_topm.py --device cuda                          # H100/H200: the real tables
    TRITON_INTERPRET=1 python benchmarks/kernels_topm.py --device cpu --tiny  # dry run of every code path

Correctness (flash-attention's rule, max-abs): ``topm_attention`` at 200k queries, 4 heads of 16, m=16, with
'aux'-mode candidates (one shared set per graph, 3 graphs) and with independent random candidates (about 10% empty
slots); the Triton output and every gradient in fp32 against the fp64 reference and in bf16 against the fp32
reference, each compared with the PyTorch path run in the same precision. ``topm_knn`` at 20k vertices (2 graphs,
64 features): the error is the regret of the chosen candidates, max |exact score of the r-th choice - r-th best
exact score| over all queries and ranks (a near-tie picked in the other order costs only its score gap), plus the
share of index rows identical to the exact search.

Speed (bf16, forward + backward, median of ``triton.testing.do_bench``):

* the op on a 1M-vertex candidate set, Triton vs the PyTorch path, with GB/s of compulsory traffic (q, k, v and
  the index read in the forward and again in the backward, the output written, grad_out read, the three gradients
  written; candidate gathers that miss the cache are not counted) against the H100's 3.35 TB/s;
* one layer on the same random graph of 1M vertices with 10 random in-edges each (``random_graph``, as
  benchmarks/graph_topm.py), 64 channels in and out, 4 heads, training mode, ``out.sum().backward()``:
  TopMAttentionConv ('aux' mode, m=16, Triton and PyTorch backends) vs PyG GATConv and TransformerConv at the same
  width and heads; target: ours >= 2x TransformerConv;
* ``topm_knn`` alone at 100k and 1M vertices (64 features, m=16, one graph): O(N²·F) by definition; TFLOP/s counts
  2·N²·F against 989 TFLOP/s bf16 dense. The PyTorch path is timed at 100k only (it would take minutes at 1M).

Without CUDA (and without TRITON_INTERPRET=1) "ours" falls back to the torch backend so that the script still runs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _harness import kernel_backend, kernel_bench_cli, peak_memory_mb, time_ms  # noqa: E402
from torch_geometric.nn import GATConv, TransformerConv  # noqa: E402

from attnzoo.data.graphs import random_graph  # noqa: E402
from attnzoo.kernels.topm import (  # noqa: E402
    sample_neighbor_mask,
    score_candidates,
    topm_attention,
    topm_knn,
    topm_knn_reference,
)
from attnzoo.layers.topm import TopMAttentionConv  # noqa: E402

PEAK_TFLOPS = 989.0
PEAK_GBPS = 3350.0
CHANNELS, HEADS, M, EDGES_PER_NODE = 64, 4, 16, 10
FULL = dict(check=200_000, knn_check=20_000, op=1_000_000, layer=1_000_000, knn=(100_000, 1_000_000))
TINY = dict(check=70, knn_check=40, op=70, layer=70, knn=(48, 64))
# Skip the 1M k-NN run when the 100k run predicts more than this (time grows as N²).
KNN_BUDGET_S = 30.0


def measure(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    return time_ms(fn, device, warmup=0, repeat=1)  # CPU runs are dry runs of the code path


def once_ms(fn: Callable[[], object], device: str, warmup: int = 0) -> float:
    return time_ms(fn, device, warmup=warmup, repeat=1)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------- top-m attention


def attention_inputs(num_nodes: int, kind: str, device: str, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """fp32 query, key, value ``[N, HEADS, CHANNELS / HEADS]`` and an ``[N, M]`` candidate index of one kind."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = CHANNELS // HEADS
    qkv = [torch.randn(num_nodes, HEADS, head_dim, generator=gen).to(device) for _ in range(3)]
    if kind == "aux":
        batch = torch.sort(torch.randint(0, 3, (num_nodes,), generator=gen)).values
        index = score_candidates(torch.randn(num_nodes, generator=gen), M, batch)
    else:
        index = torch.randint(0, num_nodes, (num_nodes, M), generator=gen)
        index[torch.rand(num_nodes, M, generator=gen) < 0.1] = -1
    return qkv, index.to(device)


def attention_fwd_bwd(qkv: list[torch.Tensor], index: torch.Tensor, backend: str,
                      grad_out: torch.Tensor) -> list[torch.Tensor]:
    """[output, grad query, grad key, grad value] for one backend."""
    leaves = [t.detach().requires_grad_() for t in qkv]
    out = topm_attention(*leaves, index, backend=backend)
    return [out, *torch.autograd.grad(out, leaves, grad_out)]


def correctness_row(case: str, dtype: torch.dtype, tensor: str, ref: torch.Tensor, ours_err: float,
                    baseline_err: float, note: str = "") -> dict:
    return {"case": case, "dtype": dtype_name(dtype), "tensor": tensor, "max |ref|": ref.abs().max().item(),
            "ours err": ours_err, "torch err": baseline_err, "ok": ours_err <= 2 * baseline_err + 1e-5, "note": note}


def check_attention(num_nodes: int, device: str) -> list[dict]:
    rows = []
    for kind in ("aux", "random"):
        qkv, index = attention_inputs(num_nodes, kind, device)
        grad_out = torch.randn(num_nodes, HEADS, CHANNELS // HEADS, generator=torch.Generator().manual_seed(1))
        for dtype, ref_dtype in ((torch.float32, torch.float64), (torch.bfloat16, torch.float32)):
            low = [t.to(dtype) for t in qkv]
            reference = attention_fwd_bwd([t.to(ref_dtype) for t in low], index, "torch",
                                          grad_out.to(device, ref_dtype))
            baseline = attention_fwd_bwd(low, index, "torch", grad_out.to(device, dtype))
            ours = attention_fwd_bwd(low, index, kernel_backend(device), grad_out.to(device, dtype))
            for name, ref, theirs, mine in zip(("output", "grad q", "grad k", "grad v"), reference, baseline, ours,
                                               strict=True):
                rows.append(correctness_row(f"attention {kind} N={num_nodes}", dtype, name, ref,
                                            (mine.to(ref_dtype) - ref).abs().max().item(),
                                            (theirs.to(ref_dtype) - ref).abs().max().item()))
    return rows


def attention_bytes(qkv: list[torch.Tensor], index: torch.Tensor) -> int:
    """Compulsory fwd+bwd traffic: q, k, v and index read twice, out and grad_out once each, q, k, v grads once."""
    tensors = 3 * sum(t.numel() * t.element_size() for t in qkv)
    return tensors + 2 * index.numel() * index.element_size() + 2 * qkv[2].numel() * qkv[2].element_size()


def bench_attention(num_nodes: int, device: str, dtype: torch.dtype) -> list[dict]:
    rows = []
    for kind in ("aux", "random"):
        qkv, index = attention_inputs(num_nodes, kind, device)
        qkv = [t.to(dtype) for t in qkv]
        index = index.contiguous()
        grad_out = torch.randn_like(qkv[2])
        times = {}
        for backend in ("torch", kernel_backend(device)):
            def fwd(backend=backend, qkv=qkv, index=index):
                with torch.no_grad():
                    topm_attention(*qkv, index, backend=backend)

            def fwd_bwd(backend=backend, qkv=qkv, index=index, grad_out=grad_out):
                attention_fwd_bwd(qkv, index, backend, grad_out)

            times[backend] = (measure(fwd, device), measure(fwd_bwd, device))
        (t_fwd, t_all), (o_fwd, o_all) = times["torch"], times[kernel_backend(device)]
        gbs = attention_bytes(qkv, index) / (o_all * 1e-3) / 1e9
        rows.append({"candidates": kind, "N = S": num_nodes, "dtype": dtype_name(dtype), "torch fwd ms": t_fwd,
                     "ours fwd ms": o_fwd, "fwd speedup": t_fwd / o_fwd, "torch fwd+bwd ms": t_all,
                     "ours fwd+bwd ms": o_all, "fwd+bwd speedup": t_all / o_all, "ours GB/s": gbs,
                     "HBM roofline frac": gbs / PEAK_GBPS})
    return rows


# ---------------------------------------------------------------------------------------------- k-NN


def knn_inputs(num_nodes: int, graphs: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(num_nodes, CHANNELS, generator=gen).to(device)
    batch = torch.sort(torch.randint(0, graphs, (num_nodes,), generator=gen)).values.to(device)
    return features, batch


def chosen_scores(query: torch.Tensor, key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Exact (fp64) score of every chosen candidate, -inf for an empty slot: ``[N, m]``."""
    scores = torch.einsum("nf,nmf->nm", query.double(), key.double()[index.clamp(min=0)])
    return scores.masked_fill(index < 0, -math.inf)


def regret(query: torch.Tensor, key: torch.Tensor, index: torch.Tensor, exact: torch.Tensor) -> float:
    got, best = chosen_scores(query, key, index), chosen_scores(query, key, exact)
    if not torch.equal(got == -math.inf, best == -math.inf):
        return math.inf
    return (got - best).nan_to_num(0.0).abs().max().item()  # -inf - -inf = nan: matching empty slots


def check_knn(num_nodes: int, device: str) -> list[dict]:
    features, batch = knn_inputs(num_nodes, 2, device)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        # query and key: two halves of a projection, as the layer's flattened heads
        query, key = features.to(dtype), features.flip(1).to(dtype)
        exact = topm_knn_reference(query.double(), key.double(), M, batch, batch, block_size=4096)
        baseline = topm_knn(query, key, M, batch, backend="torch", block_size=4096)
        ours = topm_knn(query, key, M, batch, backend=kernel_backend(device))
        same = (ours == exact).all(1).float().mean().item()
        ref = chosen_scores(query, key, exact).masked_fill(exact < 0, 0.0)
        rows.append(correctness_row(f"knn N={num_nodes}, 2 graphs", dtype, "chosen scores (regret)", ref,
                                    regret(query, key, ours, exact), regret(query, key, baseline, exact),
                                    f"rows identical to exact: {same:.2%}"))
    return rows


def knn_tflops(num_nodes: int, ms: float) -> float:
    return 2 * num_nodes**2 * CHANNELS / (ms * 1e-3) / 1e12


def bench_knn(sizes: tuple[int, ...], device: str, dtype: torch.dtype) -> list[dict]:
    rows = []
    backend = kernel_backend(device)
    predicted_ms = 0.0
    for num_nodes in sizes:
        if predicted_ms > KNN_BUDGET_S * 1e3:
            rows.append({"nodes": num_nodes, "dtype": dtype_name(dtype), "ours ms": math.nan, "torch ms": math.nan,
                         "speedup": math.nan, "ours TFLOP/s": math.nan, "bf16 roofline frac": math.nan,
                         "note": f"skipped: predicted {predicted_ms / 1e3:.0f} s from the smaller run"})
            continue
        features, batch = knn_inputs(num_nodes, 1, device)
        query, key = features.to(dtype), features.flip(1).to(dtype)
        # The smallest size runs once untimed first (compilation); the sizes share Triton's integer
        # specialisations (multiples of 16), so larger ones reuse the kernel.
        timed_torch = num_nodes == sizes[0]
        ours = once_ms(lambda q=query, k=key, b=batch: topm_knn(q, k, M, b, backend=backend), device,
                       warmup=int(timed_torch))
        torch_ms = (once_ms(lambda q=query, k=key, b=batch: topm_knn(q, k, M, b, backend="torch", block_size=8192),
                            device, warmup=1) if timed_torch else math.nan)
        tflops = knn_tflops(num_nodes, ours)
        rows.append({"nodes": num_nodes, "dtype": dtype_name(dtype), "ours ms": ours, "torch ms": torch_ms,
                     "speedup": torch_ms / ours, "ours TFLOP/s": tflops, "bf16 roofline frac": tflops / PEAK_TFLOPS,
                     "note": "" if timed_torch else "PyTorch path not timed (minutes)"})
        predicted_ms = ours * (sizes[-1] / num_nodes) ** 2
    return rows


# ---------------------------------------------------------------------------------------------- layers


def layer_builders(device: str) -> dict[str, Callable[[], torch.nn.Module]]:
    def topm(backend: str) -> Callable[[], torch.nn.Module]:
        return lambda: TopMAttentionConv(CHANNELS, CHANNELS, m=M, heads=HEADS, num_neighbors=EDGES_PER_NODE,
                                         mode="aux", backend=backend)

    return {f"TopMAttentionConv aux ({kernel_backend(device)})": topm(kernel_backend(device)),
            "TopMAttentionConv aux (torch)": topm("torch"),
            "GATConv": lambda: GATConv(CHANNELS, CHANNELS // HEADS, heads=HEADS),
            "TransformerConv": lambda: TransformerConv(CHANNELS, CHANNELS // HEADS, heads=HEADS)}


def bench_layers(num_nodes: int, device: str, dtype: torch.dtype) -> list[dict]:
    data = random_graph(num_nodes, EDGES_PER_NODE, num_channels=CHANNELS)
    x, edge_index = data.x.to(device, dtype), data.edge_index.to(device)
    rows = []
    for name, build in layer_builders(device).items():
        torch.manual_seed(0)
        layer = build().to(device, dtype).train()

        def step(layer=layer) -> None:
            layer(x, edge_index).sum().backward()
            layer.zero_grad(set_to_none=True)

        row = {"layer": name, "nodes": num_nodes, "dtype": dtype_name(dtype), "fwd+bwd ms": math.nan,
               "peak MiB": math.nan, "TransformerConv ms / this": math.nan, "error": ""}
        try:
            row["fwd+bwd ms"] = measure(step, device)
            # CPU runs are dry runs of the code path: spare them the two calls a memory reading costs
            row["peak MiB"] = peak_memory_mb(step, device) if device == "cuda" else math.nan
        except Exception as err:  # an anchor without bf16 support must not hide the other rows
            row["error"] = f"{type(err).__name__}: {err}"[:160]
        rows.append(row)
        del layer
    anchor = next(r["fwd+bwd ms"] for r in rows if r["layer"] == "TransformerConv")
    for row in rows:
        row["TransformerConv ms / this"] = anchor / row["fwd+bwd ms"]
    return rows


def bench_layer_pieces(num_nodes: int, device: str, dtype: torch.dtype) -> list[dict]:
    """Forward time of the layer's data-dependent steps at the layer benchmark's size (where the time goes)."""
    data = random_graph(num_nodes, EDGES_PER_NODE, num_channels=CHANNELS)
    dst = data.edge_index[1].to(device)
    score = torch.randn(num_nodes, device=device, dtype=dtype)
    qkv, index = attention_inputs(num_nodes, "aux", device)
    qkv = [t.to(dtype) for t in qkv]
    pieces = {"sample_neighbor_mask (training mode)": lambda: sample_neighbor_mask(dst, num_nodes, EDGES_PER_NODE),
              "score_candidates ('aux' ranking)": lambda: score_candidates(score, M),
              f"topm_attention forward ({kernel_backend(device)})":
                  lambda: topm_attention(*qkv, index, backend=kernel_backend(device))}
    rows = []
    for name, fn in pieces.items():
        with torch.no_grad():
            rows.append({"step": name, "nodes": num_nodes, "dtype": dtype_name(dtype), "ms": measure(fn, device)})
    return rows


# ---------------------------------------------------------------------------------------------- entry points


def gpu_check(device: str = "cuda", tiny: bool = False) -> list[tuple[str, list[dict]]]:
    """Sections (heading, rows) for benchmarks/kernels.py: correctness, op speed, layer speed, k-NN speed."""
    sizes = TINY if tiny else FULL
    backend = kernel_backend(device)
    correctness = check_attention(sizes["check"], device) + check_knn(sizes["knn_check"], device)
    return [
        (f"topm correctness ({backend} vs fp64/fp32 reference, flash-attention rule)", correctness),
        (f"topm_attention op fwd+bwd, bf16 ({backend} vs PyTorch path)",
         bench_attention(sizes["op"], device, torch.bfloat16)),
        (f"TopMAttentionConv vs PyG, one layer fwd+bwd, bf16, {EDGES_PER_NODE} in-edges per vertex",
         bench_layers(sizes["layer"], device, torch.bfloat16)),
        ("TopMAttentionConv steps, forward only", bench_layer_pieces(sizes["layer"], device, torch.bfloat16)),
        (f"topm_knn alone ({backend}), bf16, {CHANNELS} features, m={M}", bench_knn(sizes["knn"], device,
                                                                                    torch.bfloat16)),
    ]


def main() -> None:
    kernel_bench_cli("kernels_topm", "Top-m attention / k-NN Triton kernels vs PyTorch and PyG", gpu_check,
                     "Correctness 'ok' applies the flash-attention rule (ours err <= 2x torch err + 1e-5, max-abs "
                     "against the fp64 reference for fp32 and the fp32 reference for bf16). k-NN errors are score "
                     "regrets (see the script's docstring). Timings: median of triton.testing.do_bench on CUDA "
                     "(k-NN: one call after compilation); peak MiB is torch.cuda.max_memory_allocated above the "
                     "inputs during one forward+backward.")


if __name__ == "__main__":
    main()
