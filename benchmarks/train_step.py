"""STL stage-2 step cost against the plain baseline, and data loading against step demand.

Side by side in one process, same model, batch and device:
  * baseline:  supervised step of the student (class head only)
  * online:    stage-2 step with the frozen labeler run on the clean view (official STL)
  * offline:   stage-2 step from stored top-k label maps (roi_align crop, no teacher)
Each round times every mode once, in turn, so a noisy machine slows all three alike; the
medians over rounds give the ratios (aims: online <= 1.45x, offline <= 1.10x baseline).
Then the training data pipeline (paired views for online, single views otherwise) is
timed in images/s against what one step consumes.

    python benchmarks/train_step.py                        # tiny FAN, demo digits, CPU
    python benchmarks/train_step.py --model fan_small_12_p4_hybrid_token --img-size 224 \
        --batch-size 128 --num-classes 1000 --device cuda --amp --no-data
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _random_label_store(b: int, c: int, grid: tuple[int, int], topk: int):
    """An offline label folder of `b` random label maps, bound to `b` stand-in file names."""
    from stl_bench.data.token_labels import LabelMeta, LabelWriter, TokenLabelStore

    tmp = Path(tempfile.mkdtemp(prefix="stl_bench_labels_"))
    files = [f"c/{i}.png" for i in range(b)]
    writer = LabelWriter(tmp, LabelMeta(grid=grid, topk=topk, num_classes=c,
                                        class_names=[str(i) for i in range(c)], files=files))
    writer.write(torch.arange(b), torch.randn(b, grid[0] * grid[1], c).softmax(-1))
    store = TokenLabelStore(writer.close())
    store.bind(tmp, [(tmp / f, 0) for f in files], [str(i) for i in range(c)])
    return store


def step_times(args: argparse.Namespace) -> dict[str, float]:
    import timm

    import stl_bench  # noqa: F401  (registers FAN)
    from stl_bench.fan.model import TokenPairForward
    from stl_bench.stl.objectives import (
        BaselineObjective,
        OfflineLabels,
        OnlineTeacher,
        StepInputs,
        StudentObjective,
    )

    device = torch.device(args.device)
    torch.manual_seed(0)
    kw = dict(num_classes=args.num_classes)
    if args.img_size:
        kw["img_size"] = args.img_size
    student = timm.create_model(args.model, **kw).to(device).train()
    teacher = timm.create_model(args.model, **kw).to(device)
    size = args.img_size or student.pretrained_cfg["input_size"][-1]
    grid = tuple(student.token_grid((size, size)))
    b, c = args.batch_size, args.num_classes
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)

    store = _random_label_store(b, c, grid, args.topk)

    x = torch.randn(b, 3, size, size, device=device)
    clean = torch.randn(b, 3, size, size, device=device)
    if args.channels_last:
        x, clean = x.contiguous(memory_format=torch.channels_last), clean.contiguous(memory_format=torch.channels_last)
    targets = torch.full((b, c), 0.1 / c, device=device)
    targets[:, 0] += 0.9
    boxes = torch.rand(b, 2).mul(0.5)
    boxes = torch.cat([boxes, boxes + 0.5], 1).to(device)
    inputs = StepInputs(x, targets, clean, boxes, torch.rand(b, device=device) < 0.5, torch.arange(b))

    modes = {
        "baseline": BaselineObjective(),
        "online": StudentObjective(OnlineTeacher(teacher)),
        "offline": StudentObjective(OfflineLabels(store, grid)),
    }
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    # what the trainer calls: the model's own forward (class logits) for the baseline, the
    # (class, token) pair through TokenPairForward for both stage-2 modes
    nets = {"baseline": student, "online": TokenPairForward(student), "offline": TokenPairForward(student)}

    def one_step(name: str) -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            loss, _ = modes[name](nets[name], inputs)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    for name in modes:
        for _ in range(args.warmup):
            one_step(name)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.steps):
        for name in modes:
            times[name].append(one_step(name))
    return {name: statistics.median(t) for name, t in times.items()}


def data_rate(args: argparse.Namespace, clean: bool) -> float:
    """Training images/s of the real pipeline (folder scan, PIL decode, timm augmentation)."""
    from torch.utils.data import DataLoader

    from stl_bench.data.folders import ImageDataset, scan_image_folder
    from stl_bench.data.transforms import AugmentConfig, TrainViews, collate_views
    from stl_bench.train.data import resolve_data_root

    root = resolve_data_root(args.data) / "train"
    index = scan_image_folder(root)
    size = args.img_size or 32
    views = TrainViews(AugmentConfig(), (size, size), clean=clean)
    loader = DataLoader(ImageDataset(index.samples, views), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, collate_fn=collate_views, drop_last=True,
                        persistent_workers=args.workers > 0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    n, t0 = 0, time.perf_counter()
    for batch in itertools.islice(it, args.data_batches):
        n += len(batch)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fan_nano_4_p4_32_token")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--steps", type=int, default=15, help="timed rounds (each times every mode once)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--data", default="demo", help="data root with train/ for the loading benchmark")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data-batches", type=int, default=10)
    p.add_argument("--no-data", dest="data_bench", action="store_false", help="skip the data-loading benchmark")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    t = step_times(args)
    base = t["baseline"]
    print(f"model {args.model}, batch {args.batch_size}, {args.num_classes} classes, {args.device}"
          f"{', AMP' if args.amp else ''}; median of {args.steps} interleaved rounds")
    print(f"{'mode':<10}{'step ms':>10}{'x baseline':>12}{'aim':>8}")
    for name, aim in (("baseline", ""), ("online", "<=1.45"), ("offline", "<=1.10")):
        print(f"{name:<10}{t[name] * 1e3:>10.1f}{t[name] / base:>12.2f}{aim:>8}")
    if args.data_bench:
        for label, clean, demand in (("paired (online)", True, t["online"]), ("single", False, t["baseline"])):
            rate = data_rate(args, clean)
            need = args.batch_size / demand
            print(f"data {label:<16} {rate:>8.0f} img/s with {args.workers} worker(s); step demand {need:.0f} img/s "
                  f"-> {rate / need:.2f}x {'(enough)' if rate >= need else '(data-bound: add workers)'}")


if __name__ == "__main__":
    main()
