import os
import sys
from pathlib import Path

# Triton kernels run on CPU tensors through the interpreter in the normal suite; this must be set before any
# Triton kernel module is imported. No test may reach the network.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ATTNZOO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# shared test helpers (tiny_models, timm_model_checks) are imported by name
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: the CI machine has 2 cores
