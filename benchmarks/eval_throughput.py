"""Our evaluation loop against a plain timm-style validation loop, side by side.

Same folder, model, batch size and worker count. The baseline is what timm's
`validate.py` runs: torchvision `ImageFolder` + `timm.data.create_transform(...,
is_training=False)` (float tensors normalised in the workers) + `DataLoader` + forward.
Ours: `stl_bench.evaluate.harness.evaluate` (uint8 crops from the workers, normalised on
the device, bad-image tolerant, per-cell bookkeeping). Each loop runs `--repeats` times
alternately; the best images/s of each is reported, and the ratio ours / baseline.

    python benchmarks/eval_throughput.py                      # CPU, synthetic folder, ~1-2 min
    python benchmarks/eval_throughput.py --data /imagenet/val --model resnet50 --device cuda \
        --batch-size 256 --workers 8 --images 10000 --amp bf16
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image


def make_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """Random-content JPEGs of ImageNet-like sizes under real wnid folder names."""
    from stl_bench.evaluate.suites import imagenet_synsets

    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(imagenet_synsets()[:classes]):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(300, 500)), int(rng.integers(300, 500))
            small = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(root / wnid / f"{i}.JPEG", quality=90)
    return root


def baseline(model: torch.nn.Module, folder: Path, args, device: torch.device, amp) -> tuple[float, int]:
    from torchvision.datasets import ImageFolder

    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg, is_training=False)
    loader = torch.utils.data.DataLoader(ImageFolder(str(folder), transform), batch_size=args.batch_size,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    correct = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(x)
            correct += int((out.argmax(1).cpu() == y).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(loader.dataset) / (time.perf_counter() - start), correct


def ours(model: torch.nn.Module, folder: Path, args, device: torch.device, amp, work: Path) -> tuple[float, int]:
    from stl_bench.deploy.runner import RunnerInfo, TorchRunner
    from stl_bench.evaluate.harness import EvalSetup, evaluate
    from stl_bench.evaluate.loop import LoopConfig
    from stl_bench.evaluate.results import ResultStore
    from stl_bench.evaluate.suites import CellKey, SuiteOptions, SuiteSpec

    info = RunnerInfo(name=args.model, backend="torch", num_classes=model.num_classes,
                      data_config=timm.data.resolve_data_config({}, model=model))
    runner = TorchRunner(model, info, device=device, amp_dtype=amp, channels_last=args.channels_last)
    shutil.rmtree(work, ignore_errors=True)
    setup = EvalSetup(args.model, "bench", "cls", "random", "timm")
    start = time.perf_counter()
    out = evaluate(runner, [SuiteSpec("in1k", "in1k", folder)], SuiteOptions(), ResultStore(work), setup,
                   loop=LoopConfig(batch_size=args.batch_size, workers=args.workers, progress=False))
    if device.type == "cuda":
        torch.cuda.synchronize()
    counts = out.cells[CellKey("in1k")].counts
    return counts.n / (time.perf_counter() - start), counts.correct1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ImageNet-layout folder (wnid class folders); default: a synthetic one")
    p.add_argument("--images", type=int, default=128, help="synthetic folder size (16 classes)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    tmp = Path(tempfile.mkdtemp(prefix="stl_bench_tp_"))
    try:
        folder = Path(args.data) if args.data else make_folder(tmp / "val", 16, max(1, args.images // 16))
        model = timm.create_model(args.model, pretrained=False).eval().to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        results = {"timm-style loop": [], "stl-bench loop": []}
        for _ in range(args.repeats):
            results["timm-style loop"].append(baseline(model, folder, args, device, amp))
            results["stl-bench loop"].append(ours(model, folder, args, device, amp, tmp / "run"))
        print(f"device {device}, model {args.model}, batch {args.batch_size}, workers {args.workers}, "
              f"amp {args.amp}, folder {folder}")
        best = {}
        for name, runs in results.items():
            best[name] = max(r[0] for r in runs)
            print(f"  {name:<16} {best[name]:9.1f} images/s  (runs: {', '.join(f'{r[0]:.1f}' for r in runs)}; "
                  f"top-1 hits {runs[-1][1]})")
        print(f"  ratio stl-bench / timm-style: {best['stl-bench loop'] / best['timm-style loop']:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
