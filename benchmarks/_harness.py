"""Shared timing, peak-memory and reporting helpers for the scripts in benchmarks/.

Every benchmark runs its anchor and attnzoo in the same process and prints a markdown table with ratios and
the device and library versions it ran on; ``write_result`` also saves the table under benchmarks/results/.
``kernel_bench_cli`` is the command line shared by the Triton kernel scripts (benchmarks/kernels_<op>.py).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], Any], device: torch.device | str = "cpu", warmup: int = 2, repeat: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds (synchronising CUDA around each call)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(fn: Callable[[], Any], device: torch.device | str = "cpu", warmup: bool = True) -> float:
    """Peak memory that one ``fn()`` adds, in MiB (after one warm-up call unless ``warmup=False``).

    CUDA: ``torch.cuda.max_memory_allocated`` around the call. CPU, in this process: free heap pages are handed
    back to the OS (``malloc_trim``, else the call would reuse them unseen), the high-water RSS (VmHWM) is reset
    through ``/proc/self/clear_refs``, and the peak is compared with the RSS before the call, so every allocator
    (PyTorch's, NumPy's, Python's) is counted. The warm-up keeps one-time costs (library pages, caches) out.
    (A forked child would isolate better, but libgomp and autograd deadlock after fork.)
    """
    if warmup:
        fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def environment() -> str:
    """One markdown line naming the device, the library versions and the date."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "torch_geometric", "segmentation_models_pytorch", "triton"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            continue
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        threads = torch.get_num_threads()
        device = f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads > 1)})"
    listed = ", ".join(f"{k} {v}" for k, v in versions.items())
    return f"Device: {device}. Versions: {listed}. Date: {datetime.date.today().isoformat()}."


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of dicts (same keys) as a markdown table; floats get 3 significant digits."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_result(name: str, title: str, sections: Sequence[tuple[str, Sequence[dict[str, Any]]]],
                 notes: str = "") -> Path:
    """Print and save ``benchmarks/results/<name>.md``: title, environment line, one table per section."""
    parts = [f"# {title}", "", environment(), ""]
    for heading, rows in sections:
        parts += [f"## {heading}", "", markdown_table(rows), ""]
    if notes:
        parts += [notes, ""]
    text = "\n".join(parts)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path


def threads_from_env() -> None:
    """Pin intra-op threads to BENCH_THREADS (default: all cores) so CPU tables say what they measured."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))


def device_slug(device: torch.device | str) -> str:
    """A file-name form of the device: the CUDA device's name (e.g. 'nvidia-h100-80gb-hbm3'), else its type."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-").lower()


def kernel_backend(device: torch.device | str) -> str:
    """The backend "ours" runs in a kernel benchmark: Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch."""
    from attnzoo.kernels._dispatch import triton_interpreting

    return "triton" if torch.device(device).type == "cuda" or triton_interpreting() else "torch"


def kernel_bench_cli(stem: str, title: str, gpu_check: Callable[..., Sequence[tuple[str, Sequence[dict[str, Any]]]]],
                     notes: str) -> Path:
    """Command line of a benchmarks/kernels_<op>.py script: ``--device``, ``--tiny``, then ``gpu_check``'s sections.

    Writes benchmarks/results/<stem>-<device slug>[-tiny].md; the script's docstring is the ``--help`` text.
    """
    parser = argparse.ArgumentParser(description=sys.modules[gpu_check.__module__].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a dry run of the code path")
    args = parser.parse_args()
    threads_from_env()
    sections = gpu_check(device=args.device, tiny=args.tiny)
    if torch.device(args.device).type == "cpu":
        notes += " CPU numbers: a dry run of the code path on a shared 2-core machine, not a measurement."
    return write_result(f"{stem}-{device_slug(args.device)}" + ("-tiny" if args.tiny else ""), title, sections, notes)
