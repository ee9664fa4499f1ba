"""Each suite end to end through the harness with a model whose predictions are known."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stl_bench.errors import StlBenchError
from stl_bench.evaluate.alexnet import ALEXNET_ERROR_BY_SEVERITY, STANDARD_CORRUPTIONS
from stl_bench.evaluate.harness import EvalSetup, evaluate
from stl_bench.evaluate.loop import LoopConfig
from stl_bench.evaluate.reference import alexnet_reference, load_reference_csv
from stl_bench.evaluate.report import long_table, summarize
from stl_bench.evaluate.results import ResultStore
from stl_bench.io import write_text
from stl_bench.evaluate.suites import CellKey, SuiteOptions, SuiteSpec, subset_indices
from eval_kit import A_WNIDS, R_WNIDS, WNIDS, logits_table, make_runner, write_coded

SETUP = EvalSetup(model="lookup", checkpoint="test", head="cls", weights="test", preprocessing="test")
LOOP = LoopConfig(batch_size=4, workers=0, progress=False)
IDX = {w: i for i, w in enumerate(WNIDS)}


def run(runner, specs, tmp_path, options=None, **kw):
    out = evaluate(runner, specs, options or SuiteOptions(), ResultStore(tmp_path / "run"), SETUP, loop=LOOP, **kw)
    return out, summarize(out.plans, out.cells, kw.pop("reference", alexnet_reference()))


def test_in1k_top1_top5_and_ece(tmp_path):
    # 3 real wnids, 2 images each (ids 1..6), far from the top of the background logits.
    w0, w1, w2 = WNIDS[100], WNIDS[200], WNIDS[500]
    files = {1: w0, 2: w0, 3: w1, 4: w1, 5: w2, 6: w2}
    for code, wnid in files.items():
        write_coded(tmp_path / "val" / wnid / f"img{code}.png", code)
    spec = {
        1: {IDX[w0]: 5.0},                              # right
        2: {IDX[w1]: 5.0, IDX[w0]: 4.0},                # wrong, true class 2nd: top-5 hit
        3: {IDX[w1]: 5.0},                              # right
        4: {IDX[w2]: 5.0},                              # wrong, true class in the background: no top-5
        5: {IDX[w2]: 5.0},                              # right
        6: {IDX[w0]: 5.0},                              # wrong, no top-5
    }
    table = logits_table(1000, spec)
    out, summary = run(make_runner(table), [SuiteSpec("in1k", "in1k", tmp_path / "val")], tmp_path)
    cell = out.cells[CellKey("in1k")].counts
    assert (cell.n, cell.correct1, cell.correct5) == (6, 3, 4)
    assert summary.metrics["in1k_top1"] == pytest.approx(50.0)
    assert summary.metrics["in1k_top5"] == pytest.approx(400 / 6)
    conf = table[1:7].double().softmax(dim=1).max(dim=1).values
    assert len(set(torch.ceil(conf * 15).tolist())) == 1  # one bin: ECE = |accuracy - mean confidence|
    assert summary.metrics["in1k_ece"] == pytest.approx(100 * abs(0.5 - float(conf.mean())), abs=1e-4)


def _ar_folder(root: Path, wnids, other: str) -> dict[int, dict[int, float]]:
    """3 images: right; right only among the 200 (best logit outside); wrong among the 200."""
    t, u = wnids[0], wnids[7]
    write_coded(root / t / "a.png", 1)
    write_coded(root / t / "b.png", 2)
    write_coded(root / u / "c.png", 3)
    return {1: {IDX[t]: 5.0}, 2: {IDX[other]: 9.0, IDX[t]: 5.0}, 3: {IDX[t]: 5.0}}


@pytest.mark.parametrize("suite,wnids", [("in-a", A_WNIDS), ("in-r", R_WNIDS)])
def test_in_a_in_r_masked_and_all1000(tmp_path, suite, wnids):
    outside = next(w for w in WNIDS if w not in set(wnids))
    spec = _ar_folder(tmp_path / suite, wnids, outside)
    runner = make_runner(logits_table(1000, spec))
    specs = [SuiteSpec(suite, suite, tmp_path / suite)]
    _, official = run(runner, specs, tmp_path / "o", SuiteOptions(a_r_mode="official"))
    _, all1000 = run(runner, specs, tmp_path / "a", SuiteOptions(a_r_mode="all1000"))
    col = suite.replace("-", "_")
    assert official.metrics[col] == pytest.approx(200 / 3)
    assert all1000.metrics[col] == pytest.approx(100 / 3)


def test_timm_subset_indices_match_the_wnid_lists():
    for suite in ("in-a", "in-r"):
        from stl_bench.evaluate.suites import subset_synsets

        assert [WNIDS[i] for i in subset_indices(suite)] == list(subset_synsets(suite))


def test_in_r_folder_given_as_in_a_is_named(tmp_path):
    only_r = [w for w in R_WNIDS if w not in set(A_WNIDS)][:3]
    for i, w in enumerate(only_r):
        write_coded(tmp_path / "r" / w / "x.png", i)
    runner = make_runner(logits_table(1000, {}))
    with pytest.raises(StlBenchError, match=r"not ImageNet-A wnids.*--in-r"):
        run(runner, [SuiteSpec("in-a", "in-a", tmp_path / "r")], tmp_path)


def test_missing_folder_and_class_count_mismatch(tmp_path):
    runner10 = make_runner(logits_table(10, {}))
    with pytest.raises(StlBenchError, match="does not exist"):
        run(runner10, [SuiteSpec("in1k", "in1k", tmp_path / "nope")], tmp_path)
    for w in WNIDS[:3]:
        write_coded(tmp_path / "val" / w / "x.png", 1)
    with pytest.raises(StlBenchError, match="3 class folders but the model predicts 10"):
        run(runner10, [SuiteSpec("in1k", "in1k", tmp_path / "val")], tmp_path)
    with pytest.raises(StlBenchError, match="ImageNet-A is scored over 200 of the 1000"):
        write_coded(tmp_path / "a" / A_WNIDS[0] / "x.png", 1)
        run(runner10, [SuiteSpec("in-a", "in-a", tmp_path / "a")], tmp_path)
    named = make_runner(logits_table(10, {}), class_names=[str(i) for i in range(10)])
    with pytest.raises(StlBenchError, match="not among the model's 10 classes"):
        run(named, [SuiteSpec("in1k", "in1k", tmp_path / "val")], tmp_path)


def test_truncated_and_non_image_files_are_counted_not_fatal(tmp_path):
    w = WNIDS[3]
    write_coded(tmp_path / "val" / w / "good.png", 1)
    good = write_coded(tmp_path / "val" / w / "cut.png", 1)
    good.write_bytes(good.read_bytes()[:40])                    # truncated PNG
    (tmp_path / "val" / w / "fake.JPEG").write_text("not an image")
    runner = make_runner(logits_table(1000, {1: {IDX[w]: 3.0}}))
    out, summary = run(runner, [SuiteSpec("in1k", "in1k", tmp_path / "val")], tmp_path)
    cell = out.cells[CellKey("in1k")].counts
    assert (cell.n, cell.correct1, cell.bad) == (1, 1, 2)
    assert summary.bad_images == 2 and any("2 unreadable" in n for n in summary.notes)
    assert len(out.bad_files) == 2


def test_imagenet_v2_numeric_folders_are_label_indices(tmp_path):
    for k in (0, 2, 10):
        write_coded(tmp_path / "v2" / str(k) / "x.png", k)
    runner = make_runner(logits_table(1000, {0: {0: 1.0}, 2: {2: 1.0}, 10: {10: 1.0}}))
    out, summary = run(runner, [SuiteSpec("in-v2", "folder", tmp_path / "v2")], tmp_path)
    assert summary.metrics["in_v2_top1"] == pytest.approx(100.0)


# -- ImageNet-C from files -------------------------------------------------------------------
def _inc_tree(root: Path, wnid: str, layout: str, correct: dict[tuple[str, int], int],
              per_cell: int = 2, skip: tuple[tuple[str, int], ...] = ()) -> dict[int, dict[int, float]]:
    """Write per_cell images per cell; `correct[(c, s)]` of them are predicted right."""
    from stl_bench.evaluate.alexnet import CATEGORIES

    cat_of = {c: cat for cat, cs in CATEGORIES.items() for c in cs}
    spec = {900: {IDX[wnid]: 4.0}, 901: {IDX[WNIDS[999]]: 4.0}}   # right / wrong
    for (c, s), k in correct.items():
        if (c, s) in skip:
            continue
        base = root / cat_of[c] / c if layout == "category" else root / c
        for i in range(per_cell):
            write_coded(base / str(s) / wnid / f"{i}.png", 900 if i < k else 901, size=(16, 16))
    return spec


@pytest.mark.parametrize("layout", ["flat", "category"])
def test_inc_ce_mce_relative_mce_exact(tmp_path, layout):
    wnid = WNIDS[42]
    # corruption i, severity s: (i + s) % 3 of 2 images right (0, 1 or 2)
    correct = {(c, s): (i + s) % 3 for i, c in enumerate(STANDARD_CORRUPTIONS) for s in range(1, 6)}
    spec = _inc_tree(tmp_path / "inc", wnid, layout, correct)
    for i in range(4):                                  # clean: 3 of 4 right
        write_coded(tmp_path / "val" / wnid / f"{i}.png", 900 if i < 3 else 901)
    runner = make_runner(logits_table(1000, spec))
    specs = [SuiteSpec("in1k", "in1k", tmp_path / "val"), SuiteSpec("in-c", "in-c", tmp_path / "inc")]
    out, summary = run(runner, specs, tmp_path, SuiteOptions(inc_corruptions=STANDARD_CORRUPTIONS))
    clean = 0.25
    ce, rel = {}, {}
    for c in STANDARD_CORRUPTIONS:
        errs = [1 - correct[(c, s)] / 2 for s in range(1, 6)]
        alex = ALEXNET_ERROR_BY_SEVERITY[c]
        ce[c] = 100 * sum(errs) / sum(alex)
        rel[c] = 100 * (sum(errs) - 5 * clean) / (sum(alex) - 5 * 0.4348)
        assert summary.corruption.ce[c] == pytest.approx(ce[c], rel=1e-9)
        assert summary.corruption.rel_ce[c] == pytest.approx(rel[c], rel=1e-9)
    assert summary.metrics["inc_mce"] == pytest.approx(sum(ce.values()) / 15, rel=1e-9)
    assert summary.metrics["inc_rel_mce"] == pytest.approx(sum(rel.values()) / 15, rel=1e-9)
    mean_acc = sum(correct.values()) / (2 * 75)
    assert summary.metrics["inc_acc"] == pytest.approx(100 * mean_acc)
    table = long_table(out.cells)
    assert len(table) == 76 and set(table.columns) >= {"suite", "corruption", "severity", "n", "correct", "error"}


def test_inc_missing_severity_and_corruption_are_reported_and_block_mce(tmp_path):
    wnid = WNIDS[1]
    correct = {(c, s): 1 for c in STANDARD_CORRUPTIONS for s in range(1, 6) if c != "fog"}
    spec = _inc_tree(tmp_path / "inc", wnid, "flat", correct, per_cell=1, skip=(("snow", 3),))
    runner = make_runner(logits_table(1000, spec))
    out, summary = run(runner, [SuiteSpec("in-c", "in-c", tmp_path / "inc")], tmp_path,
                       SuiteOptions(inc_corruptions=STANDARD_CORRUPTIONS))
    assert set(out.plans[0].missing) == {"fog", "snow (severities 3)"}
    assert math.isnan(summary.metrics["inc_mce"])
    text = " ".join(summary.notes)
    assert "mCE not computed" in text and "fog" in text and "snow (severities 3)" in text
    assert summary.corruption.ce["frost"] == pytest.approx(0.0)


def test_inc_files_get_identity_geometry():
    from PIL import Image

    from stl_bench.evaluate.preprocess import Preprocessing

    prep = Preprocessing.from_data_config({"input_size": (3, 224, 224), "crop_pct": 0.875})
    img = Image.effect_noise((224, 224), 60).convert("RGB")
    ident = prep.identity_transform()(img)
    assert torch.equal(ident, torch.from_numpy(__import__("numpy").array(img)).permute(2, 0, 1))
    assert not torch.equal(prep.folder_transform()(img), ident)   # the folder path zooms (resize 256, crop 224)
    small = Preprocessing.from_data_config({"input_size": (3, 32, 32), "crop_pct": 1.0})
    assert small.identity_transform()(img).shape == (3, 32, 32)


def test_reference_csv_normaliser_for_a_10_class_set(tmp_path):
    """The demo case: digits 0..9, no AlexNet row; a reference model's run is the table."""
    cells = [("gaussian_noise", s) for s in range(1, 6)]
    specs = [SuiteSpec("in1k", "in1k", tmp_path / "val"), SuiteSpec("in-c", "in-c", tmp_path / "inc")]
    for d in range(2):
        write_coded(tmp_path / "val" / str(d) / "a.png", 10 + d)
        for c, s in cells:
            for i in range(4):
                write_coded(tmp_path / "inc" / c / str(s) / str(d) / f"{i}.png", 100 + 10 * s + i)
    opts = SuiteOptions(inc_corruptions=("gaussian_noise",))
    # reference: right on the clean images; on severity s gets i < (4 - s // 2) right (per class)
    ref_spec = {10: {0: 1.0}, 11: {1: 1.0}}
    model_spec = {10: {0: 1.0}, 11: {0: 1.0}}   # clean: 1 of 2 right
    for s in range(1, 6):
        for i in range(4):
            ref_spec[100 + 10 * s + i] = {0: 1.0}             # class 0 right, class 1 wrong: error 0.5
            model_spec[100 + 10 * s + i] = {0: 1.0} if i < 1 else {1: 1.0}
    ref_out, _ = run(make_runner(logits_table(10, ref_spec)), specs, tmp_path / "ref", opts)
    write_text(tmp_path / "ref.csv", long_table(ref_out.cells).to_csv(index=False))
    reference = load_reference_csv(tmp_path / "ref.csv")
    assert reference.clean_error == 0.0 and reference.errors["gaussian_noise"][3] == 0.5
    out = evaluate(make_runner(logits_table(10, model_spec)), specs, opts, ResultStore(tmp_path / "m"), SETUP,
                   loop=LOOP)
    rep = summarize(out.plans, out.cells, reference).corruption
    # model: per severity, class 0 images: 1 of 4 right, class 1: 3 of 4 right -> error 0.5
    assert rep.ce["gaussian_noise"] == pytest.approx(100.0)
    assert rep.rel_ce["gaussian_noise"] == pytest.approx(100 * (2.5 - 5 * 0.5) / (2.5 - 0.0))
    assert math.isnan(rep.mce)   # 14 standard corruptions were not evaluated


def test_bad_reference_csv_is_a_user_error(tmp_path):
    from stl_bench.evaluate.reference import resolve_reference

    with pytest.raises(StlBenchError, match="does not exist"):
        resolve_reference(str(tmp_path / "none.csv"))
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(StlBenchError, match="lacks the columns"):
        resolve_reference(str(tmp_path / "x.csv"))
