"""`stl-bench eval`: evaluate one or more models on IN-1K, IN-A, IN-R, IN-C and folder suites.

Resumable (re-run the same command after a kill: only missing cells are computed),
shardable (`torchrun --nproc_per_node N -m stl_bench.cli eval ...`), and it writes the
leaderboard row, the long-format CSV of every cell and the CE figure.
"""
from __future__ import annotations

import argparse

from stl_bench.commands import arguments as arg

NAME = "eval"
HELP = "evaluate models on IN-1K / IN-A / IN-R / IN-C and folder suites; update the leaderboard"
DESCRIPTION = (
    "Evaluate a checkpoint, ONNX file, TensorRT engine or timm/FAN model name on the robustness "
    "suites. Every finished (suite, corruption, severity) cell is saved in --out, so re-running the "
    "same command after a kill computes only what is missing. Run under torchrun to shard over "
    "processes. Writes --out/results_long.csv, --out/ce_per_corruption.png and a row of --leaderboard. "
    "Several sources (stl-bench eval A.pth B.pth C.onnx --in-c DIR --inc-on-the-fly ...) are scored "
    "together: each batch is decoded, and each IN-C corruption made, once for all of them, and each "
    "model gets its default run folder, cells and leaderboard row exactly as if evaluated alone "
    "(with --out DIR: DIR/<run name>, the file's stem or, for last.pt and the like, its folder). "
    "Clean suites share a pass among models "
    "with the same resize/crop; models of any input size share the on-the-fly IN-C pass (each resizes "
    "the 224 px corrupted crop itself). A source that fails does not stop the others; it is named at "
    "the end and the exit code is 1."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="*", type=arg.model_source,
                   help="checkpoint (.pth/.pth.tar/.safetensors), .onnx file, TensorRT engine, "
                   "or the URL of a `stl-bench serve` endpoint (http://127.0.0.1:8000: scored as served); "
                   "several: scored together, sharing decoding and corruptions")
    p.add_argument("--model", help="timm / FAN model name (architecture for a bare state dict; alone: random weights)")
    p.add_argument("--head", default="auto", choices=["auto", "cls", "fused"],
                   help="token models: fused = class logits + 0.5 x per-class max over tokens (STL's numbers)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--num-classes", type=arg.positive_int, help="class count for a model built by name")
    g = p.add_argument_group("suites (any subset)")
    g.add_argument("--in1k", metavar="DIR", type=arg.existing_folder,
                   help="clean validation folder (ImageNet-1K val, or the model's own classes)")
    g.add_argument("--in-a", metavar="DIR", type=arg.existing_folder, help="ImageNet-A folder (200 wnids)")
    g.add_argument("--in-r", metavar="DIR", type=arg.existing_folder, help="ImageNet-R folder (200 wnids)")
    g.add_argument("--in-c", metavar="DIR", type=arg.existing_folder,
                   help="ImageNet-C tree, or with --inc-on-the-fly a clean val folder")
    g.add_argument("--folder", metavar="NAME=DIR", action="append", default=[], type=arg.named_folder,
                   help="any ImageNet-layout folder as a plain suite (ImageNet-V2, ImageNet-Sketch); repeatable")
    s = p.add_argument_group("scoring")
    s.add_argument("--a-r-mode", default="official", choices=["official", "all1000"],
                   help="IN-A/IN-R: argmax over the suite's 200 logits (official) or over all 1000")
    s.add_argument("--normalizer", default="alexnet",
                   help="CE reference: alexnet (ImageNet-C table), digits (the demo digits' table), or a reference model's results_long.csv")
    s.add_argument("--inc-on-the-fly", action="store_true",
                   help="corrupt --in-c (a clean folder) on the fly: decode once, 19 x 5 cells, per-sample seeds")
    s.add_argument("--inc-corruptions", type=arg.corruption_list,
                   help="comma-separated subset of corruptions (mCE needs all 15 standard)")
    s.add_argument("--inc-severities", type=arg.severity_list, help="comma-separated subset of severities 1..5")
    s.add_argument("--inc-group", type=arg.positive_int,
                   help="on-the-fly cells per decode pass (default: all; smaller saves sooner)")
    r = p.add_argument_group("running")
    r.add_argument("--device", default=None, type=arg.device_or_auto,
                   help="cuda, cuda:1, cpu (default: cuda if available); torchrun: per rank")
    r.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
                   help="autocast dtype (auto: bf16 on GPU, none on CPU)")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster convs on GPU)")
    r.add_argument("--img-size", type=arg.positive_int,
                   help="input size for a checkpoint (default: what the file or its model "
                   "card records, e.g. 384 for the 384-px fine-tunes, else the architecture's)")
    r.add_argument("--batch-size", type=arg.positive_int, default=None,
                   help="images per batch (default 256 on GPU, 64 on CPU)")
    r.add_argument("--workers", type=arg.non_negative_int, default=None,
                   help="decoding worker processes (default: up to 8)")
    r.add_argument("--max-cells", type=arg.positive_int,
                   help="stop after computing this many cells (re-run to continue)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    o = p.add_argument_group("outputs")
    o.add_argument("--out", type=arg.output_folder,
                   help="run folder for cells, long CSV and figure (default: eval_runs/<model>-<hash>-<head>); "
                   "with several sources, the parent of one folder per run (DIR/<run name>)")
    o.add_argument("--leaderboard", default="eval_runs/leaderboard.csv", type=arg.output_file,
                   help="leaderboard CSV to update")
    o.add_argument("--no-figure", action="store_true", help="skip the CE figure")


def _split(value: str | None, cast=str) -> tuple | None:
    if not value:
        return None
    return tuple(cast(v.strip()) for v in value.split(",") if v.strip())


def _suite_options(args: argparse.Namespace):
    from stl_bench.errors import StlBenchError
    from stl_bench.evaluate.suites import SuiteOptions

    kwargs = {"a_r_mode": args.a_r_mode, "inc_on_the_fly": args.inc_on_the_fly}
    if args.inc_corruptions:
        kwargs["inc_corruptions"] = _split(args.inc_corruptions)
    if args.inc_severities:
        try:
            kwargs["inc_severities"] = _split(args.inc_severities, int)
        except ValueError as exc:
            raise StlBenchError(f"--inc-severities expects numbers like 1,3,5 ({exc})") from exc
    return SuiteOptions(**kwargs)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation. `$STL_BENCH_EVAL_SAVE_EVERY_S` (default 60) sets how often a long
    pass saves its running sums, i.e. the most work a kill can cost."""
    import dataclasses
    import os
    import sys
    from pathlib import Path

    from stl_bench.errors import StlBenchError
    from stl_bench.evaluate.run import EvalRequest, describe_result, run_evaluation, run_evaluations, suite_specs

    every = os.environ.get("STL_BENCH_EVAL_SAVE_EVERY_S", "60")
    try:
        save_every_s = float(every)
    except ValueError:
        raise StlBenchError(f"STL_BENCH_EVAL_SAVE_EVERY_S must be a number of seconds, got {every!r}") from None
    given = list(args.source) or [None]
    outs = _run_folders(given, args.out)
    base = EvalRequest(
        suites=suite_specs(args.in1k, args.in_a, args.in_r, args.in_c, args.folder),
        options=_suite_options(args),
        source=None, model=args.model, head=args.head, ema=args.ema, num_classes=args.num_classes,
        normalizer=args.normalizer, device=args.device, amp=args.amp, channels_last=args.channels_last,
        img_size=args.img_size, batch_size=args.batch_size, workers=args.workers, max_cells=args.max_cells,
        inc_group=args.inc_group, progress=not args.no_progress,
        out=Path(args.out) if args.out else None, leaderboard=Path(args.leaderboard), figure=not args.no_figure,
        save_every_s=save_every_s,
    )
    if len(given) == 1:
        result = run_evaluation(dataclasses.replace(base, source=_resolve(given[0])))
        if result.is_main:
            print(describe_result(result))
        return 0
    requests, failed = [], []
    for source, out in zip(given, outs):  # a card name: its cached checkpoint (after the suites are checked)
        try:
            requests.append(dataclasses.replace(base, source=_resolve(source), out=out))
        except StlBenchError as exc:
            failed.append(f"{source}: {exc}")
    batch = run_evaluations(requests)
    mains = [r for r in batch.results if r.is_main]
    if mains:
        print("\n\n".join(describe_result(r) for r in mains))
    failed += [f.describe() for f in batch.failures]
    if int(os.environ.get("RANK", "0")) == 0:
        for line in failed:  # at the end, one line each: the others' results are written above
            print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0


def _run_folders(sources: list, out: str | None) -> list:
    """With several sources, `--out DIR` is the parent of one run folder per model, named as
    the leaderboard names the run (`DIR/labeler` for `runs/labeler/last.pt`); without it each
    model gets its default folder. One source: `--out` is its run folder, as always."""
    from pathlib import Path

    from stl_bench.errors import StlBenchError
    from stl_bench.evaluate.leaderboard import run_name

    if len(sources) == 1 or not out:
        return [Path(out) if out else None] * len(sources)
    names = [run_name(source) for source in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StlBenchError(f"--out {out}: several sources would share the run folder {', '.join(repeated)}; "
                            "give them different file or folder names, or drop --out (default folders)")
    return [Path(out) / name for name in names]


def _resolve(source: str | None):
    from stl_bench.fan.hub import resolve_source

    return resolve_source(source)
