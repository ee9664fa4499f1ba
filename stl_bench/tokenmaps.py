"""Per-patch token-label maps: what each patch says, how sure it is, what STL keeps.

A token-label model (a FAN `*_token` variant) returns one logit vector per patch token.
Three views of those logits explain what STL learns and feeds its student:

* the **label map**: the argmax class of every patch;
* the **confidence map**: the top softmax probability of every patch. By the Gumbel-max
  trick this is exactly the probability that the student's hard Gumbel-Softmax label for
  that patch is the argmax class, so it is the "keep probability" of each token;
* the **kept tokens**: one hard Gumbel-Softmax draw (tau 1, as in `stl_bench.stl.gumbel`)
  per patch from a seeded generator, so a page reload shows the same draw. Tokens whose
  draw equals the argmax keep their class; the others get the noisy label the student
  would see this step.

Everything here is numpy and PIL (no UI package), so the app, notebooks and reports
share one implementation. Images are the model's own input crop, upscaled by an integer
factor so every patch is a square block of pixels.
"""
from __future__ import annotations

import colorsys
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

# matplotlib's tab10, then tab20's light shades: distinct for the first 20 classes, so the
# 10 demo digits get the colours people know from plots.
_BASE_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]
# Golden-ratio hue steps give well-spread colours for any number of further classes.
_GOLDEN = 0.618033988749895

DISPLAY_TARGET = 384  # a patch grid is upscaled by an integer factor to about this size
MAX_LEGEND_ENTRIES = 12


# --- colours ---------------------------------------------------------------------------
def class_color(index: int) -> tuple[int, int, int]:
    """A stable RGB colour for a class index (the same class looks the same in every map)."""
    if 0 <= index < len(_BASE_PALETTE):
        h = _BASE_PALETTE[index].lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    hue = (index * _GOLDEN) % 1.0
    sat = 0.55 + 0.35 * ((index // 7) % 2)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def class_palette(num_classes: int) -> np.ndarray:
    """`[num_classes, 3]` uint8 colours, row i for class i."""
    return np.array([class_color(i) for i in range(num_classes)], dtype=np.uint8)


def hex_color(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


# --- maps ------------------------------------------------------------------------------
def token_grid(num_tokens: int, input_hw: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) patch grid of `num_tokens` row-major tokens for an input size.

    Square inputs give `sqrt(N)` per side; otherwise the grid follows the input's aspect
    ratio (both sides share one patch stride). Raises if no such grid exists, because a
    silently wrong reshape would scramble every map.
    """
    h, w = input_hw
    rows = max(1, round(math.sqrt(num_tokens * h / w)))
    cols = num_tokens // rows
    if rows * cols != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a grid for a {h}x{w} input")
    return rows, cols


@dataclass
class TokenMaps:
    """The per-patch views of one image's token logits, each `[rows, cols]`.

    `labels` argmax class; `confidence` its softmax probability (= the chance a hard
    Gumbel-Softmax draw keeps it); `sampled` this seed's Gumbel draw; `kept` where the draw
    equals the argmax.
    """

    labels: np.ndarray
    confidence: np.ndarray
    sampled: np.ndarray
    kept: np.ndarray
    seed: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def class_counts(self) -> list[tuple[int, int]]:
        """(class, number of patches) for every class in the label map, most patches first."""
        classes, counts = np.unique(self.labels, return_counts=True)
        order = sorted(zip(classes.tolist(), counts.tolist()), key=lambda cc: (-cc[1], cc[0]))
        return [(int(c), int(n)) for c, n in order]

    def expected_kept(self) -> float:
        """Mean number of tokens a fresh draw keeps: the sum of the confidence map."""
        return float(self.confidence.sum())


def gumbel_draw(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """One hard Gumbel-Softmax class per row of `logits [N, C]`, reproducible by seed.

    `F.gumbel_softmax(hard=True)` returns the one-hot of `argmax(logits + g)` for Gumbel
    noise g (tau only rescales before the argmax), but it takes no generator; this is the
    same draw with a seeded generator.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand(logits.shape, generator=gen, dtype=torch.float64)
    # Clamp keeps log(-log(u)) finite at the ends of [0, 1).
    g = -torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-12)))
    return (logits.double().cpu() + g).argmax(dim=-1)


def compute_token_maps(token_logits: torch.Tensor | np.ndarray, grid: tuple[int, int], seed: int = 0) -> TokenMaps:
    """Label, confidence and Gumbel-kept maps from one image's token logits `[N, C]`."""
    logits = torch.as_tensor(token_logits).detach().float().cpu()
    if logits.ndim != 2:
        raise ValueError(f"expected token logits [N, C] for one image, got shape {tuple(logits.shape)}")
    rows, cols = grid
    if rows * cols != logits.shape[0]:
        raise ValueError(f"grid {rows}x{cols} does not hold {logits.shape[0]} tokens")
    # float32 softmax: half precision would lose the small probabilities Gumbel visits.
    probs = torch.softmax(logits, dim=-1)
    confidence, labels = probs.max(dim=-1)
    sampled = gumbel_draw(logits, seed)
    shape = (rows, cols)
    return TokenMaps(
        labels=labels.numpy().reshape(shape),
        confidence=confidence.numpy().reshape(shape),
        sampled=sampled.numpy().reshape(shape),
        kept=(sampled == labels).numpy().reshape(shape),
        seed=int(seed),
    )


# --- rendering -------------------------------------------------------------------------
def display_scale(input_hw: tuple[int, int], target: int = DISPLAY_TARGET) -> int:
    """The integer upscale factor that brings an input crop to about `target` pixels."""
    return max(1, round(target / max(input_hw)))


def upscale_image(image: Image.Image, scale: int) -> Image.Image:
    """Nearest-neighbour upscale: shows exactly the pixels the model saw, patch-aligned."""
    if scale == 1:
        return image.copy()
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def expand_grid(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Repeat each cell of a `[rows, cols, ...]` array into a block of an image of `size` (w, h)."""
    w, h = size
    rows, cols = grid.shape[:2]
    ys = np.arange(h) * rows // h
    xs = np.arange(w) * cols // w
    return grid[ys[:, None], xs[None, :]]


def blend(image: Image.Image, colors: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """Alpha-blend per-pixel colours `[h, w, 3]` over an RGB image with alpha `[h, w]` in 0..1."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    a = np.clip(alpha, 0.0, 1.0)[..., None].astype(np.float32)
    out = base * (1.0 - a) + colors.astype(np.float32) * a
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def draw_grid_lines(image: Image.Image, grid: tuple[int, int], color: tuple[int, int, int] = (255, 255, 255)) -> None:
    """Thin lines between patches, so the grid is visible in flat regions."""
    rows, cols = grid
    draw = ImageDraw.Draw(image)
    for r in range(1, rows):
        y = r * image.height // rows
        draw.line([(0, y), (image.width, y)], fill=color, width=1)
    for c in range(1, cols):
        x = c * image.width // cols
        draw.line([(x, 0), (x, image.height)], fill=color, width=1)


def label_overlay(image: Image.Image, labels: np.ndarray, opacity: float) -> Image.Image:
    """Each patch tinted with its class colour at `opacity` over the (display) image."""
    palette = class_palette(int(labels.max()) + 1)
    colors = expand_grid(palette[labels], image.size)
    out = blend(image, colors, np.full(colors.shape[:2], opacity, dtype=np.float32))
    draw_grid_lines(out, labels.shape)
    return out


def confidence_colors(confidence: np.ndarray) -> np.ndarray:
    """Viridis colours `[rows, cols, 3]` for probabilities in 0..1."""
    import matplotlib  # imported here: only rendering needs it

    cmap = matplotlib.colormaps["viridis"]
    return (cmap(np.clip(confidence, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def _short_prob(p: float) -> str:
    """".87" style (no leading zero) so two digits fit in a small patch; "1.0" when it rounds up."""
    text = f"{p:.2f}"
    return "1.0" if text.startswith("1") else text[1:]


def confidence_overlay(image: Image.Image, confidence: np.ndarray, opacity: float) -> Image.Image:
    """Per-patch confidence as a viridis heat map over the image, values printed when they fit."""
    colors = expand_grid(confidence_colors(confidence), image.size)
    out = blend(image, colors, np.full(colors.shape[:2], opacity, dtype=np.float32))
    rows, cols = confidence.shape
    cell = min(out.width // cols, out.height // rows)
    if cell >= 26:
        draw = ImageDraw.Draw(out)
        font = _font(max(8, cell // 3))
        for r in range(rows):
            for c in range(cols):
                x = (c + 0.5) * out.width / cols
                y = (r + 0.5) * out.height / rows
                draw.text((x, y), _short_prob(float(confidence[r, c])), fill=(255, 255, 255),
                          font=font, anchor="mm", stroke_width=1, stroke_fill=(0, 0, 0))
    draw_grid_lines(out, confidence.shape)
    return out


def kept_overlay(image: Image.Image, maps: TokenMaps, opacity: float) -> Image.Image:
    """Kept tokens in their class colour; dropped ones greyed with a cross in the noisy class's colour."""
    rows, cols = maps.grid
    palette = class_palette(int(max(maps.labels.max(), maps.sampled.max())) + 1)
    gray = image.convert("L").convert("RGB")
    base = Image.composite(image.convert("RGB"), gray, Image.fromarray(
        (expand_grid(maps.kept, image.size) * 255).astype(np.uint8), mode="L"))
    colors = expand_grid(palette[maps.labels], image.size)
    alpha = expand_grid(np.where(maps.kept, opacity, 0.0).astype(np.float32), image.size)
    out = blend(base, colors, alpha)
    draw = ImageDraw.Draw(out)
    pad = 2
    for r in range(rows):
        for c in range(cols):
            if maps.kept[r, c]:
                continue
            x0, x1 = c * out.width // cols + pad, (c + 1) * out.width // cols - pad
            y0, y1 = r * out.height // rows + pad, (r + 1) * out.height // rows - pad
            color = class_color(int(maps.sampled[r, c]))
            width = max(1, (x1 - x0) // 10)
            draw.line([(x0, y0), (x1, y1)], fill=color, width=width)
            draw.line([(x0, y1), (x1, y0)], fill=color, width=width)
    draw_grid_lines(out, maps.grid)
    return out


def class_masks(labels: np.ndarray, size: tuple[int, int], opacity: float,
                max_classes: int = MAX_LEGEND_ENTRIES) -> list[tuple[np.ndarray, list[int]]]:
    """One `[h, w]` float mask (value `opacity` on the class's patches) per class present.

    The `max_classes - 1` most frequent classes get their own mask; if more are present the
    rest share one, so a 1000-class map stays legible and fast to send. Returns
    (mask, classes in it) pairs, most patches first.
    """
    classes, counts = np.unique(labels, return_counts=True)
    order = [int(c) for c, _ in sorted(zip(classes, counts), key=lambda cc: (-cc[1], cc[0]))]
    groups = [[c] for c in order] if len(order) <= max_classes else (
        [[c] for c in order[: max_classes - 1]] + [order[max_classes - 1:]])
    out = []
    for group in groups:
        cells = np.isin(labels, group).astype(np.float32) * float(opacity)
        out.append((expand_grid(cells, size), group))
    return out


def add_legend(image: Image.Image, entries: Sequence[tuple[tuple[int, int, int], str]],
               title: str | None = None) -> Image.Image:
    """A legend strip (colour swatch + text per entry) below an image."""
    font = _font(14)
    line = 20
    lines = len(entries) + (1 if title else 0)
    out = Image.new("RGB", (max(image.width, 240), image.height + 8 + line * lines), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    y = image.height + 6
    if title:
        draw.text((4, y), title, fill=(0, 0, 0), font=font)
        y += line
    for color, text in entries:
        draw.rectangle([4, y + 2, 18, y + 16], fill=tuple(color), outline=(0, 0, 0))
        draw.text((24, y), text, fill=(0, 0, 0), font=font)
        y += line
    return out


def legend_entries(maps: TokenMaps, class_names: Sequence[str],
                   max_entries: int = MAX_LEGEND_ENTRIES) -> list[tuple[tuple[int, int, int], str]]:
    """Legend rows for the classes in a label map, most patches first."""
    total = maps.labels.size
    counts = maps.class_counts()
    rows = [(class_color(c), f"{class_names[c]}: {n}/{total} patches") for c, n in counts[:max_entries]]
    if len(counts) > max_entries:
        rest = sum(n for _, n in counts[max_entries:])
        rows.append(((255, 255, 255), f"{len(counts) - max_entries} more classes: {rest} patches"))
    return rows


def render_label_map(image: Image.Image, maps: TokenMaps, class_names: Sequence[str],
                     opacity: float, title: str | None = None) -> Image.Image:
    """A self-contained label-map picture: overlay plus legend (for files and comparisons)."""
    return add_legend(label_overlay(image, maps.labels, opacity), legend_entries(maps, class_names), title)


def side_by_side(images: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    """Images next to each other on white, tops aligned."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + gap
    return out
