"""argparse `type=` checks for every kind of value the CLI takes.

A bad value is refused while the command line is parsed, before any model is loaded
or any file written: argparse prints `stl-bench CMD: error: argument --flag: MESSAGE`
on one line and exits with code 2. Each check raises `argparse.ArgumentTypeError`
(argparse's own message for a plain ValueError would name this module's function
instead of saying what is wrong). File checks name the path and the fix.

Output checks only look: a missing output folder is not created here (the command
creates it when it writes); writability is probed in the nearest folder that exists,
with `stl_bench.io.ensure_writable_folder`, whose probe file is removed at once, so a
refused command leaves nothing behind.

This module stays light (no torch): `stl-bench --help` imports it.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
from pathlib import Path
from typing import Callable

from stl_bench.errors import StlBenchError

Check = Callable[[str], object]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".safetensors", ".bin", ".ckpt")
EXPORTED_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")
# cpu, cuda, cuda:N, mps; "auto" only where the command resolves it (see `device_or_auto`)
_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")
_FILE_SIZE = re.compile(r"\s*\d+\s*(b|kb|mb|gb|tb)\s*", re.IGNORECASE)  # what Gradio's upload limit parses


def _named(check: Check, name: str) -> Check:
    """Give a built check a name: argparse shows it in `--help` metavars and its own messages."""
    check.__name__ = check.__qualname__ = name
    return check


def _number(text: str, cast: type, kind: str) -> float:
    try:
        value = cast(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan and inf pass float()
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
    return value


def _at_least(text: str, cast: type, kind: str, low: float, inclusive: bool) -> float:
    value = _number(text, cast, kind)
    if value < low or (value == low and not inclusive):
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text}")
    return cast(value)


def positive_int(text: str) -> int:
    return _at_least(text, int, "a positive integer", 1, inclusive=True)


def non_negative_int(text: str) -> int:
    return _at_least(text, int, "an integer of 0 or more", 0, inclusive=True)


def positive_float(text: str) -> float:
    return _at_least(text, float, "a positive number", 0, inclusive=False)


def non_negative_float(text: str) -> float:
    return _at_least(text, float, "a number of 0 or more", 0, inclusive=True)


def fraction(low: float = 0.0, high: float = 1.0, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A number in a range, ends included unless `*_open` (a probability is `fraction()`)."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(text: str) -> float:
        value = _number(text, float, f"a number in {span}")
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {text}")
        return float(value)

    return _named(check, "fraction")


probability = _named(fraction(), "probability")


def int_range(low: int, high: int) -> Check:
    """An integer in [low, high] (an ONNX opset, a severity)."""

    def check(text: str) -> int:
        value = _number(text, int, f"an integer in {low}..{high}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low}..{high}, got {text}")
        return int(value)

    return _named(check, "int_range")


def port(text: str) -> int:
    """A TCP port to listen on (1..65535)."""
    value = _number(text, int, "a port number in 1..65535")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {text}")
    return int(value)


def device(text: str) -> str:
    """A torch device name; whether that device exists here is the command's check (a served
    replica may run on another machine)."""
    if not _DEVICE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"must be a device: cpu, cuda or cuda:N (e.g. cuda:1), got {text!r}")
    return text.strip()


def device_or_auto(text: str) -> str:
    """`device`, or "auto" (a GPU when torch sees one)."""
    return "auto" if text.strip() == "auto" else device(text)


def file_size(text: str) -> str:
    """A size with its unit, as upload limits take it: 10mb, 1gb (whole numbers)."""
    if not _FILE_SIZE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be a whole number with a unit (b, kb, mb, gb, tb) like 10mb, "
                                         f"got {text!r}")
    return text.replace(" ", "")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def corruption_list(text: str) -> str:
    """Comma-separated corruption names or groups (all, standard, extra), as a canonical string.

    The value stays a comma-separated string of known names, groups expanded and repeats
    dropped, so command code that splits it meets only names that exist.
    """
    from stl_bench.data.corruptions.names import ALL_CORRUPTIONS, GROUPS

    names: list[str] = []
    for item in _names(text):
        if item not in GROUPS and item not in ALL_CORRUPTIONS:
            close = difflib.get_close_matches(item, [*ALL_CORRUPTIONS, *GROUPS], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(GROUPS)}, " \
                   f"{', '.join(ALL_CORRUPTIONS)}"
            raise argparse.ArgumentTypeError(f"unknown corruption {item!r}{hint}")
        names += [n for n in GROUPS.get(item, (item,)) if n not in names]
    if not names:
        raise argparse.ArgumentTypeError(f"no corruption named in {text!r}; give names or one of {', '.join(GROUPS)}")
    return ",".join(names)


def severity_list(text: str) -> str:
    """Comma-separated severities 1..5, as a canonical string (repeats dropped)."""
    from stl_bench.data.corruptions.names import SEVERITIES

    values: list[str] = []
    for item in _names(text):
        if not item.isdigit() or int(item) not in SEVERITIES:
            raise argparse.ArgumentTypeError(f"severities are integers 1..5 separated by commas, got {item!r}")
        if str(int(item)) not in values:
            values.append(str(int(item)))
    if not values:
        raise argparse.ArgumentTypeError(f"no severity in {text!r}; give integers 1..5 separated by commas")
    return ",".join(values)


def existing_file(text: str) -> Path:
    """A file that exists and can be read."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"file {path} does not exist; check the path")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file; pass a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"file {path} cannot be read (permission denied); fix its permissions")
    return path


def existing_folder(text: str) -> Path:
    """A folder that exists and can be listed."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"folder {path} does not exist; check the path")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder; pass the folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"folder {path} cannot be read (permission denied); fix its permissions")
    return path


def model_source(text: str) -> str:
    """What a model may be given as: a checkpoint, ONNX file or engine (which must exist), an
    http(s):// endpoint URL, or a bare name (a timm model or a model card) that the command resolves."""
    if text.lower().startswith(("http://", "https://")):
        return text
    path = Path(text).expanduser()
    looks_like_path = os.sep in text or "/" in text or path.suffix.lower() in CHECKPOINT_SUFFIXES + EXPORTED_SUFFIXES
    if not path.exists() and not looks_like_path:
        return text
    if not path.exists():
        raise argparse.ArgumentTypeError(f"model file {path} does not exist; check the path")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; pass a checkpoint, ONNX file or engine")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"model file {path} cannot be read (permission denied); fix its permissions")
    return text


def _check_can_create(target: Path, folder: Path) -> None:
    """Refuse `target` unless `folder` (which is or would hold it) is, or can be made, writable.

    Nothing is created: a missing folder is probed through its nearest existing parent.
    """
    from stl_bench.io import ensure_writable_folder

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {target}: {probe} is a file, not a folder; "
                                         "choose another location")
    try:
        ensure_writable_folder(probe, "output")
    except StlBenchError as exc:  # its message names the folder; name the target too when it differs
        raise argparse.ArgumentTypeError(str(exc) if probe == target else f"cannot write {target}: {exc}") from None


def output_file(text: str) -> Path:
    """A file to write: not a folder, in a folder that is (or can be made) writable."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; pass a file name to write")
    _check_can_create(path, path.parent)
    return path


def output_folder(text: str) -> Path:
    """A folder to write in: a writable folder, or one that can be made in a writable place."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder; choose a folder to write in")
    _check_can_create(path, path)
    return path


def named_folder(text: str) -> str:
    """`NAME=DIR` with an existing DIR (a folder suite); the value is kept as given."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expects NAME=DIR (for example in-v2=/data/imagenetv2), got {text!r}")
    existing_folder(folder)
    return text


def as_text(check: Check) -> Check:
    """`check`, giving back the value as a string (for config fields saved to JSON)."""
    return _named(lambda text: str(check(text)), check.__name__)
