"""Deterministic weights and inputs for golden-output tests, identical on every machine.

The golden logits in `official_fan_logits.json` were computed by the official FAN/STL
model code from these weights and this input; the test computes ours from the same
ones. Values come from an integer hash (splitmix64) of each element's index and of the
state-dict key, not from a random-number generator, so no library version, CPU or
thread count can change them. The module imports only numpy and torch so that the
official code's environment can import it unchanged.

Scales are chosen so that every layer matters: layer scales and norm weights near 1
(the trained-from-scratch init of 1e-6 would hide the ConvNeXt blocks whose norms the
test is about), matrices with unit-variance outputs, small biases.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _uniform(n: int, seed: int) -> np.ndarray:
    """n values in [-1, 1) from splitmix64 of (seed, index)."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -52) - 1.0


def fixed_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed float32 value of state-dict entry `key` with `shape`."""
    n = int(np.prod(shape)) if shape else 1
    u = _uniform(n, zlib.crc32(key.encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = 0.75 + 0.25 * u
    elif leaf in ("bias", "running_mean"):
        v = 0.1 * u
    elif leaf == "temperature" or len(shape) == 1:
        v = 1.0 + 0.2 * u  # norm weights, BN weights, layer scales (gamma*), temperatures
    else:
        fan_in = int(np.prod(shape[1:]))
        v = u * np.sqrt(3.0 / fan_in)  # uniform with std 1/sqrt(fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def fixed_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Fixed values for every floating-point entry of `model.state_dict()` (counters kept)."""
    out = {}
    for key, t in model.state_dict().items():
        out[key] = fixed_tensor(key, tuple(t.shape)) if t.is_floating_point() else t.clone()
    return out


def fixed_input(batch: int = 2, size: int = 224) -> torch.Tensor:
    """A fixed image batch, values in about [-2, 2] like normalised pixels, contiguous NCHW."""
    u = _uniform(batch * 3 * size * size, seed=12345)
    return torch.from_numpy((2.0 * u).astype(np.float32).reshape(batch, 3, size, size))
