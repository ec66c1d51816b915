"""DFA3D and MSDA Triton kernels: correctness in fp32/bf16 and forward+backward speed vs the PyTorch reference.

    python benchmarks/kernels_dfa3d.py --device cuda                          # H100/H200: the real table
    TRITON_INTERPRET=1 python benchmarks/kernels_dfa3d.py --device cpu --tiny  # dry run of every code path

The anchor is the efficient PyTorch reference of the same op (``backend='torch'``: per-corner depth score and one
``embedding_bag`` gather, autograd backward), run in the same process. Shapes: BEVFormer-small-like spatial
cross-attention (a 50 x 50 BEV grid, 8 heads of 32 channels, 4 FPN levels of a 928 x 1600 image, 8 points per
level, 64 depth bins), the DFA3D single-level image-view case (6 cameras), the authors' unit-test shape, and MSDA at
the BEVFormer and Deformable-DETR-encoder shapes. Without CUDA (and without TRITON_INTERPRET=1) "ours" falls back to
the torch backend so that the script still runs end to end.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _harness import kernel_backend, kernel_bench_cli, peak_memory_mb, time_ms  # noqa: E402

from attnzoo.kernels.dfa3d import deform_attn_3d, ms_deform_attn  # noqa: E402

H100_HBM_GBS = 3350.0
BEVFORMER_LEVELS = ((116, 200), (58, 100), (29, 50), (15, 25))


@dataclass(frozen=True)
class Config:
    name: str
    bs: int
    num_queries: int
    shapes: tuple[tuple[int, int], ...]
    num_points: int
    num_bins: int | None  # None: MSDA (no depth)
    num_heads: int = 8
    head_dim: int = 32


def configs(tiny: bool) -> list[Config]:
    if tiny:
        return [Config("dfa3d tiny", 1, 10, ((6, 10), (3, 5)), 2, 8, 2, 8),
                Config("msda tiny", 1, 10, ((6, 10), (3, 5)), 2, None, 2, 8)]
    return [
        Config("dfa3d BEVFormer-small (50x50 BEV, 4 lvl, P=8, D=64)", 1, 2500, BEVFORMER_LEVELS, 8, 64),
        Config("dfa3d image view (6 cams, 1 lvl 116x200, P=8, D=112)", 6, 2500, BEVFORMER_LEVELS[:1], 8, 112),
        Config("dfa3d authors' unit test (6 x 9502 q, 4 lvl, P=8, D=112)", 6, 9502, BEVFORMER_LEVELS, 8, 112),
        Config("msda BEVFormer-small (50x50 BEV, 4 lvl, P=8)", 1, 2500, BEVFORMER_LEVELS, 8, None),
        Config("msda Deformable-DETR encoder (bs 2, 19947 q, P=4)", 2, 19947,
               ((100, 150), (50, 75), (25, 38), (13, 19)), 4, None),
    ]


def make_inputs(cfg: Config, device: str, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Op inputs in the MSDA layout (depth included for DFA3D). Locations spill 10% outside [0, 1].

    Locations are multiples of 2**-12 so that ``loc * size - 0.5`` is exact in fp32: a fused multiply-add on the
    GPU then cannot move a point across a pixel border relative to the PyTorch path (the location gradient jumps
    there, which would make max-abs comparisons meaningless).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    spatial_shapes = torch.tensor(cfg.shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cumsum(sizes, 0) - sizes
    num_keys, num_levels = int(sizes.sum()), len(cfg.shapes)
    query_dims = (cfg.bs, cfg.num_queries, cfg.num_heads, num_levels, cfg.num_points)
    value = torch.randn(cfg.bs, num_keys, cfg.num_heads, cfg.head_dim, generator=gen)
    coords = 2 if cfg.num_bins is None else 3
    locations = torch.round((torch.rand(*query_dims, coords, generator=gen) * 1.2 - 0.1) * 4096) / 4096
    weights = torch.randn(*query_dims[:3], num_levels * cfg.num_points, generator=gen).softmax(-1).view(query_dims)
    tensors = [value, spatial_shapes, level_start_index, locations, weights]
    if cfg.num_bins is not None:
        tensors.insert(1, torch.randn(cfg.bs, num_keys, cfg.num_bins, generator=gen).softmax(-1))
    return [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in tensors]


def op_of(cfg: Config):
    return ms_deform_attn if cfg.num_bins is None else deform_attn_3d


def float_indices(inputs: list[torch.Tensor]) -> list[int]:
    return [i for i, t in enumerate(inputs) if t.is_floating_point()]


def forward_backward(cfg: Config, inputs: list[torch.Tensor], backend: str, grad_out: torch.Tensor
                     ) -> list[torch.Tensor]:
    """[output, grad of every floating input] for one backend."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    out = op_of(cfg)(*leaves, backend=backend)
    return [out, *torch.autograd.grad(out, [leaves[i] for i in float_indices(inputs)], grad_out)]


def check(cfg: Config, device: str) -> list[dict]:
    """Flash-attention rule in fp32 (against fp64) and bf16 (against fp32), on output and every gradient."""
    names = ["output"] + [f"grad {n}" for n in (("value", "locations", "weights") if cfg.num_bins is None
                                                 else ("value", "depth", "locations", "weights"))]
    rows = []
    for dtype, ref_dtype in ((torch.float32, torch.float64), (torch.bfloat16, torch.float32)):
        low = make_inputs(cfg, device, dtype)
        ref_inputs = [t.to(ref_dtype) if t.is_floating_point() else t for t in low]  # the same rounded inputs
        grad_out = torch.randn(cfg.bs, cfg.num_queries, cfg.num_heads * cfg.head_dim,
                               generator=torch.Generator(device="cpu").manual_seed(1)).to(device)
        reference = forward_backward(cfg, ref_inputs, "torch", grad_out.to(ref_dtype))
        baseline = "torch"
        try:
            torch_low = forward_backward(cfg, low, "torch", grad_out.to(dtype))
        except NotImplementedError:
            # CUDA's embedding_bag has no bf16 per-sample-weights backward, so the PyTorch path cannot run in
            # bf16 there; the reference rounded to bf16 is then the baseline (the least error any bf16 path has)
            baseline = f"ref rounded to {str(dtype).removeprefix('torch.')}"
            torch_low = [t.to(dtype) for t in reference]
        ours = forward_backward(cfg, low, kernel_backend(device), grad_out.to(dtype))
        for name, ref, theirs, mine in zip(names, reference, torch_low, ours, strict=True):
            base_err = (theirs.to(ref_dtype) - ref).abs().max().item()
            our_err = (mine.to(ref_dtype) - ref).abs().max().item()
            rows.append({"op": cfg.name.split(" ")[0], "dtype": str(dtype).removeprefix("torch."), "tensor": name,
                         "max |ref|": ref.abs().max().item(), "ours err": our_err, "baseline": baseline,
                         "baseline err": base_err, "ok": our_err <= 2 * base_err + 1e-5})
    return rows


def compulsory_bytes(inputs: list[torch.Tensor], out_numel: int) -> int:
    """Bytes fwd+bwd must move at least: inputs read twice, output written, grad_out read, input grads written."""
    floats = [inputs[i] for i in float_indices(inputs)]
    element = floats[0].element_size()
    return 3 * sum(t.numel() * t.element_size() for t in floats) + 2 * out_numel * element


def measure(fn, device: str) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")
    return time_ms(fn, device, warmup=1, repeat=3)


def bench(cfg: Config, device: str, dtype: torch.dtype) -> dict:
    inputs = make_inputs(cfg, device, dtype)
    out_shape = (cfg.bs, cfg.num_queries, cfg.num_heads * cfg.head_dim)
    grad_out = torch.randn(out_shape, device=device, dtype=dtype)
    anchor_dtype = dtype
    try:
        forward_backward(cfg, inputs, "torch", grad_out)
    except NotImplementedError:  # no bf16 embedding_bag per-sample-weights backward on CUDA: time the fp32 anchor
        anchor_dtype = torch.float32
    row: dict = {"shape": cfg.name, "dtype": str(dtype).removeprefix("torch."),
                 "anchor dtype": str(anchor_dtype).removeprefix("torch.")}
    times = {}
    for label, backend in (("torch", "torch"), ("ours", kernel_backend(device))):
        args = [t.to(anchor_dtype) if t.is_floating_point() and label == "torch" else t for t in inputs]
        grad = grad_out.to(anchor_dtype) if label == "torch" else grad_out

        def fwd(backend=backend, args=args):
            with torch.no_grad():
                op_of(cfg)(*args, backend=backend)

        def fwd_bwd(backend=backend, args=args, grad=grad):
            forward_backward(cfg, args, backend, grad)

        # CPU runs are dry runs of the code path: spare them the two calls a memory reading costs
        memory = peak_memory_mb(fwd_bwd, device) if device == "cuda" else float("nan")
        times[label] = (measure(fwd, device), measure(fwd_bwd, device), memory)
    (t_fwd, t_all, t_mem), (o_fwd, o_all, o_mem) = times["torch"], times["ours"]
    gbs = compulsory_bytes(inputs, grad_out.numel()) / (o_all * 1e-3) / 1e9
    row.update({"torch fwd ms": t_fwd, "ours fwd ms": o_fwd, "fwd speedup": t_fwd / o_fwd,
                "torch fwd+bwd ms": t_all, "ours fwd+bwd ms": o_all, "fwd+bwd speedup": t_all / o_all,
                "torch peak MB": t_mem, "ours peak MB": o_mem, "ours GB/s": gbs,
                "HBM roofline frac": gbs / H100_HBM_GBS})
    return row


def gpu_check(device: str = "cuda", tiny: bool = False) -> list[tuple[str, list[dict]]]:
    """Sections (heading, rows) for benchmarks/kernels.py: correctness, then speed in bf16 and fp32."""
    cfgs = configs(tiny)
    checked = [cfg for cfg in cfgs if "BEVFormer" in cfg.name or tiny]  # one DFA3D and one MSDA shape
    correctness = [row for cfg in checked for row in check(cfg, device)]
    speed_bf16 = [bench(cfg, device, torch.bfloat16) for cfg in cfgs]
    speed_fp32 = [bench(cfg, device, torch.float32) for cfg in checked]
    backend = kernel_backend(device)
    return [(f"dfa3d/msda correctness ({backend} vs fp64/fp32 reference, flash-attention rule)", correctness),
            (f"dfa3d/msda fwd+bwd speed, bf16 ({backend} vs efficient PyTorch reference)", speed_bf16),
            (f"dfa3d/msda fwd+bwd speed, fp32 ({backend} vs efficient PyTorch reference)", speed_fp32)]


def main() -> None:
    kernel_bench_cli("kernels_dfa3d", "DFA3D / MSDA Triton kernels vs the PyTorch reference", gpu_check,
                     "GB/s counts compulsory traffic only (inputs read in forward and backward, output and "
                     "grad_out once, input gradients written once); the 4-corner gathers of value rows mostly hit "
                     "L2 and are not counted. Roofline fraction is against the H100 SXM's 3.35 TB/s HBM. Timings "
                     "are medians of triton.testing.do_bench; peak MB is torch.cuda.max_memory_allocated above "
                     "the inputs during one forward+backward.")


if __name__ == "__main__":
    main()
