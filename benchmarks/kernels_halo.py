"""GPU check of the halo_attention Triton kernels: bf16/fp32 correctness, then fwd+bwd speed against the anchors.

    python benchmarks/kernels_halo.py --device cuda
    TRITON_INTERPRET=1 python benchmarks/kernels_halo.py --device cpu --tiny   # dry run of the same code path

Correctness: the op at realistic shapes, Triton vs the fp32 PyTorch reference; fp32 must match to 1e-4 (relative to
the largest value), bf16 must satisfy flash attention's rule (Triton's bf16 error <= 2x the PyTorch bf16 path's error
+ 1e-5, max-abs, forward and every gradient).

Speed (bf16, forward + backward, median ms): the layer, ours (``attnzoo.layers.halo.HaloAttention``) against timm's
``HaloAttn`` with the same weights, eager and under ``torch.compile``, so the q/kv projections are counted on both
sides; and the op alone, Triton vs our PyTorch path vs FlexAttention (a block mask of each query block's window over
the zero-padded key sequence, and the relative-position logits added by a ``score_mod`` that indexes precomputed
``q @ R^T`` tables: this reproduces timm's semantics exactly, which is checked). TFLOP/s counts 4 * N * win^2 * d
forward flops (N queries) and 2.5x that for the backward; GB/s counts the minimal traffic (q, k, v, out read or
written once in the forward; q, k, v, out, dout read and dq, dk, dv written in the backward). H100 SXM roofline:
989 TFLOP/s bf16 dense, 3.35 TB/s.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _harness import kernel_backend, kernel_bench_cli, time_ms  # noqa: E402

from attnzoo.kernels.halo import halo_attention  # noqa: E402
from attnzoo.layers.halo import HaloAttention  # noqa: E402

PEAK_TFLOPS = 989.0
PEAK_GBPS = 3350.0

# (name, batch, dim, map side, heads, block, halo, stride): halonet26t stage 3 at 256 px (its [bottle, self_attn]
# stage: 1024 channels, bottleneck 0.25 -> 256, 16x16, 8 heads of 32); halonet50ts stage 2 (32x32 map, 512 * 0.25
# = 128 channels, 4 heads of 32, halo 3); halonet26t's strided stage-4 entry (16x16 -> 8x8, 512 channels, 64/head).
SHAPES = [
    ("halonet26t stage 3", 64, 256, 16, 8, 8, 2, 1),
    ("halonet50ts stage 2", 64, 128, 32, 4, 8, 3, 1),
]
# torch.compile'd anchors (timm compiled, FlexAttention) cost ~30 s of compilation per shape: the target shape only
COMPILED_ANCHORS = ("halonet26t stage 3", "tiny")
CHECK_SHAPES = SHAPES + [("halonet26t stage 4 (stride 2, masked)", 32, 512, 16, 8, 8, 2, 2)]
TINY_SHAPES = [("tiny", 2, 32, 8, 2, 4, 1, 1)]
TINY_CHECK_SHAPES = TINY_SHAPES + [("tiny (stride 2, masked)", 2, 32, 8, 2, 4, 1, 2)]


def op_inputs(batch: int, dim: int, side: int, heads: int, block: int, halo: int, stride: int, device: str,
              dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """q, k, v maps and both tables as the layer produces them (dqk = dv = dim / heads), unit-variance entries."""
    gen = torch.Generator(device=device).manual_seed(seed)
    d = dim // heads
    win = block + 2 * halo
    sq = -(-side // stride)
    shapes = [(batch * heads, d, sq, sq), (batch * heads, d, side, side), (batch * heads, d, side, side),
              (2 * win - 1, d), (2 * win - 1, d)]
    return [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in shapes]


def fwd_bwd(fn: Callable[[list[torch.Tensor]], torch.Tensor], inputs: list[torch.Tensor],
            grad_out: torch.Tensor | None = None) -> list[torch.Tensor]:
    """[output, *gradients of every input] of one forward + backward."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(leaves)
    grads = torch.autograd.grad(out, leaves, out.detach() if grad_out is None else grad_out)
    return [out.detach(), *grads]


def layer_fwd_bwd(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """[output, grad of x, *grads of the parameters] of one forward + backward of a layer."""
    x = x.detach().requires_grad_()
    out = module(x)
    return [out.detach(), *torch.autograd.grad(out, [x, *module.parameters()], out.detach())]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _op_call(tensors: list[torch.Tensor], options: dict, backend: str) -> torch.Tensor:
    return halo_attention(*tensors, **options, backend=backend)


def check_options(dim: int, heads: int, block: int, halo: int, stride: int) -> dict:
    """Op options of a CHECK_SHAPES row: the strided rows also use masked borders."""
    return dict(block_size=block, halo_size=halo, stride=stride, scale=(dim // heads) ** -0.5,
                mask_padding=stride == 2)


def correctness_rows(device: str, tiny: bool, backend: str) -> list[dict]:
    rows = []
    for name, batch, dim, side, heads, block, halo, stride in TINY_CHECK_SHAPES if tiny else CHECK_SHAPES:
        options = check_options(dim, heads, block, halo, stride)
        inputs = op_inputs(batch, dim, side, heads, block, halo, stride, device, torch.float32)
        gen = torch.Generator(device=device).manual_seed(1)
        grad_out = torch.randn(inputs[0].shape, generator=gen, device=device)

        ref, ours32, ours16, torch16 = (
            fwd_bwd(functools.partial(_op_call, options=options, backend=be), [t.to(dtype) for t in inputs],
                    grad_out.to(dtype))
            for dtype, be in ((torch.float32, "torch"), (torch.float32, backend), (torch.bfloat16, backend),
                              (torch.bfloat16, "torch")))
        for what, r, o32, o16, t16 in zip(("out", "dq", "dk", "dv", "d height_rel", "d width_rel"), ref, ours32,
                                          ours16, torch16, strict=True):
            e32, e16, base = max_err(o32, r), max_err(o16, r), max_err(t16, r)
            ok = e32 <= 1e-4 * max(1.0, r.abs().max().item()) and e16 <= 2 * base + 1e-5
            rows.append({"shape": name, "tensor": what, "max |ref|": r.abs().max().item(), "fp32 err": e32,
                         "bf16 err": e16, "torch bf16 err": base, "ok": "ok" if ok else "FAIL"})
    return rows


def flex_halo(flex: Callable, create_block_mask: Callable, tensors: list[torch.Tensor], block: int, halo: int,
              scale: float, cache: dict) -> torch.Tensor:
    """Halo attention (stride 1, map sides multiples of the block) through FlexAttention, timm semantics.

    Queries are put in block-major order so that a 128-query tile covers two blocks; keys are the row-major
    zero-padded map, so padded keys enter the softmax exactly as in timm.
    """
    q, k, v, height_rel, width_rel = tensors
    bh, d, h, w = q.shape
    nbw, win, wp = w // block, block + 2 * halo, w + 2 * halo
    qs = q.view(bh, d, h // block, block, nbw, block).permute(0, 2, 4, 3, 5, 1).reshape(1, bh, h * w, d)
    # (1, BH, L, d), block-major
    ks, vs = (F.pad(t, (halo,) * 4).flatten(2).transpose(1, 2).unsqueeze(0) for t in (k, v))  # (1, BH, Lk, d)
    rel_h, rel_w = qs @ height_rel.T, qs @ width_rel.T  # (1, BH, L, 2 * win - 1)

    def coords(q_idx, kv_idx):
        blk, local = q_idx // (block * block), q_idx % (block * block)
        kh = kv_idx // wp - (blk // nbw) * block
        kw = kv_idx % wp - (blk % nbw) * block
        return kh, kw, local // block, local % block

    def score_mod(score, b, head, q_idx, kv_idx):
        kh, kw, qh, qw = coords(q_idx, kv_idx)
        row_h = (kh - qh + win - 1).clamp(0, 2 * win - 2)  # masked pairs may be scored too: keep indices in range
        row_w = (kw - qw + win - 1).clamp(0, 2 * win - 2)
        return score + rel_h[0, head, q_idx, row_h] + rel_w[0, head, q_idx, row_w]

    def mask_mod(b, head, q_idx, kv_idx):
        kh, kw, _, _ = coords(q_idx, kv_idx)
        return (kh >= 0) & (kh < win) & (kw >= 0) & (kw < win)

    key = (h, w, block, halo, q.device)
    if key not in cache:
        cache[key] = create_block_mask(mask_mod, None, None, h * w, ks.shape[2], device=q.device)
    out = flex(qs, ks, vs, score_mod=score_mod, block_mask=cache[key], scale=scale)  # (1, BH, L, d)
    out = out.view(bh, h // block, nbw, block, block, d).permute(0, 5, 1, 3, 2, 4)  # (BH, d, nbh, b, nbw, b)
    return out.reshape(bh, d, h, w)


def rates(ms: float, queries: int, win: int, d: int, elements: int, itemsize: int) -> dict:
    flops = 3.5 * 4 * queries * win * win * d  # forward 4 N win^2 d, backward 2.5x
    tflops = flops / ms / 1e9
    gbps = 12 * elements * itemsize / ms / 1e6  # 4 tensors forward, 8 backward, each `elements` big
    return {"TFLOP/s": tflops, "% peak flops": 100 * tflops / PEAK_TFLOPS, "GB/s": gbps,
            "% HBM": 100 * gbps / PEAK_GBPS}


def timer(device: str, tiny: bool) -> Callable[[Callable[[], object]], float]:
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100 if tiny else 200)
    return lambda fn: time_ms(fn, device, warmup=1, repeat=2 if tiny else 5)


def layer_rows(name: str, batch: int, dim: int, side: int, heads: int, block: int, halo: int, stride: int,
               device: str, backend: str, bench: Callable) -> list[dict]:
    """Our HaloAttention (both backends) and timm's HaloAttn (eager, compiled) with the same weights, bf16."""
    from timm.layers.halo_attn import HaloAttn

    kwargs = dict(num_heads=heads, block_size=block, halo_size=halo, stride=stride)
    timm_layer = HaloAttn(dim, **kwargs)
    compile_kw = dict(backend="eager") if device == "cpu" else {}  # inductor on the shared CPU would take minutes
    layers = {"timm HaloAttn eager": timm_layer}
    if name in COMPILED_ANCHORS:
        layers["timm HaloAttn compiled"] = torch.compile(timm_layer, **compile_kw)
    for be in (backend, "torch"):
        layers[f"ours ({be} backend)"] = HaloAttention(dim, **kwargs, backend=be)
        layers[f"ours ({be} backend)"].load_state_dict(timm_layer.state_dict())
    x = torch.randn(batch, dim, side, side, device=device, dtype=torch.bfloat16)
    rows, times, reference = [], {}, None
    for label, module in layers.items():
        module.to(device=device, dtype=torch.bfloat16)
        row = {"shape": name, "impl": label, "fwd+bwd ms": float("nan"), "vs timm eager": float("nan"),
               "vs timm compiled": float("nan"), "out err vs timm": "-"}
        try:
            out = layer_fwd_bwd(module, x)
            reference = out if reference is None else reference
            times[label] = bench(functools.partial(layer_fwd_bwd, module, x))
        except Exception as err:  # a failing anchor is reported, not fatal
            traceback.print_exc()
            rows.append(row | {"out err vs timm": f"{type(err).__name__}: {err}"[:100]})
            continue
        rows.append(row | {"fwd+bwd ms": times[label],
                           "vs timm eager": times.get("timm HaloAttn eager", float("nan")) / times[label],
                           "vs timm compiled": times.get("timm HaloAttn compiled", float("nan")) / times[label],
                           "out err vs timm": max_err(out[0], reference[0])})
    return rows


def op_rows(name: str, batch: int, dim: int, side: int, heads: int, block: int, halo: int, stride: int,
            device: str, backend: str, bench: Callable) -> list[dict]:
    """The op alone: Triton, our PyTorch path and FlexAttention, bf16, errors against the fp32 PyTorch path."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    win, d = block + 2 * halo, dim // heads
    options = dict(block_size=block, halo_size=halo, stride=stride, scale=d ** -0.5)
    flex = flex_attention if device == "cpu" else torch.compile(flex_attention, fullgraph=True)
    flex_label = "FlexAttention" if device == "cuda" else "FlexAttention (forward only: no CPU backward)"
    fns = {f"op ({be} backend)": functools.partial(_op_call, options=options, backend=be) for be in (backend, "torch")}
    if name in COMPILED_ANCHORS:
        fns[flex_label] = functools.partial(flex_halo, flex, create_block_mask, block=block, halo=halo,
                                            scale=options["scale"], cache={})
    inputs = op_inputs(batch, dim, side, heads, block, halo, stride, device, torch.bfloat16)
    reference = fwd_bwd(fns["op (torch backend)"], [t.float() for t in inputs])
    rows, first = [], None
    for label, fn in fns.items():
        run = functools.partial(fwd_bwd if device == "cuda" or "Flex" not in label else forward_only, fn, inputs)
        row = {"shape": name, "impl": label, "fwd+bwd ms": float("nan"), f"speedup of op ({backend})": float("nan"),
               **dict.fromkeys(("TFLOP/s", "% peak flops", "GB/s", "% HBM"), float("nan")), "rel err vs fp32": "-"}
        try:
            out = run()
            ms = bench(run)
        except Exception as err:
            traceback.print_exc()
            rows.append(row | {"rel err vs fp32": f"{type(err).__name__}: {err}"[:100]})
            continue
        first = first or ms
        pairs = zip(out, reference, strict=False)  # a forward-only run returns the output alone
        err = max(max_err(a, r) / max(1.0, r.abs().max().item()) for a, r in pairs)
        rows.append(row | {"fwd+bwd ms": ms, f"speedup of op ({backend})": ms / first,
                           **rates(ms, inputs[0].numel() // d, win, d, inputs[1].numel(), inputs[0].element_size()),
                           "rel err vs fp32": err})
    return rows


def forward_only(fn: Callable[[list[torch.Tensor]], torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [fn(inputs)]


def gpu_check(device: str = "cuda", tiny: bool = False) -> list[tuple[str, list[dict]]]:
    """Sections (heading, rows) for benchmarks/kernels.py: correctness, layer speed, op speed."""
    backend = kernel_backend(device)
    torch.manual_seed(0)
    bench = timer(device, tiny)
    shapes = TINY_SHAPES if tiny else SHAPES
    return [(f"halo_attention: correctness ({backend} vs fp32 reference)", correctness_rows(device, tiny, backend)),
            ("halo_attention: HaloAttention layer vs timm HaloAttn, bf16 fwd+bwd (projections included)",
             [row for shape in shapes for row in layer_rows(*shape, device, backend, bench)]),
            ("halo_attention: op alone, bf16 fwd+bwd", [row for shape in shapes for row in op_rows(*shape, device,
                                                                                                    backend, bench)])]


def main() -> None:
    kernel_bench_cli("kernels_halo", "halo_attention Triton kernels vs anchors", gpu_check,
                     "fp32 rows must match the fp32 reference to 1e-4 x max|ref|; bf16 rows use flash attention's "
                     "rule (Triton bf16 error <= 2x PyTorch bf16 error + 1e-5). Speed: median of do_bench on CUDA.")


if __name__ == "__main__":
    main()
