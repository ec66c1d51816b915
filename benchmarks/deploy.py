"""Deployment speed at batch 1 on the CPU: eager vs torch.compile vs ONNX Runtime, beside smp's Unet(resnet18).

    python benchmarks/deploy.py            # -> benchmarks/results/deploy_cpu.md
    python benchmarks/deploy.py --quick    # small inputs and few repeats: checks that the script runs

Models: MK-UNet (``create_model('mkunet')``, one class, 256x256) and ELA-ResNet-18 (``create_model('ela_resnet18')``,
224x224), each with its host-library anchor (smp ``Unet('resnet18')``, timm ``resnet18``) run the same three ways.
Every row is inference at batch 1 (what a deployed model serves); images/s is 1000 / median ms. ONNX files come from
plain ``torch.onnx.export(model, args, dynamo=True)``; onnxruntime gets as many intra-op threads as torch.
The ratio column is images/s over smp Unet(resnet18) eager, the anchor the issue tracker set the goal against
(MK-UNet through ONNX Runtime >= 5x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from _harness import threads_from_env, time_ms, write_result  # noqa: E402


def _models(size_seg: int, size_cls: int) -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    import segmentation_models_pytorch as smp
    import timm

    import attnzoo

    return [
        ("smp Unet(resnet18) (anchor)", lambda: smp.Unet("resnet18", encoder_weights=None, classes=1),
         (1, 3, size_seg, size_seg)),
        ("MK-UNet (attnzoo mkunet)", lambda: attnzoo.create_model("mkunet", num_classes=1), (1, 3, size_seg, size_seg)),
        ("timm resnet18", lambda: timm.create_model("resnet18"), (1, 3, size_cls, size_cls)),
        ("ELA-ResNet-18 (attnzoo ela_resnet18)", lambda: attnzoo.create_model("ela_resnet18"),
         (1, 3, size_cls, size_cls)),
    ]


def _onnx_runner(model: nn.Module, x: torch.Tensor, folder: Path) -> Callable[[], object]:
    import onnxruntime as ort

    path = folder / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    want = model(x)
    got = torch.from_numpy(session.run(None, feed)[0])
    err = (got - want).abs().max().item()
    if err > 1e-3:
        raise AssertionError(f"onnxruntime differs from eager by {err:.3g}")
    return lambda: session.run(None, feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64/64 px inputs, 3 repeats")
    args = parser.parse_args()
    threads_from_env()
    torch.manual_seed(0)
    size_seg, size_cls, repeat = (64, 64, 3) if args.quick else (256, 224, 20)
    rows, anchor = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, shape in _models(size_seg, size_cls):
            model = build().eval()
            x = torch.randn(shape)
            with torch.no_grad():
                eager = time_ms(lambda m=model, x=x: m(x), repeat=repeat)
                torch._dynamo.reset()
                compiled_model = torch.compile(model)
                compiled = time_ms(lambda m=compiled_model, x=x: m(x), warmup=3, repeat=repeat)
                onnx = time_ms(_onnx_runner(model, x, Path(tmp)), repeat=repeat)
            anchor = anchor or 1000 / eager
            for how, ms in (("eager", eager), ("torch.compile", compiled), ("ONNX Runtime", onnx)):
                rows.append({"model": name, "input": "x".join(map(str, shape[2:])), "run": how, "ms": ms,
                             "images/s": 1000 / ms, "vs smp Unet eager": 1000 / ms / anchor})
    notes = ("Batch 1, inference, median of the repeats after warm-up; torch.compile with the default inductor "
             "backend (compile time not included). The ONNX graphs are the plain dynamo export: attnzoo's custom "
             "ops become their standard-op lowerings, which onnxruntime then optimises.")
    write_result("deploy_cpu" + ("-quick" if args.quick else ""), "Deployment at batch 1 on the CPU",
                 [("eager vs torch.compile vs ONNX Runtime", rows)], notes)


if __name__ == "__main__":
    main()
