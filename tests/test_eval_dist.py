"""Two gloo processes give exactly the counts of one process (no padding, summed counts)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from stl_bench.distributed import DistContext
from stl_bench.evaluate.harness import EvalSetup, evaluate
from stl_bench.evaluate.loop import LoopConfig
from stl_bench.evaluate.results import ResultStore
from stl_bench.evaluate.suites import SuiteOptions, SuiteSpec
from eval_kit import WNIDS, logits_table, make_runner, write_coded

SETUP = EvalSetup(model="lookup", checkpoint="test", head="cls", weights="test", preprocessing="test")
OPTS = SuiteOptions(inc_corruptions=("fog", "snow"), inc_severities=(1, 2))


def _data(root: Path) -> torch.Tensor:
    """7 clean images (odd: shards of 4 and 3) and an IN-C tree of 5 images per cell."""
    spec = {}
    for i in range(7):
        w = WNIDS[i % 3]
        write_coded(root / "val" / w / f"{i}.png", i)
        spec[i] = {i % 3 if i % 2 == 0 else 9: 2.0 + 0.1 * i}
    for ci, c in enumerate(("fog", "snow")):
        for s in (1, 2):
            for i in range(5):
                code = 100 + 20 * ci + 10 * s + i
                write_coded(root / "inc" / c / str(s) / WNIDS[5] / f"{i}.png", code)
                spec[code] = {5 if i < s + ci else 6: 1.0 + 0.05 * i}
    return logits_table(1000, spec)


def _specs(root: Path) -> list[SuiteSpec]:
    return [SuiteSpec("in1k", "in1k", root / "val"), SuiteSpec("in-c", "in-c", root / "inc")]


def _summary(cells) -> dict:
    return {k.id: [c.counts.n, c.counts.correct1, c.counts.correct5, c.counts.bin_count,
                   round(sum(c.counts.bin_conf), 9)] for k, c in cells.items()}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    root_p = Path(root)
    table = _data_table(root_p)
    dist = DistContext.from_env("cpu")
    assert dist.world_size == world and dist.rank == rank
    out = evaluate(make_runner(table), _specs(root_p), OPTS, ResultStore(root_p / "run2"), SETUP,
                   loop=LoopConfig(batch_size=2, workers=0, progress=False), dist=dist)
    if dist.is_main:
        (root_p / "rank0.json").write_text(json.dumps({"cells": _summary(out.cells),
                                                       "computed": [k.id for k in out.computed]}))
    torch.distributed.destroy_process_group()


def _data_table(root: Path) -> torch.Tensor:
    return torch.load(root / "table.pt")


def test_shards_cover_every_index_once_without_padding():
    for world in (1, 2, 3, 4):
        shards = [DistContext(rank=r, world_size=world).shard(range(10)) for r in range(world)]
        flat = sorted(i for s in shards for i in s)
        assert flat == list(range(10))


@pytest.mark.timeout(120)
def test_two_gloo_processes_match_one_process(free_port, tmp_path):
    table = _data(tmp_path)
    torch.save(table, tmp_path / "table.pt")
    single = evaluate(make_runner(table), _specs(tmp_path), OPTS, ResultStore(tmp_path / "run1"), SETUP,
                      loop=LoopConfig(batch_size=2, workers=0, progress=False))
    # fork: the children inherit the imported modules (spawn would re-import torch and timm)
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    got = json.loads((tmp_path / "rank0.json").read_text())
    expected = _summary(single.cells)
    assert len(got["computed"]) == 5
    assert got["cells"].keys() == expected.keys()
    for key, want in expected.items():
        have = got["cells"][key]
        assert have[:4] == want[:4], key           # integer counts: identical
        assert have[4] == pytest.approx(want[4], abs=1e-6)
    assert got["cells"]["in1k"][0] == 7             # no padded duplicates
