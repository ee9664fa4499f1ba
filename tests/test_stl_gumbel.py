"""Token labels: hard Gumbel-Softmax samples are one-hot and follow the labeler's confidence."""
from __future__ import annotations

import pytest
import torch

from stl_bench.stl.gumbel import token_labels


def test_gumbel_labels_are_one_hot_per_token_then_smoothed() -> None:
    logits = torch.randn(4, 64, 10)
    raw = token_labels(logits, "gumbel", smoothing=0.0)
    assert set(raw.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(raw.sum(-1), torch.ones(4, 64))
    smoothed = token_labels(logits, "gumbel", smoothing=0.1)
    assert torch.allclose(smoothed.sum(-1), torch.ones(4, 64))
    assert torch.allclose(smoothed.unique(), torch.tensor([0.01, 0.91]))


def test_gumbel_samples_follow_labeler_confidence() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([
        [0.97, 0.01, 0.01, 0.01],  # confident token: keeps its class
        [0.25, 0.25, 0.25, 0.25],  # uncertain token: noisy labels
        [0.10, 0.60, 0.20, 0.10],
    ])
    draws = 20000
    logits = probs.log().expand(draws, -1, -1)
    freq = token_labels(logits, "gumbel", smoothing=0.0).mean(0)
    # a fresh sample per token per call, distributed as softmax(logits): 3 sigma of a binomial
    sigma = (probs * (1 - probs) / draws).sqrt()
    assert ((freq - probs).abs() <= 4 * sigma + 1e-3).all(), freq
    assert freq[0, 0] > 0.95 and freq[1].max() < 0.3


def test_fresh_sample_each_call() -> None:
    logits = torch.zeros(1, 256, 10)
    assert not torch.equal(token_labels(logits, "gumbel", smoothing=0), token_labels(logits, "gumbel", smoothing=0))


def test_softmax_and_argmax_modes() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    # the official --softmax-token-label: plain softmax, whatever tau and smoothing say
    assert torch.equal(token_labels(logits, "softmax", tau=2.0, smoothing=0.1), logits.softmax(-1))
    tempered = token_labels(logits, "tempered", tau=2.0, smoothing=0.3)
    assert torch.allclose(tempered, (logits / 2).softmax(-1) * 0.7 + 0.1)
    assert torch.equal(token_labels(logits, "argmax", smoothing=0), torch.tensor([[[1.0, 0.0, 0.0]]]))
    assert torch.allclose(token_labels(logits, "argmax", smoothing=0.3), torch.tensor([[[0.8, 0.1, 0.1]]]))
    with pytest.raises(ValueError, match="unknown token label mode"):
        token_labels(logits, "threshold")


def test_labels_are_float32_without_grad_under_half_precision() -> None:
    logits = torch.randn(2, 4, 5, dtype=torch.bfloat16, requires_grad=True)
    out = token_labels(logits, "gumbel")
    assert out.dtype == torch.float32 and not out.requires_grad


def test_matches_official_token_label_generation() -> None:
    """The official `token_label_generation` formulas on 1000 classes (its hard-coded K)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 9, 1000)
    assert torch.equal(token_labels(logits, "softmax"), torch.nn.functional.softmax(logits, dim=-1))
    official_argmax = torch.nn.functional.one_hot(torch.argmax(logits.softmax(-1), dim=-1), 1000)
    assert torch.allclose(token_labels(logits, "argmax", smoothing=0.1), 0.9 * official_argmax + 0.1 / 1000)
