"""On-the-fly ImageNet-C against reading the pre-written folders, for the same images.

Writes an ImageNet-C tree from a clean folder the way ImageNet-C was made (resize 256,
crop 224, corrupt with the per-sample seed of the clean file's relative path, JPEG
quality 85), then evaluates the same model on the same cells twice: reading those JPEG
files (identity geometry), and corrupting on the fly (each clean file decoded once for
all cells). Writing the tree is not timed. Both paths draw the same per-sample seeds,
so the per-cell counts should agree; the script prints how many cells do.

    python benchmarks/inc_on_the_fly.py                       # CPU, small defaults, ~1-2 min
    python benchmarks/inc_on_the_fly.py --device cuda --images 1000 --corruptions all \
        --model resnet50 --batch-size 128 --workers 8 --amp bf16
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_throughput import make_folder  # noqa: E402

DEFAULT_CORRUPTIONS = "gaussian_noise,fog,contrast"


def write_tree(clean: Path, out: Path, corruptions: list[str], severities: list[int]) -> int:
    """The ImageNet-C files for `clean`, with the same seeds on-the-fly evaluation uses."""
    from stl_bench.data.corruptions import corrupt_batch, imagenet_c_pipeline, sample_seed
    from stl_bench.data.folders import load_rgb, scan_image_folder

    index = scan_image_folder(clean)
    keys = [p.relative_to(clean).as_posix() for p, _ in index.samples]
    crops = torch.stack([imagenet_c_pipeline(load_rgb(p)) for p, _ in index.samples])
    written = 0
    for c in corruptions:
        for s in severities:
            seeds = [sample_seed(k, c, s) for k in keys]
            images = corrupt_batch(crops, c, s, seeds)
            for key, img in zip(keys, images):
                target = out / c / str(s) / Path(key).with_suffix(".JPEG")
                target.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=85)
                target.write_bytes(buf.getvalue())
                written += 1
    return written


def run(model, args, device, amp, root: Path, on_the_fly: bool, corruptions, severities):
    from stl_bench.deploy.runner import RunnerInfo, TorchRunner
    from stl_bench.evaluate.harness import EvalSetup, evaluate
    from stl_bench.evaluate.loop import LoopConfig
    from stl_bench.evaluate.results import ResultStore
    from stl_bench.evaluate.suites import SuiteOptions, SuiteSpec

    info = RunnerInfo(name=args.model, backend="torch", num_classes=model.num_classes,
                      data_config=timm.data.resolve_data_config({}, model=model))
    runner = TorchRunner(model, info, device=device, amp_dtype=amp, channels_last=args.channels_last)
    work = root.parent / ("run_fly" if on_the_fly else "run_files")
    shutil.rmtree(work, ignore_errors=True)
    opts = SuiteOptions(inc_on_the_fly=on_the_fly, inc_corruptions=tuple(corruptions),
                        inc_severities=tuple(severities))
    start = time.perf_counter()
    out = evaluate(runner, [SuiteSpec("in-c", "in-c", root)], opts, ResultStore(work),
                   EvalSetup(args.model, "bench", "cls", "random", "timm"),
                   loop=LoopConfig(batch_size=args.batch_size, workers=args.workers, progress=False))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    n = sum(c.counts.n for c in out.cells.values())
    return n / seconds, {k.id: c.counts.correct1 for k, c in out.cells.items()}


def main() -> None:
    from stl_bench.evaluate.alexnet import ALL_CORRUPTIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clean", help="clean ImageNet-layout folder; default: a synthetic one")
    p.add_argument("--images", type=int, default=16, help="synthetic clean images (8 classes)")
    p.add_argument("--corruptions", default=DEFAULT_CORRUPTIONS, help="comma list, or 'all' for the 19")
    p.add_argument("--severities", default="1,2,3,4,5")
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()

    corruptions = list(ALL_CORRUPTIONS) if args.corruptions == "all" else args.corruptions.split(",")
    severities = [int(s) for s in args.severities.split(",")]
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    tmp = Path(tempfile.mkdtemp(prefix="stl_bench_incfly_"))
    try:
        clean = Path(args.clean) if args.clean else make_folder(tmp / "clean", 8, max(1, args.images // 8))
        t0 = time.perf_counter()
        written = write_tree(clean, tmp / "inc", corruptions, severities)
        print(f"wrote {written} ImageNet-C files in {time.perf_counter() - t0:.1f} s (not timed below)")
        model = timm.create_model(args.model, pretrained=False).eval().to(device)
        files_ips, files_counts = run(model, args, device, amp, tmp / "inc", False, corruptions, severities)
        fly_ips, fly_counts = run(model, args, device, amp, clean, True, corruptions, severities)
        same = sum(files_counts[k] == fly_counts.get(k) for k in files_counts)
        print(f"device {device}, model {args.model}, batch {args.batch_size}, workers {args.workers}, "
              f"{len(corruptions)} corruptions x {len(severities)} severities")
        print(f"  pre-written folders  {files_ips:9.1f} images/s")
        print(f"  on the fly           {fly_ips:9.1f} images/s")
        print(f"  ratio on-the-fly / folders: {fly_ips / files_ips:.2f}x; cells with equal correct counts: "
              f"{same}/{len(files_counts)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
