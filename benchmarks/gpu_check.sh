#!/usr/bin/env bash
# The one prepared GPU run (H100/H200, < 8 minutes): Triton kernel correctness in fp32/bf16 and the benchmark tables.
# Writes benchmarks/results/gpu-<gpu name>.md (and copies it into $OUT when the device tool sets it).
# Python packages the GPU image lacks (timm, segmentation-models-pytorch) may be carried as wheels in .whl/.
# Before spending device time: `python benchmarks/kernels_compile.py` (no GPU needed) compiles every kernel at these
# shapes for sm_90 and reports register spills.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
status=0
timeout 360 python3 benchmarks/kernels.py --device cuda || status=$?
timeout 90 python3 benchmarks/graph_topm.py --device cuda --gpu-only || status=$?
timeout 90 python3 benchmarks/vit_attention.py --device cuda --rounds 3 || status=$?
# neighborhood_attention vs dense masked SDPA vs FlexAttention, bf16 fwd+bwd, NAT-Tiny stages (55 s: < 10 min total)
timeout 55 python3 benchmarks/neighborhood.py --device cuda --repeat 10 || status=$?
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/gpu-*.md benchmarks/results/graph_topm_cuda.md benchmarks/results/vit_attention_cuda.md \
        benchmarks/results/neighborhood_nvidia-*.md \
        "$OUT"/ 2>/dev/null
fi
exit $status
