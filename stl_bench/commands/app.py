"""`stl-bench app`: the Gradio page that shows token-label maps for any image."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stl_bench.commands import arguments as arg

NAME = "app"
HELP = "serve a web page that shows per-patch token-label maps for any image"
DESCRIPTION = (
    "Serve a Gradio page: upload an image and see the top-5 classes, the per-patch token-label "
    "map, the per-patch confidence, the tokens a hard Gumbel-Softmax draw keeps, and the "
    "labeler and student maps side by side. With no --model it opens the runs that "
    "`stl-bench demo` writes. Binds to 127.0.0.1 unless --host says otherwise."
)

log = logging.getLogger(__name__)

# app/examples in a source checkout; an installed package has no app folder and no examples.
_REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "app" / "examples"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="a checkpoint (.pt/.pth/.pth.tar/.safetensors), .onnx file or model card "
                        "name; repeat for more")
    parser.add_argument("--teacher", metavar="PATH", default=None,
                        help="the stage-1 labeler (a file or a model card name); with it, the first "
                        "--model is shown as its student side by side")
    parser.add_argument("--demo-dir", default="stl_bench_runs/demo",
                        help="where `stl-bench demo` wrote labeler/, student/, baseline/ (used when no --model)")
    parser.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                        help="checkpoint weights: EMA when present (auto), or force one")
    parser.add_argument("--head", choices=("auto", "cls", "fused"), default="auto",
                        help="class score of token models: fused = class + 0.5 x token max (STL's evaluation)")
    parser.add_argument("--device", default="cpu", type=arg.device, help="torch device for checkpoints")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the page to the network")
    parser.add_argument("--port", type=arg.port, default=7860, help="port to serve on")
    parser.add_argument("--max-file-size", default="10mb", type=arg.file_size, help="largest upload accepted")
    parser.add_argument("--concurrency", type=arg.positive_int, default=2,
                        help="requests computed at once (the rest queue)")
    parser.add_argument("--threads", type=arg.positive_int, default=1,
                        help="torch threads per request: batch-1 requests gain little from more, and on a busy "
                             "CPU extra threads cost far more than they give (--concurrency runs requests in parallel)")
    parser.add_argument("--examples", default=None, metavar="DIR", type=arg.existing_folder,
                        help="folder of example images (default: the checkout's app/examples)")


def example_files(folder: Path | None) -> list[Path]:
    """Image files in `folder`, sorted; none when it does not exist."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def build_from_args(args: argparse.Namespace):
    """Open the models and build the page (gradio is imported here, not at CLI start)."""
    from stl_bench.fan.hub import resolve_source
    from stl_bench.ui.blocks import build_demo
    from stl_bench.ui.catalog import build_catalog

    catalog = build_catalog(  # a model card's name: its cached checkpoint
        models=[Path(resolve_source(m)) for m in args.model],
        teacher=Path(resolve_source(args.teacher)) if args.teacher else None,
        demo_root=Path(args.demo_dir),
        device=args.device,
        head=args.head,
        weights=args.weights,
    )
    if not catalog.entries:
        log.warning(catalog.empty_message)
    examples = example_files(Path(args.examples) if args.examples else _REPO_EXAMPLES)
    return build_demo(catalog, examples)


def run(args: argparse.Namespace) -> int:
    from stl_bench.errors import StlBenchError
    from stl_bench.ui.blocks import launch

    if args.concurrency < 1 or args.threads < 1:
        raise StlBenchError("--concurrency and --threads must be at least 1")
    import torch

    # Measured on 2 shared cores: one nano forward took 8-12 ms median with 1 thread and
    # 50-100 ms (p90 over 1 s) with 2, because OpenMP threads wait on each other.
    torch.set_num_threads(args.threads)
    # Gradio checks its own start-up over HTTP; httpx would log each of those requests at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    demo = build_from_args(args)
    log.info("serving on http://%s:%d (Ctrl+C stops)", args.host, args.port)
    launch(demo, host=args.host, port=args.port, max_file_size=args.max_file_size, concurrency=args.concurrency)
    return 0
