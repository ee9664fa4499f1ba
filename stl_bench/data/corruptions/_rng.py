"""Per-sample random streams, so a corrupted image depends on its own seed only.

ImageNet-C drew from NumPy's global state, so an image's corruption depended on which
images a worker had processed before it. Here every sample owns a `torch.Generator`
seeded from its own integer: an image gets the same corruption alone, in any batch, in
any shard, and in any order. Draws are made per sample (a short Python loop over the
batch) and stacked, which keeps the arithmetic after them batched.

Streams are reproducible for a given seed and device type; CPU and CUDA generators are
different algorithms, so a seed gives different (equally valid) draws on the two.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

_SEED_MASK = (1 << 63) - 1


def sample_seed(path_or_key: str, corruption: str, severity: int) -> int:
    """A stable seed for one (image, corruption, severity) cell.

    Built from SHA-256 rather than `hash()`, whose value changes with every Python
    process (hash randomisation), so that separate runs and shards draw the same noise.
    Use a path relative to the data root as the key, so the seed survives moving the tree.
    """
    text = f"{path_or_key}\x00{corruption}\x00{int(severity)}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & _SEED_MASK


def as_seed_list(seeds: torch.Tensor | Sequence[int], batch: int) -> list[int]:
    """Validate `seeds` (one integer per sample) and return them as Python ints."""
    if isinstance(seeds, torch.Tensor):
        if seeds.dtype.is_floating_point or seeds.dtype == torch.bool:
            raise TypeError(f"seeds must be integers, got a {seeds.dtype} tensor")
        values = [int(s) for s in seeds.reshape(-1).tolist()]
    else:
        values = [int(s) for s in seeds]
    if len(values) != batch:
        raise ValueError(f"need one seed per image: got {len(values)} seeds for {batch} images")
    return values


class SampleRNG:
    """One generator per sample; every draw returns a tensor with a leading batch axis."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.generators = []
        for seed in seeds:
            g = torch.Generator(device=self.device)
            # manual_seed takes [-2**63, 2**64); fold anything else into 64 bits.
            g.manual_seed(int(seed) % (1 << 64))
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def normal(self, shape: Sequence[int], mean: float = 0.0, std: float = 1.0,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.stack([
            torch.randn(tuple(shape), generator=g, device=self.device, dtype=dtype) for g in self.generators
        ])
        return out * std + mean

    def uniform(self, shape: Sequence[int], low: float = 0.0, high: float = 1.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform on [low, high), like `np.random.uniform`."""
        out = torch.stack([
            torch.rand(tuple(shape), generator=g, device=self.device, dtype=dtype) for g in self.generators
        ])
        return out * (high - low) + low

    def randint(self, low: int, high: int | Sequence[int], shape: Sequence[int] = ()) -> torch.Tensor:
        """Integers in [low, high), like `np.random.randint`; `high` may differ per sample."""
        highs = [int(high)] * len(self) if isinstance(high, int) else [int(h) for h in high]
        return torch.stack([
            torch.randint(low, h, tuple(shape), generator=g, device=self.device)
            for g, h in zip(self.generators, highs)
        ])

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson counts with the given per-element rates ([B, ...])."""
        return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, self.generators)])
