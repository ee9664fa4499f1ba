"""Counts, ECE, CE, mCE and relative mCE against hand-computed values and the paper's row."""
from __future__ import annotations

import math

import pytest
import torch

from stl_bench.evaluate.alexnet import (
    ALEXNET_CLEAN_ERROR, ALEXNET_ERROR_BY_SEVERITY, ALEXNET_MEAN_ERROR, EXTRA_CORRUPTIONS, STANDARD_CORRUPTIONS,
)
from stl_bench.evaluate.metrics import CellCounts, corruption_report
from stl_bench.evaluate.reference import alexnet_reference

# ImageNet-C paper, torchvision ResNet-50 (DESIGN.md section 2): CE and relative CE per
# corruption (rounded, standard order), mCE 76.7, relative mCE 105.0, clean error 23.85 %.
R50_CE = [80, 82, 83, 75, 89, 78, 80, 78, 75, 66, 57, 71, 85, 77, 77]
R50_REL_CE = [104, 107, 107, 97, 126, 107, 110, 101, 97, 79, 62, 89, 146, 111, 132]
R50_CLEAN = 0.2385


def test_alexnet_table_is_keyed_by_name_and_means_agree():
    assert len(STANDARD_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert set(ALEXNET_ERROR_BY_SEVERITY) == set(ALEXNET_MEAN_ERROR) == set(STANDARD_CORRUPTIONS + EXTRA_CORRUPTIONS)
    for name, per_sev in ALEXNET_ERROR_BY_SEVERITY.items():
        assert sum(per_sev) / 5 == pytest.approx(ALEXNET_MEAN_ERROR[name], abs=1e-6), name
    # spot checks against the DESIGN table, by name
    assert ALEXNET_MEAN_ERROR["glass_blur"] == 0.826268
    assert ALEXNET_ERROR_BY_SEVERITY["elastic_transform"][2] == 0.55686
    assert ALEXNET_MEAN_ERROR["saturate"] == 0.658248


def _errors_from_ce(ce_percent: dict[str, float]) -> dict[tuple[str, int], float]:
    return {(c, s + 1): ce_percent[c] / 100.0 * a
            for c, per_sev in ALEXNET_ERROR_BY_SEVERITY.items() if c in ce_percent for s, a in enumerate(per_sev)}


def test_ce_is_sum_of_errors_over_sum_of_alexnet_errors():
    errors = {(c, s): 0.5 for c in STANDARD_CORRUPTIONS for s in range(1, 6)}
    rep = corruption_report(errors, alexnet_reference(), clean_error=0.25)
    for c in STANDARD_CORRUPTIONS:
        assert rep.ce[c] == pytest.approx(100 * 2.5 / sum(ALEXNET_ERROR_BY_SEVERITY[c]))
        assert rep.rel_ce[c] == pytest.approx(100 * (2.5 - 5 * 0.25) / (sum(ALEXNET_ERROR_BY_SEVERITY[c]) - 5 * 0.4348))
    assert rep.mce == pytest.approx(sum(rep.ce[c] for c in STANDARD_CORRUPTIONS) / 15)
    assert rep.acc_standard == pytest.approx(50.0)
    assert not rep.missing and math.isnan(rep.extra_mce)


def test_alexnet_scores_100_against_itself():
    errors = {(c, s + 1): e for c, v in ALEXNET_ERROR_BY_SEVERITY.items() for s, e in enumerate(v)}
    rep = corruption_report(errors, alexnet_reference(), clean_error=ALEXNET_CLEAN_ERROR)
    assert rep.mce == pytest.approx(100.0) and rep.rel_mce == pytest.approx(100.0)
    assert rep.extra_mce == pytest.approx(100.0)


def test_one_corruption_halved_moves_only_its_own_ce():
    ce = {c: 100.0 for c in ALEXNET_ERROR_BY_SEVERITY}
    ce["brightness"] = 50.0
    rep = corruption_report(_errors_from_ce(ce), alexnet_reference(), clean_error=None)
    assert rep.ce["brightness"] == pytest.approx(50.0)
    assert all(rep.ce[c] == pytest.approx(100.0) for c in ce if c != "brightness")
    assert rep.mce == pytest.approx((14 * 100 + 50) / 15)
    assert math.isnan(rep.rel_mce) and any("relative mCE" in n for n in rep.notes)


def test_resnet50_row_from_the_imagenet_c_paper():
    ce = dict(zip(STANDARD_CORRUPTIONS, R50_CE))
    rep = corruption_report(_errors_from_ce(ce), alexnet_reference(), clean_error=R50_CLEAN)
    assert rep.mce == pytest.approx(76.7, abs=0.3)
    # relative CE is not an input here: it follows from CE, the clean error and the table
    assert rep.rel_mce == pytest.approx(105.0, abs=1.0)
    for c, rel in zip(STANDARD_CORRUPTIONS, R50_REL_CE):
        assert rep.rel_ce[c] == pytest.approx(rel, abs=2.5), c


def test_incomplete_results_give_no_mce_and_name_what_is_missing():
    ce = {c: 80.0 for c in STANDARD_CORRUPTIONS if c != "fog"}
    errors = _errors_from_ce(ce)
    del errors[("snow", 4)]
    rep = corruption_report(errors, alexnet_reference(), clean_error=0.2)
    assert math.isnan(rep.mce) and math.isnan(rep.rel_mce) and math.isnan(rep.acc_standard)
    assert "fog" in rep.missing and "snow (severities 4)" in rep.missing
    assert "fog" in rep.message() and "snow (severities 4)" in rep.message()
    assert math.isnan(rep.ce["snow"]) and rep.ce["frost"] == pytest.approx(80.0)


def test_topk_counts_and_small_class_counts():
    c = CellCounts()
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    c.add_batch(logits, torch.tensor([1, 1, 0]))
    assert (c.n, c.correct1, c.correct5) == (3, 1, 3)  # 3 classes: top-5 is top-3
    assert c.top1 == pytest.approx(100 / 3) and c.error == pytest.approx(2 / 3)


def test_ece_uses_all_15_bins_including_the_last():
    p = 0.9
    logits = torch.tensor([
        [math.log(p), math.log(1 - p)],     # conf 0.9, correct
        [math.log(p), math.log(1 - p)],     # conf 0.9, wrong
        [math.log(0.65), math.log(0.35)],   # conf 0.65, correct
        [100.0, -100.0],                    # conf 1.0, wrong: lands in the last bin
    ])
    c = CellCounts()
    c.add_batch(logits, torch.tensor([0, 1, 0, 1]))
    expected = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.65) + 0.25 * abs(0 - 1.0)
    assert c.ece == pytest.approx(100 * expected, abs=1e-4)
    assert c.bin_count[14] == 1 and c.bin_count[13] == 2 and c.bin_count[9] == 1


def test_counts_pack_and_add_exactly():
    a, b = CellCounts(), CellCounts()
    a.add_batch(torch.randn(7, 5), torch.randint(0, 5, (7,)))
    b.add_batch(torch.randn(4, 5), torch.randint(0, 5, (4,)))
    back = CellCounts.from_tensors(a.int_tensor(), a.float_tensor())
    assert back == a
    summed = CellCounts.from_tensors(a.int_tensor() + b.int_tensor(), a.float_tensor() + b.float_tensor())
    both = CellCounts()
    both.n, both.correct1 = a.n + b.n, a.correct1 + b.correct1
    assert (summed.n, summed.correct1, sum(summed.bin_count)) == (11, both.correct1, 11)


def test_reference_without_a_corruption_gap_gives_nan_not_a_crash():
    """A reference at chance (as robust under corruption as clean) leaves relative CE undefined."""
    from stl_bench.evaluate.metrics import corruption_report
    from stl_bench.evaluate.reference import CEReference

    ref = CEReference("flat", {"gaussian_noise": {s: 0.9 for s in range(1, 6)}}, clean_error=0.9)
    report = corruption_report({("gaussian_noise", s): 0.5 for s in range(1, 6)}, ref, 0.2)
    assert report.ce["gaussian_noise"] == pytest.approx(100 * 2.5 / 4.5)
    assert math.isnan(report.rel_ce["gaussian_noise"])
    assert any("relative CE undefined" in n for n in report.notes)
