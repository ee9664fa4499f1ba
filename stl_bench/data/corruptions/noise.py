"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise and speckle_noise (extra).

Definitions and parameter tables are ImageNet-C's (`make_imagenet_c.py`); only the
random streams differ (per-sample torch generators instead of NumPy's global state), so
these match the originals in distribution, not draw for draw. Noise is drawn in
float32 (float64 draws cost 5x more) and combined with the image in float64, as NumPy
did it, so for the same draws the truncation to uint8 lands where NumPy's did (tested
against the original: identical outputs).
"""
from __future__ import annotations

import torch

from stl_bench.data.corruptions._ops import from_unit, to_unit
from stl_bench.data.corruptions._rng import SampleRNG

# Standard deviation of the additive noise, in [0, 1] intensity units.
GAUSSIAN_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
# Photon counts at full intensity: fewer photons, more relative noise.
SHOT_PHOTONS = (60, 25, 12, 5, 3)
# Fraction of channel values replaced by salt (1) or pepper (0), half and half.
IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
# Standard deviation of the multiplicative noise.
SPECKLE_SIGMA = (0.15, 0.2, 0.35, 0.45, 0.6)


def gaussian_noise(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    x = to_unit(images, torch.float64)
    noise = rng.normal(x.shape[1:], std=GAUSSIAN_SIGMA[severity - 1]).double()
    return from_unit(x + noise)


def shot_noise(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    photons = SHOT_PHOTONS[severity - 1]
    x = to_unit(images, torch.float64)
    return from_unit(rng.poisson(x * photons) / photons)


def impulse_noise(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    """scikit-image's `random_noise(mode='s&p', amount=c)`: each channel value is flipped
    with probability c, to 255 or 0 with equal odds; integer-exact, so no float detour."""
    amount = IMPULSE_AMOUNT[severity - 1]
    flipped = rng.uniform(images.shape[1:]) < amount
    salted = rng.uniform(images.shape[1:]) < 0.5
    out = torch.where(flipped & salted, torch.full_like(images, 255), images)
    return torch.where(flipped & ~salted, torch.zeros_like(images), out)


def speckle_noise(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    x = to_unit(images, torch.float64)
    noise = rng.normal(x.shape[1:], std=SPECKLE_SIGMA[severity - 1]).double()
    return from_unit(x + x * noise)
