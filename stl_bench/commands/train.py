"""`stl-bench train`: STL stage 1 (labeler), stage 2 (student) or a plain baseline.

Every field of `TrainConfig` is a flag, its docstring the help text. `--preset` loads
the official recipe for a size (or `demo`); flags given on the command line win. With
`--resume` the run's own last.pt or config.json decides, and a flag that contradicts it
is refused (`stl_bench.train.resume.MAY_CHANGE` lists the ones that may change).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING
from typing import Any

from stl_bench.commands import arguments as arg

NAME = "train"
HELP = "train a token labeler (stage 1), an STL student (stage 2) or a baseline"
DESCRIPTION = (
    "Train with the one STL loop. Reproduce the official FAN-S hybrid STL run with "
    "`stl-bench train --preset fan_small_hybrid --stage labeler --data /imagenet --output runs/fan_s_tl`, then "
    "`stl-bench train --preset fan_small_hybrid --stage student --teacher runs/fan_s_tl/last.pt --data /imagenet "
    "--output runs/fan_s_stl` (under torchrun for several GPUs). Try it on the built-in digits: "
    "`stl-bench train --preset demo --stage labeler --output runs/demo_tl`."
)


# The range each numeric flag accepts (and the checked paths), refused while parsing;
# a flag not listed takes any value of its type. Zero is allowed where it means "off".
_NON_NEGATIVE_FLOAT = ("warmup_epochs", "weight_decay", "warmup_lr", "min_lr", "cls_weight", "dense_weight",
                       "mixup", "cutmix", "checkpoint_minutes")
_CHECKS: dict[str, arg.Check] = {
    **dict.fromkeys(("epochs", "batch_size", "grad_accum_steps", "eval_batch_size", "img_size", "threads",
                     "max_train_samples", "steps_per_epoch", "log_every", "recount"), arg.positive_int),
    **dict.fromkeys(("cooldown_epochs", "workers", "checkpoint_every", "seed"), arg.non_negative_int),
    **dict.fromkeys(("lr", "opt_eps", "gumbel_tau", "clip_grad", "ratio"), arg.positive_float),
    **dict.fromkeys(_NON_NEGATIVE_FLOAT, arg.non_negative_float),
    **dict.fromkeys(("hflip", "reprob", "mixup_prob", "mixup_switch_prob", "model_ema_decay"), arg.probability),
    **dict.fromkeys(("drop_path", "token_smoothing", "smoothing"), arg.fraction(high_open=True)),
    **dict.fromkeys(("crop_pct", "scale"), arg.fraction(low_open=True)),
    "device": arg.device_or_auto,
    "output": arg.as_text(arg.output_folder),
    "teacher": arg.as_text(arg.model_source),
    "token_labels": arg.as_text(arg.existing_folder),
}


def _parser_for(name: str, type_str: str) -> dict[str, Any]:
    """argparse options for a dataclass field, from its (string) annotation and its checked range."""
    base = type_str.replace(" | None", "").replace("Optional[", "").rstrip("]") if "None" in type_str else type_str
    if base == "bool":
        return {"action": argparse.BooleanOptionalAction}
    check = _CHECKS.get(name)
    if base.startswith("tuple[float"):
        return {"type": check or float, "nargs": 2, "metavar": ("LOW", "HIGH")}
    return {"type": check or {"int": int, "float": float, "str": str}[base]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stl_bench.train.config import PRESETS, TrainConfig, field_docs, flag_fields

    docs = field_docs(TrainConfig)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a recipe: the official one per size, or 'demo'")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="continue a run from its own files: CKPT, or with --output alone <output>/last.pt "
                             "(before the first checkpoint: the run's config.json; no run there: a new one); other "
                             "flags must match the run, except --epochs, --data, --workers, --threads and logging/"
                             "checkpoint timing")
    for f, _ in flag_fields():
        default = f.default if f.default is not MISSING else None
        shown = "none" if default is None else (" ".join(map(str, default)) if isinstance(default, tuple) else default)
        help_text = f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%")
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS,
                            help=help_text, **_parser_for(f.name, str(f.type)))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stl_bench.train import flag_fields, resolve_config, resume_config, train

    names = {f.name for f, _ in flag_fields()}
    given = {k: v for k, v in vars(args).items() if k in names}
    resume = getattr(args, "resume", None)
    if resume is None:
        cfg, ckpt = resolve_config(args.preset, **given), None
    else:  # the run's own config.json / last.pt; see stl_bench.train.resume for the flags that may change
        cfg, ckpt = resume_config(resume, given, args.preset)
    train(cfg, resume=Path(ckpt) if ckpt else None)
    return 0
