"""Human-readable class names for a runner's outputs: one rule for the app and the server."""
from __future__ import annotations

from stl_bench.deploy.runner import RunnerInfo


def class_names_for(info: RunnerInfo) -> list[str]:
    """Names from the checkpoint; ImageNet's descriptions for 1000 classes; else indices.

    Names are made unique (ImageNet has two "crane"s and two "maillot"s) because the page
    keys its legend colours and top-5 bars by name.
    """
    if info.class_names and len(info.class_names) == info.num_classes:
        names = [str(n) for n in info.class_names]
    elif info.num_classes == 1000:
        from timm.data import ImageNetInfo

        imagenet = ImageNetInfo()
        # "goldfish, Carassius auratus" -> "goldfish": the first synonym fits a legend
        names = [imagenet.index_to_description(i).split(",")[0] for i in range(1000)]
    else:
        names = [str(i) for i in range(info.num_classes)]
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return [f"{n} [{i}]" if seen[n] > 1 else n for i, n in enumerate(names)]
