"""Kill and resume (whole cells and the saved sums inside a pass), stale cells, and the on-the-fly IN-C plumbing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stl_bench.evaluate.harness import EvalSetup, evaluate
from stl_bench.evaluate.inc_fly import CorruptionViews
from stl_bench.evaluate.loop import LoopConfig
from stl_bench.evaluate.results import ResultStore
from stl_bench.evaluate.suites import CellKey, SuiteOptions, SuiteSpec
from eval_kit import WNIDS, logits_table, make_runner, write_coded

SETUP = EvalSetup(model="lookup", checkpoint="test", head="cls", weights="test", preprocessing="test")
LOOP = LoopConfig(batch_size=2, workers=0, progress=False)
CORRS = ("gaussian_noise", "fog", "pixelate")
OPTS = SuiteOptions(inc_corruptions=CORRS, inc_severities=(1, 2, 3))


def _tree(root: Path) -> torch.Tensor:
    w = WNIDS[7]
    for ci, c in enumerate(CORRS):
        for s in (1, 2, 3):
            for i in range(3):
                write_coded(root / c / str(s) / w / f"{i}.png", 100 * ci + 10 * s + i, size=(16, 16))
    # image (c, s, i) right iff i < s: per-cell accuracy s / 3
    spec = {100 * ci + 10 * s + i: {7 if i < s else 8: 2.0} for ci in range(3) for s in (1, 2, 3) for i in range(3)}
    return logits_table(1000, spec)


class Counting:
    """Wraps a runner: counts predict calls and can fail like a killed job."""

    def __init__(self, runner, fail_after: int | None = None) -> None:
        self.runner, self.fail_after, self.calls = runner, fail_after, 0
        self.info, self.device = runner.info, runner.device

    def predict(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        return self.runner.predict(images)


def _counts(cells):
    return {k.id: (c.counts.n, c.counts.correct1) for k, c in cells.items()}


def test_kill_mid_run_then_resume_computes_only_missing_cells(tmp_path):
    table = _tree(tmp_path / "inc")
    specs = [SuiteSpec("in-c", "in-c", tmp_path / "inc")]
    full = evaluate(make_runner(table), specs, OPTS, ResultStore(tmp_path / "full"), SETUP, loop=LOOP)
    assert len(full.computed) == 9
    # each cell is 3 images = 2 batches; die in the 4th cell's second batch
    store = ResultStore(tmp_path / "run")
    killed = Counting(make_runner(table), fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        evaluate(killed, specs, OPTS, store, SETUP, loop=LOOP)
    saved = sorted(store.load())
    assert len(saved) == 3 and not list(store.cell_dir.glob("*.tmp"))
    resumed = Counting(make_runner(table))
    out = evaluate(resumed, specs, OPTS, store, SETUP, loop=LOOP)
    assert sorted(out.computed) == sorted(set(full.cells) - set(saved))
    assert resumed.calls == 6 * 2
    assert _counts(out.cells) == _counts(full.cells)
    assert out.cells[CellKey("in-c", "fog", 2)].counts.correct1 == 2


def test_max_cells_then_rerun_and_nothing_left(tmp_path):
    table = _tree(tmp_path / "inc")
    specs = [SuiteSpec("in-c", "in-c", tmp_path / "inc")]
    store = ResultStore(tmp_path / "run")
    first = evaluate(make_runner(table), specs, OPTS, store, SETUP, loop=LOOP, max_cells=4)
    assert len(first.computed) == 4 and not first.complete
    second = evaluate(make_runner(table), specs, OPTS, store, SETUP, loop=LOOP)
    assert len(second.computed) == 5 and second.complete and len(second.cells) == 9
    idle = Counting(make_runner(table))
    third = evaluate(idle, specs, OPTS, store, SETUP, loop=LOOP)
    assert third.computed == [] and idle.calls == 0 and len(third.cells) == 9


def test_cells_from_another_setup_are_recomputed(tmp_path):
    table = _tree(tmp_path / "inc")
    specs = [SuiteSpec("in-c", "in-c", tmp_path / "inc")]
    store = ResultStore(tmp_path / "run")
    evaluate(make_runner(table), specs, OPTS, store, SETUP, loop=LOOP)
    other = EvalSetup(**{**SETUP.__dict__, "head": "fused"})
    again = evaluate(make_runner(table), specs, OPTS, store, other, loop=LOOP)
    assert len(again.computed) == 9
    payload = json.loads(next(store.cell_dir.glob("*.json")).read_text())
    assert payload["setup"]["head"] == "fused"


# -- on the fly ------------------------------------------------------------------------------------
class FakeCorruptions:
    """Stand-in kernels: severity 1 keeps the image, higher severities blank it (id 0)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[int]]] = []

    def corrupt(self, images, name, severity, seeds):
        assert images.dtype == torch.uint8 and images.shape[-2:] == (224, 224)
        self.calls.append((name, severity, list(seeds)))
        return images if severity == 1 else torch.full_like(images, 0)

    @staticmethod
    def seed(key, corruption, severity):
        return hash((key, corruption, severity)) & 0xFFFF


def test_on_the_fly_decodes_once_and_scores_every_view(tmp_path, monkeypatch):
    import stl_bench.evaluate.inc_fly as inc_fly

    w0, w1 = WNIDS[3], WNIDS[4]
    for i in range(3):
        write_coded(tmp_path / "val" / w0 / f"{i}.png", 1 + i, size=(40, 30))
    write_coded(tmp_path / "val" / w1 / "0.png", 9, size=(40, 30))
    # ids 1, 2 right; 3 wrong; 9 right. A blank image reads as id 0 -> class 4 (w1).
    table = logits_table(1000, {1: {3: 2.0}, 2: {3: 2.0}, 3: {5: 2.0}, 9: {4: 2.0}, 0: {4: 2.0}})
    decodes = []
    real_source = inc_fly.source_transform

    def counting_source():
        inner = real_source()

        def transform(img):
            decodes.append(img.size)
            return inner(img)
        return transform

    monkeypatch.setattr(inc_fly, "source_transform", counting_source)
    fake = FakeCorruptions()
    views = CorruptionViews(corrupt=fake.corrupt, seed=fake.seed, jpeg=lambda x: x)
    opts = SuiteOptions(inc_on_the_fly=True, inc_corruptions=("fog", "snow"), inc_severities=(1, 2))
    out = evaluate(make_runner(table), [SuiteSpec("in-c", "in-c", tmp_path / "val")], opts,
                   ResultStore(tmp_path / "run"), SETUP, loop=LOOP, view_transform=views)
    assert len(decodes) == 4                                  # once per file, not once per cell
    got = {k.id: (c.counts.n, c.counts.correct1) for k, c in out.cells.items()}
    assert got == {"in-c/fog/1": (4, 3), "in-c/snow/1": (4, 3), "in-c/fog/2": (4, 1), "in-c/snow/2": (4, 1)}
    keys = sorted(f"{w}/{n}" for w, n in [(w0, "0.png"), (w0, "1.png"), (w0, "2.png"), (w1, "0.png")])
    fog2 = sorted(s for name, sev, seeds in fake.calls if (name, sev) == ("fog", 2) for s in seeds)
    assert fog2 == sorted(fake.seed(k, "fog", 2) for k in keys)


def test_on_the_fly_refuses_a_prewritten_tree(tmp_path):
    from stl_bench.errors import StlBenchError

    write_coded(tmp_path / "inc" / "fog" / "1" / WNIDS[0] / "x.png", 1)
    opts = SuiteOptions(inc_on_the_fly=True)
    with pytest.raises(StlBenchError, match="pre-written ImageNet-C tree"):
        evaluate(make_runner(logits_table(1000, {})), [SuiteSpec("in-c", "in-c", tmp_path / "inc")], opts,
                 ResultStore(tmp_path / "run"), SETUP, loop=LOOP)


def test_on_the_fly_with_the_real_corruptions_is_deterministic(tmp_path):
    pytest.importorskip("stl_bench.data.corruptions", reason="the corruption kernels are not in this checkout")
    for i in range(3):
        write_coded(tmp_path / "val" / WNIDS[i] / "0.png", i, size=(48, 40))
    table = logits_table(1000, {0: {0: 3.0}, 1: {1: 3.0}, 2: {2: 3.0}})
    opts = SuiteOptions(inc_on_the_fly=True, inc_corruptions=("gaussian_noise", "brightness", "jpeg_compression"),
                        inc_severities=(1, 5))
    spec = [SuiteSpec("in-c", "in-c", tmp_path / "val")]
    a = evaluate(make_runner(table), spec, opts, ResultStore(tmp_path / "a"), SETUP, loop=LOOP)
    b = evaluate(make_runner(table), spec, opts, ResultStore(tmp_path / "b"), SETUP,
                 loop=LoopConfig(batch_size=3, workers=0, progress=False), inc_group=2)
    assert len(a.cells) == 6 and all(c.counts.n == 3 for c in a.cells.values())
    # the same per-sample seeds whatever the batch size or the grouping of cells into passes
    assert {k: c.counts for k, c in a.cells.items()} == {k: c.counts for k, c in b.cells.items()}


# -- saved progress inside a pass --------------------------------------------------------------------
SAVE_EACH_BATCH = LoopConfig(batch_size=2, workers=0, progress=False, save_every_s=0)
FLY = SuiteOptions(inc_on_the_fly=True, inc_corruptions=("fog", "snow"), inc_severities=(1, 2))


def _fly_data(root: Path) -> tuple[torch.Tensor, CorruptionViews]:
    """7 clean images (4 batches of 2) with spread-out confidences, and stand-in kernels."""
    spec = {}
    for i in range(7):
        write_coded(root / "val" / WNIDS[i % 3] / f"{i}.png", 1 + i, size=(40, 30))
        spec[1 + i] = {i % 3 if i % 2 == 0 else 5: 0.3 + 0.37 * i, 6: 0.1 * i}
    spec[0] = {4: 1.3}
    fake = FakeCorruptions()
    return logits_table(1000, spec), CorruptionViews(corrupt=fake.corrupt, seed=fake.seed, jpeg=lambda x: x)


def test_a_pass_killed_midway_resumes_from_its_saved_sums_bit_for_bit(tmp_path):
    table, views = _fly_data(tmp_path)
    spec = [SuiteSpec("in-c", "in-c", tmp_path / "val")]
    full = evaluate(make_runner(table), spec, FLY, ResultStore(tmp_path / "full"), SETUP, loop=LOOP,
                    view_transform=views)
    assert len(full.cells) == 4 and not (tmp_path / "full" / "cells" / "partial").exists()
    store = ResultStore(tmp_path / "run")
    killed = Counting(make_runner(table), fail_after=2 * 4 + 1)   # 4 views a batch: dies in batch 3
    with pytest.raises(KeyboardInterrupt):
        evaluate(killed, spec, FLY, store, SETUP, loop=SAVE_EACH_BATCH, view_transform=views)
    assert store.load() == {}                                     # no cell finished...
    [saved] = store.partial_dir.glob("*.json")                    # ...but two batches are kept
    assert json.loads(saved.read_text())["batches"] == 2
    resumed = Counting(make_runner(table))
    out = evaluate(resumed, spec, FLY, store, SETUP, loop=SAVE_EACH_BATCH, view_transform=views)
    assert resumed.calls == 2 * 4                                 # only batches 3 and 4
    assert {k: c.counts for k, c in out.cells.items()} == {k: c.counts for k, c in full.cells.items()}
    assert any(x for c in out.cells.values() for x in c.counts.bin_conf)  # the floats compared are real
    assert not store.partial_dir.exists()


def test_saved_sums_are_used_only_with_the_same_batch_size_and_files(tmp_path):
    table, views = _fly_data(tmp_path)
    spec = [SuiteSpec("in-c", "in-c", tmp_path / "val")]
    store = ResultStore(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        evaluate(Counting(make_runner(table), fail_after=5), spec, FLY, store, SETUP, loop=SAVE_EACH_BATCH,
                 view_transform=views)
    other = LoopConfig(batch_size=3, workers=0, progress=False, save_every_s=0)
    again = Counting(make_runner(table))
    out = evaluate(again, spec, FLY, store, SETUP, loop=other, view_transform=views)
    assert again.calls == 3 * 4 and all(c.counts.n == 7 for c in out.cells.values())   # started over
    # a file added since the sums were saved: started over too
    store2 = ResultStore(tmp_path / "run2")
    with pytest.raises(KeyboardInterrupt):
        evaluate(Counting(make_runner(table), fail_after=5), spec, FLY, store2, SETUP, loop=SAVE_EACH_BATCH,
                 view_transform=views)
    write_coded(tmp_path / "val" / WNIDS[0] / "extra.png", 8, size=(40, 30))
    out = evaluate(make_runner(table), spec, FLY, store2, SETUP, loop=SAVE_EACH_BATCH, view_transform=views)
    assert all(c.counts.n == 8 for c in out.cells.values())


def test_stale_temporaries_of_every_file_a_run_writes_are_removed(tmp_path):
    table, views = _fly_data(tmp_path)
    store = ResultStore(tmp_path / "run")
    stale = [store.cell_dir / ".in-c__fog__1.json.ab12.tmp", store.partial_dir / ".in-c.x.r0of1.json.cd34.tmp",
             store.run_dir / ".results_long.csv.ef56.tmp", store.run_dir / ".ce_per_corruption.png.gh78.tmp"]
    keep = store.run_dir / ".someone-elses.tmp"
    for path in (*stale, keep):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    evaluate(make_runner(table), [SuiteSpec("in-c", "in-c", tmp_path / "val")], FLY, store, SETUP, loop=LOOP,
             view_transform=views)
    assert [p for p in stale if p.exists()] == [] and keep.exists()


def _dist_worker(rank: int, world: int, port: int, root: str, store: str, fail_after: list) -> None:
    import os

    from stl_bench.distributed import DistContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = DistContext.from_env("cpu")
    runner = Counting(make_runner(torch.load(Path(root) / "table.pt")), fail_after=fail_after[rank])
    try:
        evaluate(runner, [SuiteSpec("in1k", "in1k", Path(root) / "val")], SuiteOptions(), ResultStore(store),
                 SETUP, loop=LoopConfig(batch_size=1, workers=0, progress=False, save_every_s=0), dist=dist)
    except KeyboardInterrupt:
        os._exit(3)   # a killed rank: no goodbye to the group
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
def test_each_process_resumes_its_own_shard(free_port, tmp_path):
    """Two gloo processes killed at different batches resume each from its own saved sums."""
    import torch.multiprocessing as mp

    table, _ = _fly_data(tmp_path)
    torch.save(table, tmp_path / "table.pt")

    def launch(store: str, fail_after: list) -> None:
        ctx = mp.start_processes(_dist_worker, args=(2, free_port(), str(tmp_path), store, fail_after), nprocs=2,
                                 join=False, start_method="fork")
        while not ctx.join():
            pass

    launch(str(tmp_path / "full"), [None, None])
    with pytest.raises(mp.ProcessExitedException):
        launch(str(tmp_path / "run"), [3, 1])      # shards of 4 and 3 images: rank 0 kept 3 batches, rank 1 one
    saved = {p.name.split(".")[-2]: json.loads(p.read_text())["batches"]
             for p in (tmp_path / "run" / "cells" / "partial").glob("*.json")}
    assert saved == {"r0of2": 3, "r1of2": 1}
    launch(str(tmp_path / "run"), [None, None])
    full, run = ResultStore(tmp_path / "full").load(), ResultStore(tmp_path / "run").load()
    assert {k: c.counts for k, c in run.items()} == {k: c.counts for k, c in full.items()} and len(run) == 1
