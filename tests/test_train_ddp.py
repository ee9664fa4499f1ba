"""Two processes with DistributedDataParallel over gloo: the same loop that runs on GPUs with nccl."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stl_bench.data.demo import ensure_demo_data


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path_factory, tmp_path: Path) -> None:
    demo = ensure_demo_data(tmp_path_factory.getbasetemp() / "demo_digits")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stl_bench", "train", "--preset", "demo", "--stage", "labeler", "--data", str(demo),
           "--output", str(out), "--batch-size", "16", "--epochs", "2", "--steps-per-epoch", "3",
           "--max-train-samples", "128", "--aa", "none", "--reprob", "0", "--workers", "0", "--no-progress",
           "--warmup-epochs", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # 2 processes x 16 images x 3 steps per epoch, gathered across ranks
    assert rows[0]["train_images"] == 96
    # validation shards are unpadded and summed: every val image counted once
    assert rows[-1]["val_images"] == rows[-1]["ema_images"] == 360
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 6 and not any(k.startswith("module.") for k in ckpt["model"])
    assert "global batch 32" in res.stderr + res.stdout
