"""Never lose work: kill -9 in the middle of an epoch, then --resume finishes the run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stl_bench.cli import main
from stl_bench.data.demo import ensure_demo_data

ARGS = ["--preset", "demo", "--batch-size", "16", "--epochs", "2", "--steps-per-epoch", "6", "--warmup-epochs", "0",
        "--aa", "none", "--reprob", "0", "--mixup", "0", "--workers", "0", "--val-split", "", "--no-progress",
        "--threads", "1", "--max-train-samples", "96"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return ensure_demo_data(tmp_path_factory.getbasetemp() / "demo_digits")


@pytest.mark.slow
def test_kill_mid_epoch_then_resume(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "stl_bench", "train", *ARGS, "--stage", "labeler", "--data", str(demo),
           "--output", str(out), "--checkpoint-every", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: only atomic writes survive
    proc.wait()
    killed = torch.load(out / "last.pt", weights_only=True)
    assert killed["step"] < 12, "the run finished before it could be killed"

    assert main(["train", "--resume", str(out / "last.pt"), "--no-progress", "--threads", "1"]) == 0
    final = torch.load(out / "last.pt", weights_only=True)
    assert final["step"] == 12 and final["epoch"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["step"] == 12


def test_resume_refuses_a_checkpoint_of_another_model(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", *ARGS, "--stage", "baseline", "--epochs", "1", "--steps-per-epoch", "1",
                 "--data", str(demo), "--output", str(out)]) == 0
    # the same run folder, another architecture: refused before anything is written
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "last.pt", other / "last.pt")
    before = (other / "last.pt").read_bytes()
    rc = main(["train", *ARGS, "--stage", "baseline", "--model", "fan_nano_4_p4_32", "--data", str(demo),
               "--output", str(other), "--resume"])
    assert rc == 1
    assert (other / "last.pt").read_bytes() == before


def test_resume_message_names_both_models(demo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *ARGS, "--stage", "baseline", "--epochs", "1", "--steps-per-epoch", "1",
                 "--data", str(demo), "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "last.pt"), "--model", "fan_nano_4_p4_32"]) == 1
    err = capsys.readouterr().err
    assert "--model fan_nano_4_p4_32 (the run: fan_nano_4_p4_32_token)" in err and "another --output" in err


def test_a_new_run_never_overwrites_an_old_one(demo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = [*ARGS, "--stage", "baseline", "--epochs", "1", "--steps-per-epoch", "1", "--data", str(demo), "--output", str(out)]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    assert main(["train", *args]) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *args, "--resume"]) == 0  # already complete: nothing to do, still fine


def _stored_run(tmp_path: Path, demo: Path) -> Path:
    """A run folder as a kill before the first checkpoint leaves it: config.json and nothing else."""
    from stl_bench.train import resolve_config

    out = tmp_path / "run"
    out.mkdir()
    cfg = resolve_config("demo", stage="baseline", model="fan_nano_4_p4_32", data=str(demo), output=str(out),
                         epochs=2, seed=7)
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    return out


def test_resume_before_the_first_checkpoint_reads_config_json_alone(demo: Path, tmp_path: Path) -> None:
    from stl_bench.train import resume_config

    out = _stored_run(tmp_path, demo)
    cfg, ckpt = resume_config("auto", {"output": str(out)}, preset=None)
    assert ckpt is None  # nothing to load: the run starts again from step 0 with its own settings
    assert cfg.to_dict() == json.loads((out / "config.json").read_text())
    assert cfg.seed == 7 and cfg.stage == "baseline" and cfg.data == str(demo)


def test_resume_refuses_flags_that_contradict_the_stored_run(demo: Path, tmp_path: Path) -> None:
    from stl_bench.errors import StlBenchError
    from stl_bench.train import resume_config

    out = _stored_run(tmp_path, demo)
    with pytest.raises(StlBenchError) as err:
        resume_config("auto", {"output": str(out), "lr": 0.1, "seed": 7, "scale": (0.2, 1.0)}, preset=None)
    msg = str(err.value)
    assert "--lr 0.1 (the run: 0.002)" in msg and "--scale 0.2 1.0 (the run: 0.5 1.0)" in msg
    assert "--seed" not in msg.split("contradict")[0]  # a repeated value is no contradiction
    assert str(out / "config.json") in msg and "\n" not in msg


def test_resume_lets_the_documented_flags_change(demo: Path, tmp_path: Path) -> None:
    from stl_bench.train import MAY_CHANGE, resume_config

    out = _stored_run(tmp_path, demo)
    cfg, _ = resume_config("auto", {"output": str(out), "epochs": 5, "workers": 3, "seed": 7}, preset="demo")
    assert (cfg.epochs, cfg.workers, cfg.seed, cfg.lr) == (5, 3, 7, 0.002)
    assert {"epochs", "workers", "data", "output"} <= set(MAY_CHANGE) and "lr" not in MAY_CHANGE


def test_resume_cli_with_output_alone_trains_from_config_json(demo: Path, tmp_path: Path) -> None:
    out = _stored_run(tmp_path, demo)
    config = json.loads((out / "config.json").read_text())
    config.update(epochs=1, steps_per_epoch=1, batch_size=16, workers=0, val_split="", progress=False, threads=1,
                  max_train_samples=32)
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--output", str(out), "--resume"]) == 0  # no --data, --stage or --model needed
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["config"]["seed"] == 7 and ckpt["arch"] == "fan_nano_4_p4_32"


def test_a_skipping_sampler_hands_out_the_same_keys_as_the_tail_of_the_epoch() -> None:
    from stl_bench.train import ResumableSampler

    data = list(range(23))
    ranks = []
    for rank in range(2):
        full = ResumableSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=5)
        full.set_epoch(3)
        keys = list(full)
        part = ResumableSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=5)
        part.set_epoch(3)
        part.skip = 7
        assert list(part) == keys[7:] and len(part) == len(keys) - 7
        assert all(k.epoch == 3 for k in keys)
        ranks.append(keys)
    # positions number the epoch's global order once, padding included, whatever the rank
    assert sorted(k.position for keys in ranks for k in keys) == list(range(24))


def test_every_generator_is_reseeded_from_its_key_alone() -> None:
    import random

    import numpy as np

    from stl_bench.train import SampleKey, seed_image, seed_step

    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_image(42, SampleKey(index=1, epoch=0, position=5))
    first = draws()
    draws()  # whatever else was drawn in between
    seed_image(42, SampleKey(index=1, epoch=0, position=5))
    assert draws() == first
    assert len(set(first)) == 3  # three generators, three unrelated streams
    seed_image(42, SampleKey(index=1, epoch=1, position=5))
    other_epoch = draws()
    seed_step(42, rank=0, step=5, micro=0)
    step = draws()
    assert len({first, other_epoch, step}) == 3
