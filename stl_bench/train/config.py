"""The training run's configuration: nested dataclasses, flat flags, presets and `--help` text.

`TrainConfig` holds the run's identity (stage, model, data, output, sizes) and one
dataclass per concern, in litgpt's style: `stl` (the stage-2 label source and loss
weights), `optim` (schedule and optimizer), `augment` (the augmentation recipe, the one
`stl_bench.data.transforms.AugmentConfig` that the data pipeline reads as it is), `ema`
and `runtime`. Every leaf field is still one flat command-line flag of `stl-bench train`
(`batch_size` -> `--batch-size`, wherever it lives) and its attribute docstring is the
flag's help. Flag names are unique across groups, so `config.json` and the checkpoints
keep the flat keys, in the same order, that runs have always written; `cfg.lr` reads
through to `cfg.optim.lr`.

Resolution order: dataclass defaults, then the preset, then flags given on the command
line. The defaults are the official recipe, so a preset states only what differs.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field, fields  # noqa: F401  (fields is re-exported)
from functools import lru_cache
from typing import Any, Iterator

from stl_bench.data.transforms import AugmentConfig
from stl_bench.errors import StlBenchError
from stl_bench.stl.gumbel import LABEL_MODES
from stl_bench.stl.objectives import STAGES


@dataclass
class StlConfig:
    """Stage 2's label source and both STL stages' loss weights."""

    teacher: str | None = None
    """stage 2 online: the token-labeler checkpoint (its EMA weights are used when present)"""
    token_labels: str | None = None
    """stage 2 offline: a folder written by `stl-bench label` (no teacher forward during training)"""
    label_mode: str = "gumbel"
    """token labels from the labeler: 'gumbel' (hard Gumbel-Softmax sample), 'argmax' (one-hot), 'softmax'
    (the plain softmax, unsmoothed, as the official --softmax-token-label) or 'tempered' (softmax of
    logits / --gumbel-tau, smoothed)"""
    gumbel_tau: float = 1.0
    """Gumbel-Softmax temperature (also divides logits in 'tempered' mode)"""
    token_smoothing: float = 0.1
    """label smoothing applied to the token labels (not in 'softmax' mode)"""
    cls_weight: float = 1.0
    """weight of the class-head loss"""
    dense_weight: float = 1.0
    """weight of the token loss (stage 1: mean-token loss; stage 2: per-token loss)"""

    def __post_init__(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise StlBenchError(f"--label-mode must be one of {', '.join(LABEL_MODES)}, not {self.label_mode!r}")


@dataclass
class OptimConfig:
    """Batch, schedule and optimizer (timm's create_optimizer_v2 / create_scheduler_v2)."""

    epochs: int = 350
    """training epochs before the cooldown"""
    cooldown_epochs: int = 10
    """extra epochs at the minimum learning rate after the cosine schedule (timm's cooldown)"""
    warmup_epochs: float = 5
    """linear warm-up epochs from --warmup-lr to --lr"""
    batch_size: int = 128
    """images per process per step (global batch = batch size x processes x --grad-accum-steps)"""
    grad_accum_steps: int = 1
    """micro-batches per optimizer step (keeps the global batch on fewer GPUs)"""
    opt: str = "adamw"
    """optimizer name for timm.optim.create_optimizer_v2"""
    lr: float = 2e-3
    """peak learning rate (absolute: the official recipe applies no batch-size scaling)"""
    weight_decay: float = 0.05
    """weight decay (never applied to 1-D parameters, biases or the model's no_weight_decay() names)"""
    opt_eps: float = 1e-8
    """optimizer epsilon"""
    sched: str = "cosine"
    """learning-rate schedule for timm.scheduler.create_scheduler_v2"""
    warmup_lr: float = 1e-6
    """learning rate at the start of warm-up"""
    min_lr: float = 1e-6
    """learning rate at the end of the schedule and during cooldown"""
    clip_grad: float | None = None
    """clip the gradient norm to this value (none in the official recipe)"""
    drop_path: float = 0.25
    """stochastic depth rate (FAN applies the same rate in every block)"""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum_steps < 1 or self.epochs < 1:
            raise StlBenchError("--batch-size, --grad-accum-steps and --epochs must be at least 1")


@dataclass
class EmaConfig:
    """The weight EMA (timm ModelEmaV3), evaluated beside the model and picked for best.pt when kept."""

    model_ema: bool = True
    """keep an EMA of the weights (timm ModelEmaV3); stage 2 uses the labeler's EMA weights"""
    model_ema_decay: float = 0.99992
    """EMA decay (0.99992 suits ~1M steps; use ~0.999 for short runs)"""
    model_ema_warmup: bool = False
    """ramp the EMA decay up from 0 (timm's warm-up), so short runs get a useful EMA"""


@dataclass
class RuntimeConfig:
    """Where and how the run executes: precision, device, processes, logging, smoke-test caps."""

    amp: str = "auto"
    """mixed precision: 'auto' (on with CUDA), 'on' or 'off'"""
    amp_dtype: str = "float16"
    """autocast dtype: 'float16' (with a GradScaler) or 'bfloat16'"""
    channels_last: bool = False
    """train in channels-last memory format"""
    grad_checkpointing: bool = False
    """recompute block activations in backward to save memory"""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda'"""
    seed: int = 42
    """random seed (each process adds its rank)"""
    workers: int = 8
    """data-loading worker processes per training process"""
    threads: int | None = None
    """CPU threads for the training process (default on CPU: the cores left after the workers, at least 1;
    oversubscribed cores make small models several times slower)"""
    eval_batch_size: int | None = None
    """evaluation batch size (default: --batch-size)"""
    checkpoint_every: int = 0
    """also write last.pt every this many optimizer steps (0: only at the end of each epoch and by time)"""
    checkpoint_minutes: float = 10.0
    """also write last.pt when this many minutes have passed since the last one (0: off), so a kill
    loses at most that much work; a resume from any checkpoint equals the uninterrupted run bit for bit"""
    max_train_samples: int | None = None
    """train on a fixed random subset of this many images (smoke tests)"""
    steps_per_epoch: int | None = None
    """cap optimizer steps per epoch (smoke tests)"""
    log_every: int = 50
    """log loss and throughput every this many steps"""
    progress: bool = True
    """show a progress bar (rank 0, interactive terminals only)"""

    def __post_init__(self) -> None:
        if self.amp not in ("auto", "on", "off"):
            raise StlBenchError(f"--amp must be auto, on or off, not {self.amp!r}")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise StlBenchError(f"--amp-dtype must be float16 or bfloat16, not {self.amp_dtype!r}")
        if self.checkpoint_every < 0 or self.checkpoint_minutes < 0:
            raise StlBenchError("--checkpoint-every and --checkpoint-minutes must be 0 (off) or positive")


# The nested groups in flag order; a field of TrainConfig whose type is one of these is a group.
GROUPS: dict[str, type] = {
    "stl": StlConfig, "optim": OptimConfig, "augment": AugmentConfig, "ema": EmaConfig, "runtime": RuntimeConfig,
}


@dataclass
class TrainConfig:
    """One training run (stage 1 labeler, stage 2 student, or a plain baseline)."""

    stage: str = "labeler"
    """what to train: 'baseline' (class head only), 'labeler' (STL stage 1) or 'student' (STL stage 2)"""
    model: str = "fan_small_12_p4_hybrid_token"
    """timm model name (FAN `*_token` variants for labeler/student; any timm model for the baseline)"""
    data: str = ""
    """data root holding `train/<class>/*` (and optionally `val/<class>/*`); 'demo' = the built-in digits"""
    output: str = ""
    """run folder: checkpoints (last.pt, best.pt), metrics.jsonl/csv, config.json"""
    train_split: str = "train"
    """sub-folder of --data with the training images"""
    val_split: str = "val"
    """sub-folder of --data evaluated after each epoch (skipped if absent)"""
    stl: StlConfig = field(default_factory=StlConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    img_size: int | None = None
    """training and evaluation input size (default: the model's own)"""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    crop_pct: float | None = None
    """evaluation centre-crop fraction (default: the model's own)"""
    ema: EmaConfig = field(default_factory=EmaConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise StlBenchError(f"--stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if self.augment.mixes and self.optim.batch_size % 2:
            raise StlBenchError(
                f"mixup/cutmix pair images within a batch: --batch-size must be even, not {self.optim.batch_size}")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: a flat flag name reads its group's field.
        group = _FLAG_GROUP.get(name)
        if group is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(getattr(self, group), name)

    @classmethod
    def from_flags(cls, **values: Any) -> "TrainConfig":
        """A config from flat flag values (`lr=1e-3`, `aa="none"`), each put in its group."""
        unknown = set(values) - set(_FLAG_GROUP) - _TOP_FLAGS
        if unknown:
            raise StlBenchError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        groups = {name: group_cls(**{k: values[k] for k in _group_flags(group_cls) if k in values})
                  for name, group_cls in GROUPS.items()}
        return cls(**{k: v for k, v in values.items() if k in _TOP_FLAGS}, **groups)

    def validate_for_run(self) -> None:
        """Checks that only make sense once a run is about to start (not for a bare preset)."""
        if not self.data:
            raise StlBenchError("--data is required: a folder with train/<class>/ images, or 'demo'")
        if not self.output:
            raise StlBenchError("--output is required: the run folder for checkpoints and metrics")
        if self.stage == "student":
            if bool(self.stl.teacher) == bool(self.stl.token_labels):
                raise StlBenchError(
                    "stage 'student' needs exactly one label source: --teacher CKPT (online labeler) "
                    "or --token-labels DIR (offline labels from `stl-bench label`)"
                )
        elif self.stl.teacher or self.stl.token_labels:
            raise StlBenchError(f"--teacher/--token-labels are for --stage student, not {self.stage}")

    def to_dict(self) -> dict[str, Any]:
        """The flat flag values, JSON-able (tuples become lists), for config.json and checkpoints.

        The same keys in the same order as every run has written, so old and new files diff cleanly.
        """
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flat.update(dataclasses.asdict(value) if f.name in GROUPS else {f.name: value})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Read a saved flat config (config.json, a checkpoint's `config`); unknown keys are ignored."""
        values = dict(values)
        # runs saved before the option existed erased each image before mixing: keep that on resume
        values.setdefault("erase_after_mix", False)
        known = set(_FLAG_GROUP) | _TOP_FLAGS
        return cls.from_flags(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known})


def _group_flags(group_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(group_cls)]


_TOP_FLAGS = {f.name for f in dataclasses.fields(TrainConfig) if f.name not in GROUPS}
_FLAG_GROUP = {flag: name for name, group_cls in GROUPS.items() for flag in _group_flags(group_cls)}


def flag_fields() -> Iterator[tuple[dataclasses.Field, type]]:
    """Every flag's dataclass field and the class it is declared in, in `--help` and config.json order."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in GROUPS:
            yield from ((g, GROUPS[f.name]) for g in dataclasses.fields(GROUPS[f.name]))
        else:
            yield f, TrainConfig


# The official recipe (DESIGN.md section 1) is the dataclass defaults: AdamW, wd 0.05,
# cosine 350 + 10 cooldown epochs, warm-up from 1e-6, min lr 1e-6, rand-m9-mstd0.5-inc1,
# erasing 0.3 after mixing, mixup 0.8 / cutmix 1.0, smoothing 0.1, EMA 0.99992, seed 42,
# no clipping. The presets add what the defaults leave open: AMP always on, 224 px, and
# per size the model, batch (per GPU for 8 GPUs; B/L: 8 x 64 per node, several nodes),
# peak lr, warm-up and drop path.
_OFFICIAL: dict[str, Any] = dict(amp="on", img_size=224)

PRESETS: dict[str, dict[str, Any]] = {
    "fan_tiny_hybrid": {**_OFFICIAL, "model": "fan_tiny_8_p4_hybrid_token", "batch_size": 128, "lr": 2e-3,
                        "warmup_epochs": 5, "drop_path": 0.05},
    "fan_small_hybrid": {**_OFFICIAL, "model": "fan_small_12_p4_hybrid_token", "batch_size": 128, "lr": 2e-3,
                         "warmup_epochs": 5, "drop_path": 0.25},
    "fan_base_hybrid": {**_OFFICIAL, "model": "fan_base_16_p4_hybrid_token", "batch_size": 64, "lr": 4e-3,
                        "warmup_epochs": 10, "drop_path": 0.35},
    "fan_large_hybrid": {**_OFFICIAL, "model": "fan_large_16_p4_hybrid_token", "batch_size": 64, "lr": 4e-3,
                         "warmup_epochs": 10, "drop_path": 0.45},
    # The tiny FAN on the built-in 32x32 digits, 2 CPU cores: short, light augmentation
    # (digits are not mirror-symmetric, so no flips; 32 px crops cannot lose much area).
    "demo": dict(
        model="fan_nano_4_p4_32_token", data="demo", img_size=32, epochs=6, cooldown_epochs=0,
        warmup_epochs=1, batch_size=64, drop_path=0.0, scale=(0.5, 1.0), hflip=0.0,
        aa="rand-m5-mstd0.5-inc1", reprob=0.1, mixup=0.2, cutmix=0.0,
        model_ema_decay=0.999, model_ema_warmup=True, amp="off", workers=1, crop_pct=1.0, log_every=10,
        erase_after_mix=False,  # the order the demo's recorded numbers were trained with
    ),
}


def resolve_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then `preset`, then `overrides` (only the flags a user actually gave)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise StlBenchError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(overrides)
    return TrainConfig.from_flags(**values)


@lru_cache(maxsize=None)
def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field), read from the source.

    For `TrainConfig` this covers every flag: its own fields and those of its groups.
    """
    docs = _own_field_docs(cls)
    if cls is TrainConfig:
        for group_cls in GROUPS.values():
            docs.update(_own_field_docs(group_cls))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
