"""Token labels from a token labeler's per-token class scores.

STL's stage 2 does not threshold the labeler: each step draws a fresh one-hot label per
token with a hard Gumbel-Softmax (tau 1), so a confident token almost always keeps its
class and an uncertain one gets a noisy label in proportion to the labeler's belief.
The modes, as the official `token_label_generation` computes them:

* "gumbel" (the default) and "argmax" (official `--no-gumbel`): a one-hot per token,
  then label smoothing `(1 - s) * y + s / C`.
* "softmax" (official `--softmax-token-label`): the labeler's plain softmax, with no
  temperature and no smoothing (the official code returns it before smoothing).
* "tempered" (ours): softmax(logits / tau), then smoothed like the one-hots.

The smoothing denominator C is the real class count. The official code hard-codes
1000 (ImageNet-1K, where the two agree); its comment says "K = # of class", which is
what is computed here for data sets with fewer classes.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LabelMode = Literal["gumbel", "softmax", "argmax", "tempered"]
LABEL_MODES: tuple[str, ...] = ("gumbel", "softmax", "argmax", "tempered")


def smooth(labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """`(1 - s) * y + s / C` over the last dimension (the classes)."""
    if smoothing <= 0:
        return labels
    return labels * (1.0 - smoothing) + smoothing / labels.shape[-1]


@torch.no_grad()
def token_labels(
    scores: torch.Tensor,
    mode: LabelMode = "gumbel",
    tau: float = 1.0,
    smoothing: float = 0.1,
) -> torch.Tensor:
    """Per-token soft targets `[..., C]` from per-token logits `[..., C]`.

    `scores` are logits (or log-probabilities: Gumbel sampling and softmax only see
    differences, so `log p` samples from `p`). Computed in float32 whatever the autocast
    dtype, because a float16 softmax over 1000 classes loses the small probabilities
    that Gumbel sampling is meant to visit.
    """
    logits = scores.detach().float()
    if mode == "gumbel":
        # hard=True returns an exact one-hot of argmax(logits + Gumbel noise) / tau; a new
        # noise draw per call gives "a fresh sample per token per step".
        labels = F.gumbel_softmax(logits, tau=tau, hard=True, dim=-1)
    elif mode == "softmax":
        return torch.softmax(logits, dim=-1)  # official: returned as it is, neither tempered nor smoothed
    elif mode == "tempered":
        labels = torch.softmax(logits / tau, dim=-1)
    elif mode == "argmax":
        labels = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    else:
        raise ValueError(f"unknown token label mode {mode!r}; expected one of {LABEL_MODES}")
    return smooth(labels, smoothing)
