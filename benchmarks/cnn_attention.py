"""CNN attention blocks side by side: ELA vs timm's 'ela', SE, ECA and CBAM; ResNet-50 host overhead; MK-UNet vs smp.

    python benchmarks/cnn_attention.py                 # CPU tables -> benchmarks/results/cnn_attention.md
    python benchmarks/cnn_attention.py --device cuda   # the same on a GPU -> cnn_attention_cuda.md
    python benchmarks/cnn_attention.py --quick         # small shapes, to check that the script runs

Three sections, each timed as forward+backward (train mode) unless it says inference, anchors and ours in one
process so the ratios compare like with like:

1. Attention modules alone at ResNet-50's four stage outputs (timm's ``attn_layer`` slot, after bn3), against
   timm's ``EfficientLocalAttn`` ('ela'). attnzoo ELA-B and ELA-S (the ``ela_resnet50`` variant) run through the
   ``ela_gate`` op (PyTorch path on CPU, Triton on CUDA).
2. Host overhead: timm ``resnet50`` against ``ela_resnet50`` (ELA-S after each 3x3 conv, the authors' placement)
   and ``ela_resnet50`` with ``ela_position='timm'`` (after bn3).
3. MK-UNet (``create_model('mkunet')``) against smp's ``Unet`` with a resnet18 encoder at 256x256, one class:
   inference throughput, forward+backward time, parameters and MACs.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from _harness import peak_memory_mb, threads_from_env, time_ms, write_result  # noqa: E402

# ResNet-50 stage outputs (channels, side) at 224x224 input
STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
QUICK_STAGES = [(64, 14), (128, 7)]


def fwd_bwd(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x).float().sum().backward()

    return run


def fixed_mmap_threshold() -> None:
    """Make glibc map every allocation of 128 KiB or more and unmap it on free, for the whole run.

    With glibc's default dynamic threshold (raised up to 32 MiB by each large free), freed activations are recycled
    through the heap, and the high-water RSS of a step then depends on what ran before it: ResNet-50 at batch 2,
    160x160, read 105-115 MiB in-process against 66 MiB with this setting, and the quick mode's host ratios flipped.
    Set before anything is timed, so times and peaks come from the same allocator behaviour.
    """
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def ratio(value: float, anchor: float) -> float | str:
    return value / anchor if anchor > 0 else "n/a"


def measure(model: nn.Module, x: torch.Tensor, device: str, repeat: int) -> tuple[float, float]:
    """(median fwd+bwd ms, peak MiB added by one fwd+bwd)."""
    run = fwd_bwd(model, x)
    return time_ms(run, device, warmup=2, repeat=repeat), peak_memory_mb(run, device)


def attention_modules(channels: int, device: str) -> dict[str, nn.Module]:
    from timm.layers import create_attn

    from attnzoo.layers.ela import ELA

    modules = {
        "timm 'ela' (anchor)": create_attn("ela", channels),
        "attnzoo ELA-B": ELA(channels, "B"),
        "attnzoo ELA-S": ELA(channels, "S"),
        "timm 'se'": create_attn("se", channels),
        "timm 'eca'": create_attn("eca", channels),
        "timm 'cbam'": create_attn("cbam", channels),
    }
    return {name: m.to(device).train() for name, m in modules.items()}


def module_rows(batch: int, stages: list[tuple[int, int]], device: str, repeat: int) -> list[dict]:
    rows = []
    for channels, side in stages:
        x = torch.randn(batch, channels, side, side, device=device, requires_grad=True)
        anchor_ms = None
        for name, module in attention_modules(channels, device).items():
            ms, mb = measure(module, x, device, repeat)
            anchor_ms = anchor_ms or ms
            rows.append({"shape (B,C,H,W)": f"({batch},{channels},{side},{side})", "module": name,
                         "params": sum(p.numel() for p in module.parameters()), "fwd+bwd ms": ms,
                         "vs timm 'ela'": ratio(ms, anchor_ms), "peak MiB": mb})
    return rows


def interleaved_ms(runs: dict[str, Callable[[], None]], device: str, repeat: int) -> dict[str, float]:
    """Median ms of each run, timed round-robin so that a change in the machine's load hits every entry alike."""
    for run in runs.values():
        time_ms(run, device, warmup=1, repeat=1)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            samples[name].append(time_ms(run, device, warmup=0, repeat=1))
    return {name: statistics.median(values) for name, values in samples.items()}


def host_rows(batch: int, side: int, device: str, repeat: int) -> list[dict]:
    import timm

    import attnzoo.zoo  # noqa: F401  (registers ela_resnet50)

    builds = {
        "timm resnet50 (anchor)": lambda: timm.create_model("resnet50"),
        "ela_resnet50 (ELA-S after 3x3, authors')": lambda: timm.create_model("ela_resnet50"),
        "ela_resnet50 ela_position='timm' (after bn3)": lambda: timm.create_model("ela_resnet50",
                                                                                  ela_position="timm"),
    }
    x = torch.randn(batch, 3, side, side, device=device)
    models = {name: build().to(device).train() for name, build in builds.items()}
    runs = {name: fwd_bwd(model, x) for name, model in models.items()}
    times = interleaved_ms(runs, device, repeat)
    rows, anchor = [], None
    for name, model in models.items():
        ms, mb = times[name], peak_memory_mb(runs[name], device)
        params = sum(p.numel() for p in model.parameters())
        anchor = anchor or (ms, mb, params)
        rows.append({"model": name, "params": params, "params vs anchor": params / anchor[2], "fwd+bwd ms": ms,
                     "time vs anchor": ratio(ms, anchor[0]), "peak MiB": mb, "memory vs anchor": ratio(mb, anchor[1])})
    return rows


def segmentation_rows(batch: int, side: int, device: str, repeat: int) -> list[dict]:
    import segmentation_models_pytorch as smp

    from attnzoo.profiling import count_macs
    from attnzoo.zoo import create_model

    models = {
        "smp Unet(resnet18) (anchor)": lambda: smp.Unet("resnet18", encoder_weights=None, classes=1),
        "attnzoo mkunet": lambda: create_model("mkunet", num_classes=1),
    }
    x = torch.randn(batch, 3, side, side, device=device)
    rows, anchor = [], None
    for name, build in models.items():
        model = build().to(device)
        with torch.no_grad():
            macs = count_macs(model.eval(), x[:1]) / 1e9
            infer_ms = time_ms(lambda m=model: m(x), device, warmup=2, repeat=repeat)
        train_ms, mb = measure(model.train(), x, device, repeat)
        throughput = batch / infer_ms * 1e3
        anchor = anchor or (throughput, train_ms)
        rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()), "GMACs/img": macs,
                     "inference img/s": throughput, "img/s vs anchor": ratio(throughput, anchor[0]),
                     "fwd+bwd ms": train_ms, "fwd+bwd vs anchor": ratio(train_ms, anchor[1]), "train peak MiB": mb})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes: check that the script runs")
    args = parser.parse_args()
    threads_from_env()
    fixed_mmap_threshold()
    torch.manual_seed(0)
    cpu = args.device == "cpu"
    repeat = 5 if cpu else 20
    if args.quick:
        stages, module_batch, host_batch, host_side, seg_batch, seg_side = QUICK_STAGES, 2, 1, 64, 1, 64
    elif cpu:
        stages, module_batch, host_batch, host_side, seg_batch, seg_side = STAGES, 4, 2, 160, 2, 256
    else:
        stages, module_batch, host_batch, host_side, seg_batch, seg_side = STAGES, 64, 32, 224, 16, 256
    sections = [
        (f"Attention modules at ResNet-50 stage outputs, batch {module_batch}, forward+backward",
         module_rows(module_batch, stages, args.device, repeat)),
        (f"Host overhead: ResNet-50 with and without ELA, batch {host_batch} at {host_side}x{host_side}, "
         "forward+backward", host_rows(host_batch, host_side, args.device, repeat)),
        (f"MK-UNet vs smp Unet(resnet18), batch {seg_batch} at {seg_side}x{seg_side}, one class",
         segmentation_rows(seg_batch, seg_side, args.device, repeat)),
    ]
    notes = (f"Median of {repeat} runs after two warm-ups (the ResNet-50 hosts: one warm-up each, then timed "
             "round-robin so that load changes hit all three alike); peak memory is the extra memory of one "
             "forward+backward after a warm-up one, from _harness.peak_memory_mb (CPU, in-process, with glibc's "
             "mmap threshold pinned at 128 KiB for the whole run, see fixed_mmap_threshold: VmHWM, reset through "
             "/proc/self/clear_refs after gc and malloc_trim, over the RSS before the step; CUDA: "
             "max_memory_allocated). MACs with attnzoo.profiling.count_macs "
             "(ptflops' module convention) for one image.")
    if cpu:
        notes += (" Measured on a shared 2-core CPU machine that other jobs were using at the same time: absolute "
                  "times are noisy and only the same-run ratios are meaningful. On CPU attnzoo's ELA runs the "
                  "PyTorch reference inside the ela_gate op (the Triton kernel is for CUDA). The committed table ran "
                  "with BENCH_THREADS=1: with two OpenMP threads on the loaded machine (load average ~9), threads "
                  "waiting for each other slowed millisecond-scale ops 10-50x and swamped the comparison.")
    name = "cnn_attention" if cpu else f"cnn_attention_{torch.device(args.device).type}"
    write_result(name + ("_quick" if args.quick else ""), "CNN attention: ELA, SE, ECA, CBAM; ResNet-50 and "
                 "MK-UNet hosts", sections, notes)


if __name__ == "__main__":
    main()
