"""AlexNet's ImageNet-C top-1 errors: the denominators of CE and mCE.

Keyed by corruption name, never by position: a known fork paired two position-ordered
lists wrongly and published shifted CEs. Values are fractions (0..1), from the
first-party ImageNet-C table (see DESIGN.md section 2). The per-severity values are the
source of truth; the per-corruption means are kept so a test can check that the two agree.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

# The names are defined once, in data/corruptions/names.py; re-exported for the tables' readers.
from stl_bench.data.corruptions.names import (
    ALL_CORRUPTIONS,
    CATEGORIES,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    STANDARD_CORRUPTIONS,
)

ALEXNET_CLEAN_ERROR = 0.4348
"""torchvision AlexNet's ImageNet-1K val top-1 error (top-1 56.52 %)."""

ALEXNET_ERROR_BY_SEVERITY: Mapping[str, tuple[float, float, float, float, float]] = MappingProxyType({
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
    "speckle_noise": (0.66192, 0.74440, 0.90246, 0.94548, 0.97268),
    "gaussian_blur": (0.54732, 0.70444, 0.82574, 0.89864, 0.95940),
    "spatter": (0.47196, 0.62194, 0.75052, 0.84132, 0.90182),
    "saturate": (0.59342, 0.65514, 0.51174, 0.70834, 0.82260),
})

ALEXNET_MEAN_ERROR: Mapping[str, float] = MappingProxyType({
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
    "speckle_noise": 0.845388, "gaussian_blur": 0.787108, "spatter": 0.717512, "saturate": 0.658248,
})
"""Mean over severities 1-5, as the original ImageNet-C code normalises by."""

__all__ = [
    "ALEXNET_CLEAN_ERROR", "ALEXNET_ERROR_BY_SEVERITY", "ALEXNET_MEAN_ERROR",
    "ALL_CORRUPTIONS", "CATEGORIES", "EXTRA_CORRUPTIONS", "SEVERITIES", "STANDARD_CORRUPTIONS",
]
