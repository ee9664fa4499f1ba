"""One image through one model: top-5 classes and the token maps, with timings.

UI-free, so tests and scripts get exactly what the page shows. The runner's `logits` are
scored as the runner was opened (the fused STL head by default for token models, the
quantity STL's reported accuracies use); the token maps come from its token logits.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from stl_bench.stl.tokenmaps import TokenMaps, compute_token_maps, token_grid
from stl_bench.ui.catalog import ModelEntry
from stl_bench.ui.images import prepare

TOP_K = 5


@dataclass
class Analysis:
    """What one model says about one image."""

    top: list[tuple[str, float]]
    crop: Image.Image
    maps: TokenMaps | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def class_counts(self, class_names: list[str]) -> dict[str, int]:
        """Class name -> number of patches labelled with it (empty without token maps)."""
        if self.maps is None:
            return {}
        return {class_names[c]: n for c, n in self.maps.class_counts()}


def analyze_image(entry: ModelEntry, image: Image.Image, seed: int = 0) -> Analysis:
    """Preprocess per the runner's data config, predict, and build the maps."""
    runner = entry.runner
    if runner is None:
        raise ValueError(f"model {entry.key} is not open: {entry.error}")
    t0 = time.perf_counter()
    prepared = prepare(image, runner.info.data_config)
    t1 = time.perf_counter()
    pred = runner.predict(prepared.batch)
    t2 = time.perf_counter()
    probs = torch.softmax(pred.logits[0].float(), dim=-1)
    values, indices = probs.topk(min(TOP_K, probs.numel()))
    top = [(entry.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
    maps = None
    if pred.token_logits is not None:
        _, h, w = runner.info.data_config["input_size"]
        tokens = pred.token_logits[0]
        maps = compute_token_maps(tokens, token_grid(tokens.shape[0], (h, w)), seed=seed)
    t3 = time.perf_counter()
    return Analysis(top=top, crop=prepared.crop, maps=maps, timings_ms={
        "preprocess": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3, "maps": (t3 - t2) * 1e3})
