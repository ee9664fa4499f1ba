"""The pictures and numbers the page shows for one analysis, as PIL/numpy/dicts.

Gradio-free, so the same views can be saved to files or checked in tests; `blocks`
only wraps them in components.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stl_bench.ui.drawing import (
    confidence_overlay,
    display_scale,
    kept_overlay,
    render_label_map,
    side_by_side,
)
from stl_bench.ui.analysis import Analysis
from stl_bench.ui.catalog import ModelEntry


@dataclass
class MapViews:
    """Display-size pictures of one analysis's token maps (each patch a block of pixels)."""

    label_map: Image.Image
    confidence: Image.Image
    kept: Image.Image


def map_views(analysis: Analysis, class_names: list[str], opacity: float) -> MapViews | None:
    """Label map with legend, confidence map and kept-token picture; None without token maps."""
    maps = analysis.maps
    if maps is None:
        return None
    scale = display_scale(analysis.crop.size[::-1])
    return MapViews(
        label_map=render_label_map(analysis.crop, maps, class_names, opacity, scale),
        confidence=confidence_overlay(analysis.crop, maps.confidence, opacity, scale),
        kept=kept_overlay(analysis.crop, maps, opacity, scale),
    )


def comparison_view(labeler: Analysis, student: Analysis, class_names: list[str],
                    opacity: float) -> tuple[Image.Image, float]:
    """Labeler and student label maps side by side, and the share of patches they agree on."""
    if labeler.maps is None or student.maps is None:
        raise ValueError("both models need token maps to be compared")
    if labeler.maps.grid != student.maps.grid:
        agreement = float("nan")
    else:
        agreement = float((labeler.maps.labels == student.maps.labels).mean())
    pictures = []
    for title, result in (("labeler (stage 1)", labeler), ("student (stage 2)", student)):
        scale = display_scale(result.crop.size[::-1])
        pictures.append(render_label_map(result.crop, result.maps, class_names, opacity, scale, title=title))
    return side_by_side(pictures), agreement


def details(entry: ModelEntry, analysis: Analysis, total_ms: float) -> dict:
    """The numbers behind the pictures, for the page's JSON panel and API clients."""
    info = entry.runner.info
    out: dict = {
        "model": entry.key,
        "arch": info.name,
        "backend": info.backend,
        "head": info.head,
        "input_size": list(info.data_config["input_size"]),
        "top5": [{"class": name, "prob": round(p, 4)} for name, p in analysis.top],
        "timing_ms": {k: round(v, 1) for k, v in {**analysis.timings_ms, "total": total_ms}.items()},
    }
    maps = analysis.maps
    if maps is not None:
        names = entry.class_names
        out.update({
            "grid": list(maps.grid),
            "labels": [[names[c] for c in row] for row in maps.labels.tolist()],
            "classes_present": analysis.class_counts(names),
            "confidence": np.round(maps.confidence, 3).tolist(),
            "gumbel_seed": maps.seed,
            "gumbel_kept": int(maps.kept.sum()),
            "gumbel_expected_kept": round(maps.expected_kept(), 2),
            "gumbel_sampled": [[names[c] for c in row] for row in maps.sampled.tolist()],
        })
    return out
