"""The ImageNet-C corruption names, families and severities: the one list.

Kept apart from the kernels (and free of torch) so that the CE tables, the suite
planner and the CLI can name corruptions without loading them. The order is the
ImageNet-C paper's: the 15 standard corruptions mCE averages over, then the 4 held-out
extras; every table keyed by corruption (AlexNet's errors, the figure, the leaderboard
columns) follows it, and `tests/test_eval_metrics.py` ties those tables to this list.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

FAMILIES: tuple[str, ...] = ("noise", "blur", "weather", "digital")
"""ImageNet-C's grouping of corruptions."""

FAMILY: Mapping[str, str] = MappingProxyType({
    "gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise",
    "defocus_blur": "blur", "glass_blur": "blur", "motion_blur": "blur", "zoom_blur": "blur",
    "snow": "weather", "frost": "weather", "fog": "weather",
    "brightness": "digital", "contrast": "digital", "elastic_transform": "digital",
    "pixelate": "digital", "jpeg_compression": "digital",
    # the 4 held-out extras
    "speckle_noise": "noise", "gaussian_blur": "blur", "spatter": "weather", "saturate": "digital",
})
"""Every corruption's family, in order: the 15 standard ones, then the 4 extras."""

ALL_CORRUPTIONS: tuple[str, ...] = tuple(FAMILY)
"""The 19 ImageNet-C corruptions (15 standard + 4 extra)."""

STANDARD_CORRUPTIONS: tuple[str, ...] = ALL_CORRUPTIONS[:15]
"""The 15 corruptions mCE averages over, in the ImageNet-C paper's order."""

EXTRA_CORRUPTIONS: tuple[str, ...] = ALL_CORRUPTIONS[15:]
"""The 4 held-out corruptions: reported apart, never part of mCE."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

CATEGORIES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    **{f: tuple(c for c in STANDARD_CORRUPTIONS if FAMILY[c] == f) for f in FAMILIES},
    "extra": EXTRA_CORRUPTIONS,
})
"""Category folders some ImageNet-C copies keep (`noise/gaussian_noise/3/...`): the
standard corruptions by family, the extras in a folder of their own."""

GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "all": ALL_CORRUPTIONS, "standard": STANDARD_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS,
})
"""Names a user may give instead of listing corruptions one by one."""
