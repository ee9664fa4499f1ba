"""Support for the evaluation tests (a module, not a test file, so tests never import each other): images that carry a code, a model that reads it.

Every test image is one flat colour whose three channels spell a 3-digit id (levels
12 + 25 * digit, far apart enough to survive resizing and JPEG). `LookupModel` undoes
the normalisation, reads the id and returns a row of a logits table the test wrote, so
every prediction (and therefore every accuracy, CE and mCE) is known exactly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from stl_bench.deploy.runner import RunnerInfo, TorchRunner
from stl_bench.evaluate.suites import imagenet_synsets, subset_synsets

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
DATA_CONFIG = {"input_size": (3, 16, 16), "crop_pct": 0.875, "interpolation": "bilinear", "mean": MEAN, "std": STD}


def id_color(code: int) -> tuple[int, int, int]:
    assert 0 <= code < 1000
    return tuple(12 + 25 * int(d) for d in f"{code:03d}")  # type: ignore[return-value]


def write_coded(path: Path, code: int, size: tuple[int, int] = (20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, id_color(code)).save(path)
    return path


class LookupModel(torch.nn.Module):
    """Logits = table[id read from the image's mean colour]."""

    def __init__(self, table: torch.Tensor, mean=MEAN, std=STD) -> None:
        super().__init__()
        self.register_buffer("table", table.float())
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.num_classes = table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x * self.std + self.mean) * 255.0).mean(dim=(2, 3))
        digits = ((pixels - 12.0) / 25.0).round().clamp(0, 9).long()
        code = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
        return self.table[code]


def make_runner(table: torch.Tensor, class_names=None, name: str = "lookup", head: str = "cls") -> TorchRunner:
    info = RunnerInfo(name=name, backend="torch", num_classes=table.shape[1], data_config=dict(DATA_CONFIG),
                      head=head, weights="test", class_names=class_names)
    return TorchRunner(LookupModel(table), info)


def logits_table(num_classes: int, spec: dict[int, dict[int, float]], rows: int = 1000) -> torch.Tensor:
    """A [rows, C] table with `spec[id][class] = logit` over a strictly decreasing
    background (-0.001 x class index), so that top-k never meets a tie."""
    table = (-1e-3 * torch.arange(num_classes, dtype=torch.float32)).repeat(rows, 1)
    for code, entries in spec.items():
        for cls, value in entries.items():
            table[code, cls] = value
    return table


WNIDS = imagenet_synsets()
A_WNIDS = subset_synsets("in-a")
R_WNIDS = subset_synsets("in-r")
