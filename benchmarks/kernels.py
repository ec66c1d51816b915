"""GPU correctness and speed of every attnzoo Triton kernel against its anchors, in one table per op.

    python benchmarks/kernels.py --device cuda        # what benchmarks/gpu_check.sh runs on an H100/H200
    TRITON_INTERPRET=1 python benchmarks/kernels.py --device cpu --tiny   # a dry run of the same code path

Each op's module (benchmarks/kernels_<op>.py) checks the Triton backend against the fp32 PyTorch reference in fp32
and bf16 (flash-attention's rule: the kernel's bf16 error is at most twice the PyTorch path's bf16 error), then
times forward+backward against its anchors. A failing op is reported in the table, not fatal for the others.
Writes benchmarks/results/gpu-<gpu name>.md (or cpu-dry-run.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import device_slug, write_result  # noqa: E402

OPS = ("ela", "halo", "dfa3d", "topm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a dry run of the code path")
    parser.add_argument("--ops", nargs="*", default=OPS, choices=OPS)
    args = parser.parse_args()
    sections = []
    for op in args.ops:
        try:
            module = importlib.import_module(f"kernels_{op}")
            sections += list(module.gpu_check(device=args.device, tiny=args.tiny))
        except Exception as err:  # one broken op must not hide the others' results
            traceback.print_exc()
            sections.append((f"{op}: FAILED", [{"error": f"{type(err).__name__}: {err}"[:300]}]))
    name = f"gpu-{device_slug(args.device)}" if args.device == "cuda" else "cpu-dry-run"
    write_result(name, "Triton kernels vs anchors", sections,
                 notes="Correctness rows: max-abs error against the fp32 PyTorch reference; 'ok' applies the "
                       "flash-attention rule (kernel bf16 error <= 2x PyTorch bf16 error, + 1e-5).")


if __name__ == "__main__":
    main()
