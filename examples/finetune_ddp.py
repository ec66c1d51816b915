"""The ImageFolder fine-tuning example under torchrun with DistributedDataParallel (gloo on CPU, nccl on GPU).

    torchrun --nproc_per_node 2 examples/finetune_ddp.py --model ela_resnet18.fmnist --data my_images/ --out runs/ddp

Every rank builds the same model from the same seed; ``attnzoo.apps.training`` wraps it in DDP, gives each rank its
shard through a DistributedSampler and lets rank 0 validate, log and save. ``--dump-params DIR`` writes each
rank's final parameters to ``DIR/rank<r>.safetensors`` so that a test can check they are identical.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_imagefolder  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    if "RANK" not in os.environ:
        raise SystemExit("run this under torchrun, e.g. torchrun --nproc_per_node 2 examples/finetune_ddp.py ...")
    parser = finetune_imagefolder.build_parser()
    parser.add_argument("--dump-params", type=Path, default=None, help="write each rank's parameters here")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if use_cuda and "--device" not in argv:
            argv += ["--device", f"cuda:{local_rank}"]
        run = finetune_imagefolder.main(argv, parser)
        args = run["args"]
        if args.dump_params is not None:
            args.dump_params.mkdir(parents=True, exist_ok=True)
            params = {k: v.detach().cpu().contiguous() for k, v in run["model"].named_parameters()}
            save_file(params, args.dump_params / f"rank{dist.get_rank()}.safetensors")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
