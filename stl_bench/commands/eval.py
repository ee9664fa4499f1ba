"""`stl-bench eval`: evaluate one model on IN-1K, IN-A, IN-R, IN-C and folder suites.

Resumable (re-run the same command after a kill: only missing cells are computed),
shardable (`torchrun --nproc_per_node N -m stl_bench.cli eval ...`), and it writes the
leaderboard row, the long-format CSV of every cell and the CE figure.
"""
from __future__ import annotations

import argparse
import logging
import re

NAME = "eval"
HELP = "evaluate a model on IN-1K / IN-A / IN-R / IN-C and folder suites; update the leaderboard"
DESCRIPTION = (
    "Evaluate a checkpoint, ONNX file, TensorRT engine or timm/FAN model name on the robustness "
    "suites. Every finished (suite, corruption, severity) cell is saved in --out, so re-running the "
    "same command after a kill computes only what is missing. Run under torchrun to shard over "
    "processes. Writes --out/results_long.csv, --out/ce_per_corruption.png and a row of --leaderboard."
)

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="checkpoint (.pth/.pth.tar/.safetensors), .onnx file, TensorRT engine, "
                   "or the URL of a `stl-bench serve` endpoint (http://127.0.0.1:8000: scored as served)")
    p.add_argument("--model", help="timm / FAN model name (architecture for a bare state dict; alone: random weights)")
    p.add_argument("--head", default="auto", choices=["auto", "cls", "fused"],
                   help="token models: fused = class logits + 0.5 x per-class max over tokens (STL's numbers)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--num-classes", type=int, help="class count for a model built by name")
    g = p.add_argument_group("suites (any subset)")
    g.add_argument("--in1k", metavar="DIR", help="clean validation folder (ImageNet-1K val, or the model's own classes)")
    g.add_argument("--in-a", metavar="DIR", help="ImageNet-A folder (200 wnids)")
    g.add_argument("--in-r", metavar="DIR", help="ImageNet-R folder (200 wnids)")
    g.add_argument("--in-c", metavar="DIR", help="ImageNet-C tree, or with --inc-on-the-fly a clean val folder")
    g.add_argument("--folder", metavar="NAME=DIR", action="append", default=[],
                   help="any ImageNet-layout folder as a plain suite (ImageNet-V2, ImageNet-Sketch); repeatable")
    s = p.add_argument_group("scoring")
    s.add_argument("--a-r-mode", default="official", choices=["official", "all1000"],
                   help="IN-A/IN-R: argmax over the suite's 200 logits (official) or over all 1000")
    s.add_argument("--normalizer", default="alexnet",
                   help="CE reference: alexnet (built-in table) or a reference model's results_long.csv")
    s.add_argument("--inc-on-the-fly", action="store_true",
                   help="corrupt --in-c (a clean folder) on the fly: decode once, 19 x 5 cells, per-sample seeds")
    s.add_argument("--inc-corruptions", help="comma-separated subset of corruptions (mCE needs all 15 standard)")
    s.add_argument("--inc-severities", help="comma-separated subset of severities 1..5")
    s.add_argument("--inc-group", type=int, help="on-the-fly cells per decode pass (default: all; smaller saves sooner)")
    r = p.add_argument_group("running")
    r.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available); torchrun: per rank")
    r.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
                   help="autocast dtype (auto: bf16 on GPU, none on CPU)")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster convs on GPU)")
    r.add_argument("--img-size", type=int, help="input size for a checkpoint (default: what the file or its model "
                   "card records, e.g. 384 for the 384-px fine-tunes, else the architecture's)")
    r.add_argument("--batch-size", type=int, default=None, help="images per batch (default 256 on GPU, 64 on CPU)")
    r.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: up to 8)")
    r.add_argument("--max-cells", type=int, help="stop after computing this many cells (re-run to continue)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    o = p.add_argument_group("outputs")
    o.add_argument("--out", help="run folder for cells, long CSV and figure (default: eval_runs/<model>-<hash>-<head>)")
    o.add_argument("--leaderboard", default="eval_runs/leaderboard.csv", help="leaderboard CSV to update")
    o.add_argument("--no-figure", action="store_true", help="skip the CE figure")


def _split(value: str | None, cast=str) -> tuple | None:
    if not value:
        return None
    return tuple(cast(v.strip()) for v in value.split(",") if v.strip())


def _suite_specs(args: argparse.Namespace):
    from pathlib import Path

    from stl_bench.errors import StlBenchError
    from stl_bench.evaluate.suites import SUITE_KINDS, SuiteSpec

    specs = []
    for kind, value in (("in1k", args.in1k), ("in-a", args.in_a), ("in-r", args.in_r), ("in-c", args.in_c)):
        if value:
            specs.append(SuiteSpec(kind, kind, Path(value)))
    for item in args.folder:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise StlBenchError(f"--folder expects NAME=DIR (for example in-v2=/data/imagenetv2), got {item!r}")
        if name in SUITE_KINDS or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise StlBenchError(f"--folder name {name!r} is reserved or not a plain name; pick e.g. in-v2 or sketch")
        specs.append(SuiteSpec(name, "folder", Path(path)))
    if not specs:
        raise StlBenchError("no suite given; pass at least one of --in1k, --in-a, --in-r, --in-c, --folder NAME=DIR")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise StlBenchError(f"suite names repeat: {names}")
    return specs


def run(args: argparse.Namespace) -> int:
    import datetime
    import math
    import os
    from pathlib import Path

    import timm
    import torch

    import stl_bench
    from stl_bench.deploy import runner as runner_mod
    from stl_bench.errors import StlBenchError
    from stl_bench.distributed import DistContext
    from stl_bench.evaluate.harness import EvalSetup, evaluate
    from stl_bench.evaluate.leaderboard import update_leaderboard
    from stl_bench.evaluate.loop import LoopConfig
    from stl_bench.evaluate.preprocess import Preprocessing
    from stl_bench.evaluate.reference import resolve_reference
    from stl_bench.evaluate.report import format_summary, long_table, summarize
    from stl_bench.evaluate.results import ResultStore, atomic_write_text
    from stl_bench.fan.checkpoint import file_sha256
    from stl_bench.evaluate.suites import SuiteOptions

    specs = _suite_specs(args)
    options_kwargs = {"a_r_mode": args.a_r_mode, "inc_on_the_fly": args.inc_on_the_fly}
    if args.inc_corruptions:
        options_kwargs["inc_corruptions"] = _split(args.inc_corruptions)
    if args.inc_severities:
        try:
            options_kwargs["inc_severities"] = _split(args.inc_severities, int)
        except ValueError as exc:
            raise StlBenchError(f"--inc-severities expects numbers like 1,3,5 ({exc})") from exc
    options = SuiteOptions(**options_kwargs)
    reference = resolve_reference(args.normalizer)  # fail before the model loads

    dist = DistContext.from_env(args.device)
    device = dist.device
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None,
           "auto": torch.bfloat16 if device.type == "cuda" else None}[args.amp]

    runner = runner_mod.open_runner(args.source, model_name=args.model, device=device, head=args.head,
                                    use_ema=args.ema, num_classes=args.num_classes, amp_dtype=amp,
                                    channels_last=args.channels_last, img_size=args.img_size)
    info = runner.info
    prep = Preprocessing.from_data_config(info.data_config)
    served = runner_mod.is_endpoint_url(args.source)
    if served:
        checkpoint = (info.extra.get("checkpoint_sha256") or "served")[:16]
    elif args.source:
        checkpoint = file_sha256(args.source)[:16]
    else:
        checkpoint = "random-init"
    setup = EvalSetup(model=info.name, checkpoint=checkpoint, head=info.head, weights=info.weights or "",
                      preprocessing=prep.describe())
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", info.name)
    # a served model's cells never mix with an in-process run of the same checkpoint
    run_dir = Path(args.out or Path("eval_runs") / f"{safe}-{checkpoint[:12]}-{info.head}{'-served' if served else ''}")
    loop = LoopConfig(
        batch_size=args.batch_size or (256 if device.type == "cuda" else 64),
        workers=args.workers if args.workers is not None else min(8, os.cpu_count() or 1),
        progress=not args.no_progress,
    )
    outcome = evaluate(runner, specs, options, ResultStore(run_dir), setup, loop=loop, dist=dist, prep=prep,
                       max_cells=args.max_cells, inc_group=args.inc_group)
    if not dist.is_main:
        return 0

    summary = summarize(outcome.plans, outcome.cells, reference)
    atomic_write_text(run_dir / "results_long.csv", long_table(outcome.cells).to_csv(index=False))
    figure = None
    if summary.corruption is not None and not args.no_figure:
        from stl_bench.evaluate.figures import plot_ce

        figure = plot_ce(summary.corruption, info.name, reference.name, run_dir / "ce_per_corruption.png")
    if not outcome.complete:
        summary.notes.insert(0, f"stopped after --max-cells {args.max_cells}; re-run the same command to continue")
    kinds = {s.kind for s in specs}
    params = None
    model = getattr(runner, "model", None)
    if isinstance(model, torch.nn.Module):
        params = sum(p.numel() for p in model.parameters())
    elif info.extra.get("params"):
        params = int(info.extra["params"])
    row = {
        **{k: getattr(setup, k) for k in ("model", "checkpoint", "head", "weights", "preprocessing")},
        "params": params,
        "input_size": "x".join(str(v) for v in prep.input_size),
        "backend": info.backend,
        "images_per_s": None if math.isnan(outcome.images_per_s) else round(outcome.images_per_s, 2),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": f"stl-bench {stl_bench.__version__}, torch {torch.__version__}, timm {timm.__version__}",
        "checkpoint_path": str(args.source) if args.source else "",
        "a_r_mode": options.a_r_mode if kinds & {"in-a", "in-r"} else None,
        "normalizer": reference.name if "in-c" in kinds else None,
        "inc_mode": ("on-the-fly" if options.inc_on_the_fly else "files") if "in-c" in kinds else None,
        "bad_images": summary.bad_images,
        "notes": "; ".join(summary.notes) or None,
        **{k: (None if v is None or math.isnan(v) else round(v, 4)) for k, v in summary.metrics.items()},
    }
    update_leaderboard(Path(args.leaderboard), row)
    print(format_summary(f"{info.name} ({info.head} head, weights {info.weights or 'n/a'})", summary,
                         outcome.images_per_s if outcome.computed else None))
    print(f"cells: {len(outcome.computed)} computed now, {len(outcome.cells)} stored in {run_dir}")
    print(f"wrote {run_dir / 'results_long.csv'}" + (f", {figure}" if figure else "") + f"; updated {args.leaderboard}")
    return 0
