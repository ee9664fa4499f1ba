"""The `stl-bench` command line: one entry point, one module per verb.

Sub-commands live in `stl_bench.commands`, one module each, listed by name in
`COMMANDS`: the table is the one place that says which commands exist and in which
order `--help` shows them (grep finds them; a helper module beside them is just a
helper). User errors (`StlBenchError`) are printed as one line without a traceback,
and the exit code is non-zero: 2 for a flag refused while parsing (the checks in
`stl_bench.commands.arguments`, before any work starts), 1 for what a command finds wrong
once it runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType

from stl_bench import __version__
from stl_bench.errors import StlBenchError

COMMANDS: tuple[str, ...] = (
    "demo", "models", "train", "label", "eval", "leaderboard", "corrupt", "export", "bench", "serve", "app",
)
"""The `stl_bench.commands` modules that are sub-commands, in display order."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line: `stl-bench eval: error: argument --batch-size: ...`.

    The usage block argparse prints first would bury the line that says what is wrong;
    `--help` still shows it. Sub-command parsers are made from the same class.
    """

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_modules() -> list[ModuleType]:
    return [importlib.import_module(f"stl_bench.commands.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stl-bench",
        description=(
            "Robust vision transformers: FAN models with Self-emerging Token Labeling (STL). "
            "Train both STL stages, evaluate on IN-1K / IN-A / IN-R / IN-C, export to "
            "ONNX / TensorRT, and look at token-label maps."
        ),
        epilog="Run `stl-bench COMMAND --help` for a command's options. Start with `stl-bench demo`.",
    )
    parser.add_argument("--version", action="version", version=f"stl-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except StlBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `stl-bench ... | head`: the reader left; that is not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a re-run continues from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
