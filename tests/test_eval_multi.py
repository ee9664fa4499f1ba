"""Several models in one `eval` call: one decode and one set of corruptions per batch, and
for each model the same cells, long CSV and leaderboard row as a run of it alone."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stl_bench.cli import main
from stl_bench.evaluate import inc_fly
from stl_bench.evaluate.harness import EvalSetup, ModelEval, evaluate, evaluate_models
from stl_bench.evaluate.inc_fly import CorruptionViews
from stl_bench.evaluate.loop import LoopConfig
from stl_bench.evaluate.results import ResultStore
from stl_bench.evaluate.run import EvalRequest, run_evaluations, suite_specs
from stl_bench.evaluate.suites import SuiteOptions, SuiteSpec
from eval_kit import WNIDS, logits_table, make_runner, write_coded

TIMING = {"images_per_s", "date"}
FLAGS = ["--no-figure", "--inc-on-the-fly", "--inc-corruptions", "gaussian_noise,contrast", "--inc-severities", "1,4",
         "--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu"]


def _digits(root: Path) -> Path:
    """Six noise images in class folders 0..2 (two batches of 4 and 2)."""
    rng = np.random.default_rng(0)
    for d in range(3):
        for i in range(2):
            (root / str(d)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / str(d) / f"{i}.png")
    return root


@pytest.fixture
def corruption_calls(monkeypatch) -> list[tuple[str, int, int]]:
    """Every corruption view made: (corruption, severity, batch size)."""
    calls: list[tuple[str, int, int]] = []
    real = CorruptionViews.__call__

    def counting(self, images, keys, view):
        calls.append((view.corruption, view.severity, int(images.shape[0])))
        return real(self, images, keys, view)

    monkeypatch.setattr(inc_fly.CorruptionViews, "__call__", counting)
    return calls


def _eval(where: Path, sources: list[Path], data: Path, monkeypatch, figure: bool = False) -> tuple[int, Path]:
    where.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(where)  # default run folders: eval_runs/<model>-<hash>-<head>
    flags = FLAGS[1:] if figure else FLAGS
    rc = main(["eval", *map(str, sources), "--in1k", str(data), "--in-c", str(data), *flags])
    return rc, where / "eval_runs"


def _cells(runs: Path) -> dict[str, dict]:
    """Every cell file of every run folder, without its timing."""
    out = {}
    for path in sorted(runs.glob("*/cells/*.json")):
        payload = json.loads(path.read_text())
        payload.pop("seconds")
        out[path.relative_to(runs).as_posix()] = payload
    return out


def _rows(runs: Path) -> pd.DataFrame:
    table = pd.read_csv(runs / "leaderboard.csv", dtype={"checkpoint": str})
    return table.drop(columns=sorted(TIMING)).sort_values("checkpoint").reset_index(drop=True)


@pytest.mark.slow
def test_one_call_for_three_models_equals_three_calls(tmp_path, tiny_checkpoint, corruption_calls, monkeypatch):
    data = _digits(tmp_path / "digits")
    ckpts = [tiny_checkpoint(tmp_path / f"m{seed}.pth", seed) for seed in (1, 2, 3)]
    for ckpt in ckpts:
        assert _eval(tmp_path / "separate", [ckpt], data, monkeypatch, figure=True)[0] == 0
    separate_calls = len(corruption_calls)
    corruption_calls.clear()
    rc, runs = _eval(tmp_path / "together", ckpts, data, monkeypatch, figure=True)
    assert rc == 0
    # 2 batches x 4 cells, made once for the three models (separately: three times)
    assert len(corruption_calls) == 2 * 4 and separate_calls == 3 * 2 * 4
    alone = tmp_path / "separate" / "eval_runs"
    assert len(_cells(runs)) == 3 * 5 and _cells(runs) == _cells(alone)
    folders = sorted(p.name for p in runs.iterdir() if p.is_dir())
    assert folders == sorted(p.name for p in alone.iterdir() if p.is_dir()) and len(folders) == 3
    for name in folders:
        assert (runs / name / "results_long.csv").read_bytes() == (alone / name / "results_long.csv").read_bytes()
        assert (runs / name / "ce_per_corruption.png").is_file()
    pd.testing.assert_frame_equal(_rows(runs), _rows(alone))
    assert _rows(runs)["in1k_top1"].notna().all() and len(_rows(runs)) == 3


@pytest.mark.slow
def test_a_model_whose_cells_exist_is_skipped(tmp_path, tiny_checkpoint, corruption_calls,
                                                                  monkeypatch):
    data = _digits(tmp_path / "digits")
    a, b = (tiny_checkpoint(tmp_path / f"m{seed}.pth", seed) for seed in (1, 2))
    assert _eval(tmp_path / "run", [a], data, monkeypatch)[0] == 0
    corruption_calls.clear()
    rc, runs = _eval(tmp_path / "run", [a, b], data, monkeypatch)
    assert rc == 0 and len(corruption_calls) == 2 * 4   # b's pass alone: a computes nothing
    assert _eval(tmp_path / "alone", [b], data, monkeypatch)[0] == 0
    alone = tmp_path / "alone" / "eval_runs"
    names = {p.name for p in alone.iterdir() if p.is_dir()}
    cells = _cells(runs)
    assert len(cells) == 2 * 5 and {k: v for k, v in cells.items() if k.split("/")[0] in names} == _cells(alone)


@pytest.mark.slow
def test_a_failing_source_is_named_at_the_end_and_the_others_run(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    data = _digits(tmp_path / "digits")
    good = [tiny_checkpoint(tmp_path / f"m{seed}.pth", seed) for seed in (1, 2)]
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    rc, runs = _eval(tmp_path / "run", [good[0], bad, good[1]], data, monkeypatch)
    assert rc == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: ") and "not a readable" in errors[0]
    assert err.strip().splitlines()[-1] == errors[0]   # named at the end
    assert out.count("results for ") == 2
    assert len(pd.read_csv(runs / "leaderboard.csv")) == 2 and len(_cells(runs)) == 2 * 5


def test_out_with_several_sources_is_their_parent_folder(tmp_path, tiny_checkpoint, capsys):
    data = _digits(tmp_path / "digits")
    ckpts = []
    for name in ("labeler", "student"):
        (tmp_path / name).mkdir()
        ckpts.append(str(tiny_checkpoint(tmp_path / name / "last.pt", len(ckpts) + 1)))
    rc = main(["eval", *ckpts, "--in1k", str(data), "--out", str(tmp_path / "eval"),
               "--leaderboard", str(tmp_path / "lb.csv"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["labeler", "student"]
    assert all((tmp_path / "eval" / n / "results_long.csv").exists() for n in ("labeler", "student"))
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    same = [str(tiny_checkpoint(tmp_path / d / "m.pth", 3)) for d in ("a", "b")]
    rc = main(["eval", *same, "--in1k", str(data), "--out", str(tmp_path / "eval2"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "would share the run folder m" in err and "\n" not in err
    assert not (tmp_path / "eval2").exists()


@pytest.mark.slow
def test_models_of_different_input_sizes_share_only_the_corruptions(tmp_path, tiny_checkpoint, corruption_calls):
    data = _digits(tmp_path / "digits")
    ckpt = tiny_checkpoint(tmp_path / "m1.pth", 1)
    big = torch.load(ckpt, weights_only=False)
    big["model_kwargs"] = {"img_size": 48}   # a checkpoint trained at 48 px
    torch.save(big, tmp_path / "m48.pth")
    opts = SuiteOptions(inc_on_the_fly=True, inc_corruptions=("gaussian_noise", "contrast"), inc_severities=(1, 4))
    base = dict(suites=suite_specs(in1k=str(data), in_c=str(data)), options=opts, device="cpu", batch_size=4,
                workers=0, progress=False, figure=False, leaderboard=tmp_path / "lb.csv")
    requests = [EvalRequest(source=str(p), out=tmp_path / p.stem, **base) for p in (ckpt, tmp_path / "m48.pth")]
    batch = run_evaluations(requests)
    assert not batch.failures and len(corruption_calls) == 2 * 4
    assert [r.summary is not None for r in batch.results] == [True, True]
    sizes = pd.read_csv(tmp_path / "lb.csv").set_index("checkpoint_path")["input_size"]
    assert sizes[str(ckpt)] == "32x32" and sizes[str(tmp_path / "m48.pth")] == "48x48"
    for request in requests:   # each equals a run of its own
        alone = EvalRequest(source=request.source, out=tmp_path / "alone" / Path(request.source).stem,
                            **{**base, "leaderboard": tmp_path / "lb2.csv"})
        assert not run_evaluations([alone]).failures
    together = {k: v for k, v in _cells(tmp_path).items() if k.split("/")[0] in ("m1", "m48")}
    assert len(together) == 2 * 5 and together == _cells(tmp_path / "alone")


# -- the harness: saved progress when several models share a pass --------------------------------------
SETUP = EvalSetup(model="lookup", checkpoint="test", head="cls", weights="test", preprocessing="test")
SAVE_EACH_BATCH = LoopConfig(batch_size=2, workers=0, progress=False, save_every_s=0)
FLY = SuiteOptions(inc_on_the_fly=True, inc_corruptions=("fog", "snow"), inc_severities=(1, 2))


class Fake:
    """Stand-in corruption kernels that count their calls: severity 2 blanks the image."""

    def __init__(self) -> None:
        self.calls = 0

    def corrupt(self, images, name, severity, seeds):
        self.calls += 1
        return images if severity == 1 else torch.zeros_like(images)

    def views(self) -> CorruptionViews:
        return CorruptionViews(corrupt=self.corrupt, seed=lambda k, c, s: 0, jpeg=lambda x: x)


class Dying:
    """A runner that dies like a killed job after `fail_after` predictions (once `wait_for`
    exists, when given: another process's saved progress)."""

    def __init__(self, runner, fail_after: int | None = None, wait_for: Path | None = None) -> None:
        self.runner, self.fail_after, self.wait_for, self.calls = runner, fail_after, wait_for, 0
        self.info, self.device = runner.info, runner.device

    def predict(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            for _ in range(600):
                if self.wait_for is None or any(self.wait_for.parent.glob(self.wait_for.name)):
                    break
                time.sleep(0.05)
            raise KeyboardInterrupt("simulated kill")
        return self.runner.predict(images)


def _tables(root: Path) -> list[torch.Tensor]:
    """7 clean images (4 batches of 2); three models that disagree about them."""
    for i in range(7):
        write_coded(root / "val" / WNIDS[i % 3] / f"{i}.png", 1 + i, size=(40, 30))
    return [logits_table(1000, {1 + i: {(i + m) % 3: 0.4 + 0.3 * i, 5: 0.2 * m} for i in range(7)} | {0: {m: 1.0}})
            for m in range(3)]


def test_killed_shared_pass_resumes_and_a_model_added_later_walks_alone(tmp_path):
    tables = _tables(tmp_path)
    spec = [SuiteSpec("in-c", "in-c", tmp_path / "val")]
    stores = [ResultStore(tmp_path / f"m{m}") for m in range(3)]
    alone = [evaluate(make_runner(t), spec, FLY, ResultStore(tmp_path / f"alone{m}"), SETUP, loop=SAVE_EACH_BATCH,
                      view_transform=Fake().views()) for m, t in enumerate(tables)]
    fake = Fake()
    first = [Dying(make_runner(tables[0]), fail_after=2 * 4), Dying(make_runner(tables[1]))]
    with pytest.raises(KeyboardInterrupt):   # dies in batch 3 of the shared pass
        evaluate_models([ModelEval(r, s, SETUP) for r, s in zip(first, stores)], spec, FLY, loop=SAVE_EACH_BATCH,
                        view_transform=fake.views())
    assert [json.loads(next(s.partial_dir.glob("*.json")).read_text())["batches"] for s in stores[:2]] == [2, 2]
    fake = Fake()
    again = [Dying(make_runner(t)) for t in tables]
    out = evaluate_models([ModelEval(r, s, SETUP) for r, s in zip(again, stores)], spec, FLY,
                          loop=SAVE_EACH_BATCH, view_transform=fake.views())
    assert [r.calls for r in again] == [2 * 4, 2 * 4, 4 * 4]
    assert fake.calls == 2 * 4 + 4 * 4   # one walk for the two resumed models, one for the new one
    for got, want in zip(out, alone):
        assert {k: c.counts for k, c in got.cells.items()} == {k: c.counts for k, c in want.cells.items()}
    assert not any(s.partial_dir.exists() for s in stores)


def test_a_model_the_suites_do_not_fit_fails_alone(tmp_path):
    tables = _tables(tmp_path)
    spec = [SuiteSpec("in1k", "in1k", tmp_path / "val")]
    ten = make_runner(logits_table(10, {}))   # 10 classes without names: the 1000-class folder does not fit
    out = evaluate_models([ModelEval(make_runner(tables[0]), ResultStore(tmp_path / "a"), SETUP),
                           ModelEval(ten, ResultStore(tmp_path / "b"), SETUP)], spec, SuiteOptions(),
                          loop=SAVE_EACH_BATCH)
    assert out[0].cells and str(out[1]).startswith(str(tmp_path / "val"))


def _dist_worker(rank: int, world: int, port: int, root: str, models: int, fail_after: list) -> None:
    import os

    from stl_bench.distributed import DistContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = DistContext.from_env("cpu")
    tables = torch.load(Path(root) / "tables.pt")
    others = Path(root) / "d0" / "cells" / "partial" / "*.r1of2.json"   # rank 0 dies once rank 1 has saved
    runners = [Dying(make_runner(tables[m]), fail_after=fail_after[rank] if m == 0 else None,
                     wait_for=others if rank == 0 else None) for m in range(models)]
    try:
        evaluate_models([ModelEval(r, ResultStore(Path(root) / f"d{m}"), SETUP) for m, r in enumerate(runners)],
                        [SuiteSpec("in1k", "in1k", Path(root) / "val")], SuiteOptions(),
                        loop=LoopConfig(batch_size=1, workers=0, progress=False, save_every_s=0), dist=dist)
    except KeyboardInterrupt:
        os._exit(3)   # a killed rank: no goodbye to the group
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
def test_processes_whose_models_saved_different_progress_still_agree(free_port, tmp_path):
    """Rank 0's model A died before its first save, rank 1's after one batch: with B added,
    rank 0 walks A and B together and rank 1 walks them apart; the sums still meet."""
    import torch.multiprocessing as mp

    tables = _tables(tmp_path)
    torch.save(tables, tmp_path / "tables.pt")
    spec = [SuiteSpec("in1k", "in1k", tmp_path / "val")]
    alone = [evaluate(make_runner(t), spec, SuiteOptions(), ResultStore(tmp_path / f"alone{m}"), SETUP,
                      loop=SAVE_EACH_BATCH) for m, t in enumerate(tables[:2])]

    def launch(models: int, fail_after: list) -> None:
        ctx = mp.start_processes(_dist_worker, args=(2, free_port(), str(tmp_path), models, fail_after), nprocs=2,
                                 join=False, start_method="fork")
        while not ctx.join():
            pass

    with pytest.raises(mp.ProcessExitedException):
        launch(1, [0, 1])
    saved = {p.name.split(".")[-2]: json.loads(p.read_text())["batches"]
             for p in (tmp_path / "d0" / "cells" / "partial").glob("*.json")}
    assert saved == {"r1of2": 1}
    launch(2, [None, None])
    for m in range(2):
        got = ResultStore(tmp_path / f"d{m}").load()
        assert {k: c.counts for k, c in got.items()} == {k: c.counts for k, c in alone[m].cells.items()}
