"""Import time of attnzoo beside its host libraries: ``import torch``, ``import timm``, ``import attnzoo``.

    python benchmarks/import_time.py              # 5 rounds -> benchmarks/results/import_time.md
    python benchmarks/import_time.py --repeat 9

Each import runs in a fresh interpreter (``python -c "import X"``), timed from the parent as wall time, so the
interpreter's own start-up (the ``python -c pass`` row) is in every number alike. The rounds interleave the modules
(torch, timm, attnzoo, torch, ...) so that a busy machine slows them alike; the table gives the median and the
fastest of the rounds, and the differences and ratios against ``import timm``, which attnzoo imports (as it does
torch) and cannot be faster than. Goal: ``import attnzoo`` at most 0.5 s over ``import timm``.

The second table says which heavy optional libraries each import leaves in ``sys.modules``: attnzoo imports PyTorch
Geometric, segmentation-models-pytorch and matplotlib only when something that needs them is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import write_result  # noqa: E402

MODULES = ("pass", "torch", "timm", "attnzoo")
HEAVY = ("torch_geometric", "segmentation_models_pytorch", "matplotlib")
REFERENCE = "timm"
GOAL_S = 0.5


def statement(module: str) -> str:
    return "pass" if module == "pass" else f"import {module}"


def import_seconds(module: str) -> float:
    """Wall time of one fresh ``python -c "import module"``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement(module)], check=True)
    return time.perf_counter() - start


def heavy_modules_after(module: str) -> list[str]:
    code = f"{statement(module)}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of fresh-process imports (default 5)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")

    for module in MODULES:  # one untimed round warms the OS file cache for every module alike
        import_seconds(module)
    times: dict[str, list[float]] = {m: [] for m in MODULES}
    for _ in range(args.repeat):
        for module in MODULES:
            times[module].append(import_seconds(module))

    medians = {m: statistics.median(t) for m, t in times.items()}
    reference = medians[REFERENCE]
    rows = [{"statement": f"`python -c \"{statement(m)}\"`", "median s": round(medians[m], 3),
             "fastest s": round(min(times[m]), 3), f"vs {REFERENCE} s": f"{medians[m] - reference:+.3f}",
             f"vs {REFERENCE} x": f"{medians[m] / reference:.2f}"} for m in MODULES]
    heavy = [{"statement": f"`{statement(m)}`", **{name: "imported" if name in found else "-" for name in HEAVY}}
             for m in MODULES[1:] for found in [heavy_modules_after(m)]]
    over = medians["attnzoo"] - reference
    verdict = "meets" if over <= GOAL_S else "misses"
    notes = (f"`import attnzoo` takes {over:+.2f} s against `import timm` (median of {args.repeat}); this {verdict} "
             f"the goal of at most +{GOAL_S} s.")
    return write_result("import_time", f"Import time: torch, timm, attnzoo ({args.repeat} fresh processes each)",
                        [("Wall time of a fresh interpreter running the import", rows),
                         ("Heavy optional libraries in sys.modules after the import", heavy)], notes)


if __name__ == "__main__":
    main()
