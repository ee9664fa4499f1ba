"""`stl-bench corrupt SRC DST`: write an ImageNet-C tree from any image-folder tree.

This module parses the flags; the recipe, the resumption and the writing are
`stl_bench.data.corruptions.tree`'s.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stl_bench.commands import arguments as arg

NAME = "corrupt"
HELP = "write ImageNet-C corrupted copies of an image folder (19 corruptions x 5 severities)"
DESCRIPTION = (
    "Read SRC/<class>/<images>, apply the ImageNet-C pipeline (resize 256, centre crop 224; "
    "see --size), corrupt and write JPEG quality 85 files to "
    "DST/<corruption>/<severity>/<class>/<file>.JPEG. Outputs that already exist are skipped, so "
    "re-running the same command after a kill finishes the job. Unreadable images are skipped "
    "and listed at the end."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=arg.existing_folder, help="image folder: SRC/<class>/<image files>")
    p.add_argument("dst", type=arg.output_folder, help="output root: DST/<corruption>/<severity>/<class>/<file>.JPEG")
    p.add_argument("--corruptions", default="all", type=arg.corruption_list,
                   help="comma-separated corruption names, or all (19), standard (the 15 of mCE) or extra (4)")
    p.add_argument("--severities", default="1,2,3,4,5", type=arg.severity_list,
                   help="comma-separated severities in 1..5")
    p.add_argument("--size", type=arg.non_negative_int, default=224,
                   help="crop size: resize the shorter side to size*256/224, centre crop size "
                        "(ImageNet-C: 224); 0 keeps the images as they are (e.g. the 32 px demo data)")
    p.add_argument("--batch-size", type=arg.positive_int, default=32, help="images corrupted together")
    p.add_argument("--device", default="auto", type=arg.device_or_auto,
                   help="cpu, cuda, cuda:1 (auto: cuda if available)")
    p.add_argument("--workers", type=arg.non_negative_int, default=None,
                   help="decoding processes and JPEG-writing threads (default: min(4, CPU count))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_corruptions(text: str) -> list[str]:
    from stl_bench.data.corruptions import get_corruption
    from stl_bench.data.corruptions.names import GROUPS

    names: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        for name in GROUPS.get(item) or (get_corruption(item).name,):
            if name not in names:
                names.append(name)
    if not names:
        from stl_bench.errors import StlBenchError

        raise StlBenchError(f"--corruptions is empty; give names or one of {', '.join(GROUPS)}")
    return names


def _parse_severities(text: str) -> list[int]:
    from stl_bench.data.corruptions.names import SEVERITIES
    from stl_bench.errors import StlBenchError

    values: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) not in SEVERITIES:
            raise StlBenchError(f"--severities takes integers 1..5 separated by commas, got {item!r}")
        if int(item) not in values:
            values.append(int(item))
    if not values:
        raise StlBenchError("--severities is empty; give integers 1..5 separated by commas")
    return values


def run(args: argparse.Namespace) -> int:
    from stl_bench.data.corruptions.tree import TreeRequest, write_imagenet_c_tree

    request = TreeRequest(
        src=Path(args.src), dst=Path(args.dst),
        corruptions=_parse_corruptions(args.corruptions), severities=_parse_severities(args.severities),
        size=args.size, batch_size=args.batch_size, device=args.device, workers=args.workers,
        progress=not args.no_progress,
    )
    write_imagenet_c_tree(request)
    return 0
