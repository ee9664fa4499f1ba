"""The training objectives: what one step's loss is, for each stage.

The one training loop (`stl_bench.train.loop`) prepares a batch (student images, mixed soft
targets, and where needed the clean view, crop boxes and flips) and hands it to an
objective; the objective runs the model and returns the loss. Adding a stage is adding
an objective, never a copy of the loop.

* `BaselineObjective`: plain supervised training, soft-target CE on the class head.
* `LabelerObjective` (STL stage 1): class-head loss plus the same loss on the mean of
  the patch-token logits (weights 1 and 1). One shared `aux_head` must classify the image
  through the mean of its tokens, so per-token predictions emerge without per-token
  supervision.
* `StudentObjective` (STL stage 2): class-head loss on the mixed target plus the mean
  over all B*N tokens of soft-target CE against token labels from a `LabelSource`:
  `OnlineTeacher` (the frozen labeler on the clean view, every step) or `OfflineLabels`
  (label maps written once by `stl-bench label`, cropped with the student's box).

Token stages are handed the model wrapped in `fan.model.TokenPairForward`, so that
`model(x)` returns (class, token) logits: calling `forward` (and not `forward_tokens`)
keeps DistributedDataParallel's gradient hooks in the path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy

from stl_bench.data.token_labels import TokenLabelStore, crop_label_maps, warp_label_maps
from stl_bench.errors import StlBenchError
from stl_bench.stl.gumbel import LabelMode, token_labels

log = logging.getLogger(__name__)

STAGES = ("baseline", "labeler", "student")


@dataclass
class StepInputs:
    """One step's tensors on the training device.

    `targets` are soft [B, C] (mixed and smoothed); `clean` is the unmixed clean view for
    an online labeler; `boxes` (normalised x1, y1, x2, y2) and `flips` describe the
    student's crop for offline labels, and `warps` [B, gh, gw, 3] where its geometric
    RandAugment ops moved each token (see `stl_bench.data.transforms.token_warp`);
    `indices` are dataset sample indices.
    """

    images: torch.Tensor
    targets: torch.Tensor
    clean: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    warps: torch.Tensor | None = None


_soft_ce = SoftTargetCrossEntropy()


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm's SoftTargetCrossEntropy in float32 (autocast may hand us float16 logits)."""
    return _soft_ce(logits.float(), targets.float())


def _pair(out: object, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise StlBenchError(
            f"stage '{stage}' needs a token-label model (a `*_token` variant, e.g. fan_nano_4_p4_32_token) "
            "whose forward returns (class logits, token logits)"
        )
    return out


class Objective(Protocol):
    """A stage's loss. `needs_clean_view` asks the data pipeline for the paired view,
    `warp_grid` (a token grid, or None) for the per-token record of geometric augmentation."""

    name: str
    needs_clean_view: bool
    warp_grid: tuple[int, int] | None

    def __call__(self, model: nn.Module, batch: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class BaselineObjective:
    """Soft-target cross entropy of the class logits against the (mixed) target."""

    name = "baseline"
    needs_clean_view = False
    warp_grid = None

    def __call__(self, model: nn.Module, batch: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch.images)
        logits = out[0] if isinstance(out, tuple) else out
        loss = soft_ce(logits, batch.targets)
        return loss, {"loss_cls": loss.detach()}


class LabelerObjective:
    """STL stage 1: `cls_weight * CE(cls) + dense_weight * CE(mean over tokens of token logits)`."""

    name = "labeler"
    needs_clean_view = False
    warp_grid = None

    def __init__(self, cls_weight: float = 1.0, dense_weight: float = 1.0) -> None:
        self.cls_weight = cls_weight
        self.dense_weight = dense_weight

    def __call__(self, model: nn.Module, batch: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cls_logits, token_logits = _pair(model(batch.images), self.name)
        loss_cls = soft_ce(cls_logits, batch.targets)
        loss_tok = soft_ce(token_logits.float().mean(dim=1), batch.targets)
        loss = self.cls_weight * loss_cls + self.dense_weight * loss_tok
        return loss, {"loss_cls": loss_cls.detach(), "loss_token": loss_tok.detach()}


class LabelSource(Protocol):
    """Per-token soft targets [B, N, C] for a step."""

    needs_clean_view: bool
    warp_grid: tuple[int, int] | None

    def __call__(self, batch: StepInputs) -> torch.Tensor: ...


class OnlineTeacher:
    """The frozen labeler run on the clean view: eval mode, no gradients, the loop's autocast.

    Hard Gumbel-Softmax over its token logits gives a fresh one-hot per token per step.
    """

    needs_clean_view = True
    warp_grid = None

    def __init__(self, teacher: nn.Module, mode: LabelMode = "gumbel", tau: float = 1.0, smoothing: float = 0.1) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.mode, self.tau, self.smoothing = mode, tau, smoothing

    @torch.no_grad()
    def __call__(self, batch: StepInputs) -> torch.Tensor:
        if batch.clean is None:
            raise RuntimeError("the online labeler needs the clean view; build the data with clean=True")
        self.teacher.eval()  # stays frozen even if someone calls .train() on a parent
        _, token_logits = self.teacher.forward_tokens(batch.clean)
        return token_labels(token_logits, self.mode, self.tau, self.smoothing)


class OfflineLabels:
    """Stored top-k label maps, cropped and flipped like the student's view, then sampled.

    The crop resamples to the student's token grid, so the stored grid may differ from it.
    The kept top-k mass is renormalised per token, and Gumbel sampling over `log p` draws a
    class with the stored probability: the online mode's fresh sample, without the teacher.
    """

    needs_clean_view = False

    def __init__(
        self,
        store: TokenLabelStore,
        student_grid: tuple[int, int],
        mode: LabelMode = "gumbel",
        tau: float = 1.0,
        smoothing: float = 0.1,
    ) -> None:
        self.store = store
        self.grid = tuple(student_grid)
        self.mode, self.tau, self.smoothing = mode, tau, smoothing

    @property
    def warp_grid(self) -> tuple[int, int]:
        return self.grid

    @torch.no_grad()
    def __call__(self, batch: StepInputs) -> torch.Tensor:
        maps = self.store.dense(batch.indices, device=batch.images.device)
        crops = crop_label_maps(maps, batch.boxes, batch.flips, self.grid)
        inside = None
        if batch.warps is not None:
            crops, inside = warp_label_maps(crops, batch.warps.to(crops.device))
        probs = crops.flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, N, C], row-major like the tokens
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        labels = token_labels(probs.clamp_min(1e-30).log(), self.mode, self.tau, self.smoothing)
        if inside is not None:
            # A token a rotation or shear filled shows no part of the image: it is taught
            # the image's own (mixed, smoothed) label instead of a label drawn from nothing.
            keep = inside.flatten(1)[..., None].to(labels.dtype)
            labels = keep * labels + (1 - keep) * batch.targets[:, None, :].to(labels.dtype)
        return labels


class StudentObjective:
    """STL stage 2: `cls_weight * CE(cls, mixed target) + dense_weight * mean_tokens CE(tokens, labels)`."""

    name = "student"

    def __init__(self, labels: LabelSource, cls_weight: float = 1.0, dense_weight: float = 1.0) -> None:
        self.labels = labels
        self.cls_weight = cls_weight
        self.dense_weight = dense_weight
        self.needs_clean_view = labels.needs_clean_view
        self.warp_grid = labels.warp_grid

    def __call__(self, model: nn.Module, batch: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cls_logits, token_logits = _pair(model(batch.images), self.name)
        targets = self.labels(batch)
        if targets.shape != token_logits.shape:
            raise RuntimeError(f"token labels {tuple(targets.shape)} do not match token logits {tuple(token_logits.shape)}")
        loss_cls = soft_ce(cls_logits, batch.targets)
        loss_tok = soft_ce(token_logits.reshape(-1, token_logits.shape[-1]), targets.reshape(-1, targets.shape[-1]))
        loss = self.cls_weight * loss_cls + self.dense_weight * loss_tok
        return loss, {"loss_cls": loss_cls.detach(), "loss_token": loss_tok.detach()}


def load_teacher(
    path: Path | str,
    num_classes: int,
    class_names: list[str],
    student_grid: tuple[int, int],
    img_size: tuple[int, int],
    device: torch.device,
) -> nn.Module:
    """The frozen labeler (EMA weights when the file has them), checked against the student.

    Fails before training starts when the teacher is not a token model, was trained for
    another class count or class order, or tokenises the student's input into another grid.
    """
    from stl_bench.fan.factory import create_model_from_checkpoint
    from stl_bench.fan.checkpoint import read_checkpoint

    _, probe = read_checkpoint(path)
    teacher, info = create_model_from_checkpoint(path, use_ema=probe.has_ema)
    log.info("labeler %s: %s, %s weights", path, info.arch, info.weights)
    if not getattr(teacher, "has_token_head", False):
        raise StlBenchError(
            f"teacher {path} is {info.arch}, which has no token-label head; stage 2 needs a labeler trained "
            "with `stl-bench train --stage labeler` on a `*_token` model"
        )
    if info.num_classes != num_classes:
        raise StlBenchError(
            f"teacher {path} predicts {info.num_classes} classes but the training data has {num_classes}; "
            "train the labeler on this data set (stage 1) first"
        )
    if info.class_names and list(info.class_names) != list(class_names):
        raise StlBenchError(
            f"teacher {path} was trained with another class order ({', '.join(info.class_names[:3])}...) than the "
            f"training data ({', '.join(class_names[:3])}...); train the labeler on this data set"
        )
    grid = tuple(teacher.token_grid(img_size))
    if grid != tuple(student_grid):
        raise StlBenchError(
            f"teacher {path} ({info.arch}) sees a {grid[0]}x{grid[1]} token grid at {img_size[0]}x{img_size[1]} but the "
            f"student has {student_grid[0]}x{student_grid[1]}; use a labeler with the student's patch size "
            "(or offline labels, which are resampled to the student's grid)"
        )
    return teacher.to(device).eval().requires_grad_(False)
