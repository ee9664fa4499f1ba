"""From logits to integer counts, and from counts to accuracy, ECE, CE and mCE.

Everything a cell accumulates is a sum (correct counts, per-bin counts and confidence
sums), so shards add up exactly under an all-reduce and a resumed run merges cells
without re-weighting: never a mean of means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from stl_bench.data.corruptions.names import EXTRA_CORRUPTIONS, SEVERITIES, STANDARD_CORRUPTIONS
from stl_bench.evaluate.reference import CEReference

ECE_BINS = 15


@dataclass
class CellCounts:
    """Sums for one (suite, corruption, severity) cell.

    `bad` counts files that could not be decoded: they are reported, not scored (a
    broken file says nothing about the model). `bin_*` are the 15 equal-width
    confidence bins of the expected calibration error.
    """

    n: int = 0
    correct1: int = 0
    correct5: int = 0
    bad: int = 0
    bin_count: list[int] = field(default_factory=lambda: [0] * ECE_BINS)
    bin_correct: list[int] = field(default_factory=lambda: [0] * ECE_BINS)
    bin_conf: list[float] = field(default_factory=lambda: [0.0] * ECE_BINS)

    # -- accumulation -------------------------------------------------------------
    def add_batch(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Score one batch of (already masked) logits against targets in the same label space."""
        if logits.numel() == 0:
            return
        logits = logits.float()
        targets = targets.to(logits.device)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == targets[:, None]
        hit1 = hit[:, 0]
        self.n += int(targets.numel())
        self.correct1 += int(hit1.sum())
        self.correct5 += int(hit.any(dim=1).sum())
        conf = logits.softmax(dim=1).max(dim=1).values.double()
        # Bins are (lo, hi]: a confidence of exactly 1.0 lands in the last bin, which
        # counts like every other bin (the original IN-A/IN-R code dropped it).
        bins = (torch.ceil(conf * ECE_BINS).long() - 1).clamp_(0, ECE_BINS - 1)
        count = torch.bincount(bins, minlength=ECE_BINS)
        correct = torch.bincount(bins, weights=hit1.double(), minlength=ECE_BINS)
        confsum = torch.bincount(bins, weights=conf, minlength=ECE_BINS)
        for b in range(ECE_BINS):
            self.bin_count[b] += int(count[b])
            self.bin_correct[b] += int(round(float(correct[b])))
            self.bin_conf[b] += float(confsum[b])

    # -- packing for all-reduce and for the results store -------------------------
    def int_tensor(self) -> torch.Tensor:
        return torch.tensor([self.n, self.correct1, self.correct5, self.bad, *self.bin_count, *self.bin_correct],
                            dtype=torch.int64)

    def float_tensor(self) -> torch.Tensor:
        return torch.tensor(self.bin_conf, dtype=torch.float64)

    @classmethod
    def from_tensors(cls, ints: torch.Tensor, floats: torch.Tensor) -> "CellCounts":
        v = [int(x) for x in ints.tolist()]
        return cls(n=v[0], correct1=v[1], correct5=v[2], bad=v[3],
                   bin_count=v[4:4 + ECE_BINS], bin_correct=v[4 + ECE_BINS:4 + 2 * ECE_BINS],
                   bin_conf=[float(x) for x in floats.tolist()])

    # -- derived metrics ------------------------------------------------------------
    @property
    def top1(self) -> float:
        return 100.0 * self.correct1 / self.n if self.n else math.nan

    @property
    def top5(self) -> float:
        return 100.0 * self.correct5 / self.n if self.n else math.nan

    @property
    def error(self) -> float:
        """Top-1 error as a fraction, the unit of the AlexNet table."""
        return 1.0 - self.correct1 / self.n if self.n else math.nan

    @property
    def ece(self) -> float:
        """Expected calibration error in percent over all 15 bins (empty bins weigh 0)."""
        if not self.n:
            return math.nan
        total = 0.0
        for count, correct, conf in zip(self.bin_count, self.bin_correct, self.bin_conf):
            if count:
                total += count / self.n * abs(correct / count - conf / count)
        return 100.0 * total


@dataclass
class CorruptionReport:
    """CE per corruption and the means, with what was missing said in words.

    Values are percent. A corruption that lacks a severity (in the model's results or in
    the reference) has CE NaN and is named in `missing`; mCE is NaN unless all 15
    standard corruptions are complete: an mCE over 14 corruptions is not an mCE.
    """

    ce: dict[str, float]
    rel_ce: dict[str, float]
    acc: dict[str, float]
    mce: float
    rel_mce: float
    extra_mce: float
    acc_standard: float
    acc_all: float
    missing: list[str]
    notes: list[str]

    def message(self) -> str:
        return "; ".join(self.notes)


def corruption_report(
    errors: Mapping[tuple[str, int], float],
    reference: CEReference,
    clean_error: float | None,
    severities: Iterable[int] = SEVERITIES,
) -> CorruptionReport:
    """CE_c = sum_s E_{s,c} / sum_s Ref_{s,c}; relative CE subtracts the clean errors.

    `errors` maps (corruption, severity) to the model's top-1 error (fraction);
    `clean_error` is the model's clean top-1 error (fraction), None when unknown.
    """
    severities = tuple(severities)
    ce: dict[str, float] = {}
    rel: dict[str, float] = {}
    acc: dict[str, float] = {}
    missing: list[str] = []
    notes: list[str] = []
    have_clean = clean_error is not None and not math.isnan(clean_error)
    ref_clean = reference.clean_error
    corruptions = list(STANDARD_CORRUPTIONS) + list(EXTRA_CORRUPTIONS)
    corruptions += sorted({c for c, _ in errors} - set(corruptions))
    for c in corruptions:
        got = [s for s in severities if (c, s) in errors]
        if got:
            acc[c] = 100.0 * (1.0 - sum(errors[(c, s)] for s in got) / len(got))
        lacking = [s for s in severities if (c, s) not in errors]
        ref = reference.severities(c)
        ref_lacking = [s for s in severities if s not in ref]
        if lacking:
            if c in STANDARD_CORRUPTIONS or got:
                missing.append(c if len(lacking) == len(severities)
                               else f"{c} (severities {','.join(map(str, lacking))})")
            ce[c] = rel[c] = math.nan
            continue
        if ref_lacking:
            notes.append(f"reference {reference.name} lacks {c} severities {','.join(map(str, ref_lacking))}")
            ce[c] = rel[c] = math.nan
            continue
        model_sum = sum(errors[(c, s)] for s in severities)
        ref_sum = sum(ref[s] for s in severities)
        ce[c] = 100.0 * model_sum / ref_sum if ref_sum > 0 else math.nan
        if ref_sum <= 0:
            notes.append(f"reference {reference.name} makes no errors on {c}: its CE is undefined")
        n = len(severities)
        ref_gap = ref_sum - n * ref_clean if have_clean and not math.isnan(ref_clean) else math.nan
        if ref_gap == 0:
            # A reference no worse corrupted than clean (an untrained model at chance, say)
            # leaves relative CE undefined rather than infinite.
            notes.append(f"reference {reference.name} loses no accuracy on {c}: relative CE undefined")
            rel[c] = math.nan
        elif not math.isnan(ref_gap):
            rel[c] = 100.0 * (model_sum - n * clean_error) / ref_gap
        else:
            rel[c] = math.nan

    def mean_over(names: Iterable[str], table: dict[str, float]) -> float:
        vals = [table.get(c, math.nan) for c in names]
        return sum(vals) / len(vals) if vals and not any(math.isnan(v) for v in vals) else math.nan

    mce = mean_over(STANDARD_CORRUPTIONS, ce)
    rel_mce = mean_over(STANDARD_CORRUPTIONS, rel)
    extra = mean_over(EXTRA_CORRUPTIONS, ce)
    standard_cells = [(c, s) for c in STANDARD_CORRUPTIONS for s in severities]
    acc_standard = (100.0 * (1 - sum(errors[k] for k in standard_cells) / len(standard_cells))
                    if all(k in errors for k in standard_cells) else math.nan)
    acc_all = 100.0 * (1 - sum(errors.values()) / len(errors)) if errors else math.nan
    std_missing = [m for m in missing if m.split(" ")[0] in STANDARD_CORRUPTIONS]
    if std_missing:
        notes.insert(0, "mCE not computed: missing " + ", ".join(std_missing))
    elif math.isnan(mce):
        notes.insert(0, "mCE not computed: the reference is incomplete")
    extras_absent = [c for c in EXTRA_CORRUPTIONS if c not in acc]
    if extras_absent and errors:
        notes.append("held-out extra corruptions not evaluated: " + ", ".join(extras_absent))
    if not have_clean and not math.isnan(mce):
        notes.append("relative mCE not computed: no clean error (evaluate the clean suite, in1k, in the same run folder)")
    return CorruptionReport(ce=ce, rel_ce=rel, acc=acc, mce=mce, rel_mce=rel_mce, extra_mce=extra,
                            acc_standard=acc_standard, acc_all=acc_all, missing=missing, notes=notes)
