"""`python examples/NAME.py --smoke` runs with no other argument, for every example (outputs under ./runs).

Each script runs in a fresh process from an empty working folder, offline, with a fake Fashion-MNIST in the
attnzoo cache (the real one is used where the Debian package is installed: smoke runs read a few images).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_fmnist import write_fake_fmnist

from attnzoo.data.fashion_mnist import DEBIAN_ROOT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))
# scripts that only run under torchrun, and the launcher flags they get
LAUNCHED = {"finetune_ddp": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    raw = root / "datasets" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_fake_fmnist(raw)
    return root


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_needs_no_other_argument(script, cache, tmp_path):
    if script == "train_checkpoints" and DEBIAN_ROOT.is_dir():
        # its smoke run scores the whole test split (so that `attnzoo eval` reproduces the saved metrics): minutes
        # on the real 10,000 images; test_train_checkpoints.py runs it on the fake files
        pytest.skip("the installed Fashion-MNIST makes train_checkpoints.py --smoke take minutes")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "ATTNZOO_CACHE": str(cache), "ATTNZOO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, *LAUNCHED.get(script, []), str(EXAMPLES / f"{script}.py"), "--smoke"]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any((work / "runs").rglob("*")), f"{script} --smoke wrote nothing under ./runs"
