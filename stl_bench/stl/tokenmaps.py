"""Per-patch token-label maps: what each patch says, how sure it is, what STL keeps.

A token-label model (a FAN `*_token` variant) returns one logit vector per patch token.
Three views of those logits explain what STL learns and feeds its student:

* the **label map**: the argmax class of every patch;
* the **confidence map**: the top softmax probability of every patch. By the Gumbel-max
  trick this is exactly the probability that the student's hard Gumbel-Softmax label for
  that patch is the argmax class, so it is the "keep probability" of each token;
* the **kept tokens**: one hard Gumbel-Softmax draw (tau 1, as in `stl_bench.stl.gumbel`)
  per patch from a seeded generator, so a page reload shows the same draw. Tokens whose
  draw equals the argmax keep their class; the others get the noisy label the student
  would see this step.

Only the numbers live here (torch and numpy, no imaging or UI package), beside the
Gumbel labels they explain; `stl_bench.ui.drawing` turns them into pictures for the
app, notebooks and reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["TokenMaps", "compute_token_maps", "gumbel_draw", "token_grid"]


def token_grid(num_tokens: int, input_hw: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) patch grid of `num_tokens` row-major tokens for an input size.

    Square inputs give `sqrt(N)` per side; otherwise the grid follows the input's aspect
    ratio (both sides share one patch stride). Raises if no such grid exists, because a
    silently wrong reshape would scramble every map.
    """
    h, w = input_hw
    rows = max(1, round(math.sqrt(num_tokens * h / w)))
    cols = num_tokens // rows
    if rows * cols != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a grid for a {h}x{w} input")
    return rows, cols


@dataclass
class TokenMaps:
    """The per-patch views of one image's token logits, each `[rows, cols]`.

    `labels` argmax class; `confidence` its softmax probability (= the chance a hard
    Gumbel-Softmax draw keeps it); `sampled` this seed's Gumbel draw; `kept` where the draw
    equals the argmax.
    """

    labels: np.ndarray
    confidence: np.ndarray
    sampled: np.ndarray
    kept: np.ndarray
    seed: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def class_counts(self) -> list[tuple[int, int]]:
        """(class, number of patches) for every class in the label map, most patches first."""
        classes, counts = np.unique(self.labels, return_counts=True)
        order = sorted(zip(classes.tolist(), counts.tolist()), key=lambda cc: (-cc[1], cc[0]))
        return [(int(c), int(n)) for c, n in order]

    def expected_kept(self) -> float:
        """Mean number of tokens a fresh draw keeps: the sum of the confidence map."""
        return float(self.confidence.sum())


def gumbel_draw(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """One hard Gumbel-Softmax class per row of `logits [N, C]`, reproducible by seed.

    `F.gumbel_softmax(hard=True)` returns the one-hot of `argmax(logits + g)` for Gumbel
    noise g (tau only rescales before the argmax), but it takes no generator; this is the
    same draw with a seeded generator.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand(logits.shape, generator=gen, dtype=torch.float64)
    # Clamp keeps log(-log(u)) finite at the ends of [0, 1).
    g = -torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-12)))
    return (logits.double().cpu() + g).argmax(dim=-1)


def compute_token_maps(token_logits: torch.Tensor | np.ndarray, grid: tuple[int, int], seed: int = 0) -> TokenMaps:
    """Label, confidence and Gumbel-kept maps from one image's token logits `[N, C]`."""
    logits = torch.as_tensor(token_logits).detach().float().cpu()
    if logits.ndim != 2:
        raise ValueError(f"expected token logits [N, C] for one image, got shape {tuple(logits.shape)}")
    rows, cols = grid
    if rows * cols != logits.shape[0]:
        raise ValueError(f"grid {rows}x{cols} does not hold {logits.shape[0]} tokens")
    # float32 softmax: half precision would lose the small probabilities Gumbel visits.
    probs = torch.softmax(logits, dim=-1)
    confidence, labels = probs.max(dim=-1)
    sampled = gumbel_draw(logits, seed)
    shape = (rows, cols)
    return TokenMaps(
        labels=labels.numpy().reshape(shape),
        confidence=confidence.numpy().reshape(shape),
        sampled=sampled.numpy().reshape(shape),
        kept=(sampled == labels).numpy().reshape(shape),
        seed=int(seed),
    )
