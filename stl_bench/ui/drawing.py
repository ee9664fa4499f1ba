"""Pictures of token maps: class colours, per-patch overlays, legends.

The numbers come from `stl_bench.stl.tokenmaps` (label, confidence and Gumbel-kept
maps); this module only draws them, with numpy and PIL (matplotlib's colour map is
imported where it is used), so the app, notebooks and reports share one renderer.
Images are the model's own input crop, upscaled by an integer factor so every patch is
a square block of pixels.
"""
from __future__ import annotations

import colorsys
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stl_bench.stl.tokenmaps import TokenMaps

# matplotlib's tab10, then tab20's light shades: distinct for the first 20 classes. Their
# greys are replaced (yellow, mint) because grey means "dropped token" and "other classes".
_BASE_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#ffe119", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#aaffc3", "#dbdb8d", "#9edae5",
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
    sat = (0.9, 0.7, 0.5)[index % 3]  # hues alone repeat at 8-bit precision for ~1000 classes
    val = (0.95, 0.75)[(index // 3) % 2]
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def class_palette(num_classes: int) -> np.ndarray:
    """`[num_classes, 3]` uint8 colours, row i for class i."""
    return np.array([class_color(i) for i in range(num_classes)], dtype=np.uint8)


def hex_color(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


# --- rendering -------------------------------------------------------------------------
# Overlays are blended at the model's input resolution and then upscaled with nearest
# neighbour: each patch is a constant colour, so this equals blending at display size at a
# fraction of the cost (the page must answer in well under a second on a busy CPU).
# Grid lines, crosses and numbers are drawn after the upscale, where they have room.
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


def tint(image: Image.Image, cell_colors: np.ndarray, cell_alpha: np.ndarray | float) -> Image.Image:
    """Blend per-patch colours `[rows, cols, 3]` over an RGB image with per-patch alpha in 0..1."""
    base = image.convert("RGB")
    colors = Image.fromarray(expand_grid(np.ascontiguousarray(cell_colors, dtype=np.uint8), base.size))
    alpha = np.broadcast_to(np.asarray(cell_alpha, dtype=np.float32), cell_colors.shape[:2])
    mask = Image.fromarray(expand_grid((np.clip(alpha, 0.0, 1.0) * 255).round().astype(np.uint8), base.size))
    return Image.composite(colors, base, mask)


@lru_cache(maxsize=8)
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


def draw_class_frames(image: Image.Image, labels: np.ndarray) -> None:
    """An inner frame in the pure class colour around each patch.

    A tint over a dark image shifts hue towards black (yellow turns olive), so the fill
    alone can be mistaken for a neighbouring palette entry; the frame matches the legend.
    """
    rows, cols = labels.shape
    width = max(1, min(image.width // cols, image.height // rows) // 14)
    draw = ImageDraw.Draw(image)
    for r in range(rows):
        for c in range(cols):
            x0, x1 = c * image.width // cols + 1, (c + 1) * image.width // cols - 1
            y0, y1 = r * image.height // rows + 1, (r + 1) * image.height // rows - 1
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=class_color(int(labels[r, c])), width=width)


def label_overlay(crop: Image.Image, labels: np.ndarray, opacity: float, scale: int = 1) -> Image.Image:
    """Each patch tinted with its class colour at `opacity` and framed in it, upscaled by `scale`."""
    palette = class_palette(int(labels.max()) + 1)
    out = upscale_image(tint(crop, palette[labels], opacity), scale)
    if opacity > 0:
        draw_class_frames(out, labels)
    draw_grid_lines(out, labels.shape)
    return out


def confidence_colors(confidence: np.ndarray) -> np.ndarray:
    """Viridis colours `[..., 3]` uint8 for probabilities in 0..1."""
    import matplotlib  # imported here: only rendering needs it

    cmap = matplotlib.colormaps["viridis"]
    return (cmap(np.clip(confidence, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def _short_prob(p: float) -> str:
    """".87" style (no leading zero) so two digits fit in a small patch; "1.0" when it rounds up."""
    text = f"{p:.2f}"
    return "1.0" if text.startswith("1") else text[1:]


@lru_cache(maxsize=512)
def _text_stamp(text: str, size: int) -> Image.Image:
    """White outlined text on transparency, rendered once per string: a 14x14 map prints
    196 numbers per request and FreeType rendering would dominate the response time."""
    font = _font(size)
    left, top, right, bottom = font.getbbox(text, stroke_width=1)
    stamp = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
    ImageDraw.Draw(stamp).text((1 - left, 1 - top), text, fill=(255, 255, 255), font=font,
                               stroke_width=1, stroke_fill=(0, 0, 0))
    return stamp


def add_colorbar(image: Image.Image, label: str = "confidence") -> Image.Image:
    """A 0..1 viridis bar with its label under an image."""
    font = _font(13)
    bar_h, pad = 12, 4
    out = Image.new("RGB", (image.width, image.height + bar_h + 22), (255, 255, 255))
    out.paste(image, (0, 0))
    ramp = confidence_colors(np.linspace(0.0, 1.0, max(2, image.width - 2 * pad)))[None]
    out.paste(Image.fromarray(np.repeat(ramp, bar_h, axis=0)), (pad, image.height + pad))
    draw = ImageDraw.Draw(out)
    y = image.height + pad + bar_h + 1
    draw.text((pad, y), "0", fill=(0, 0, 0), font=font)
    draw.text((image.width // 2, y), label, fill=(0, 0, 0), font=font, anchor="ma")
    draw.text((image.width - pad, y), "1", fill=(0, 0, 0), font=font, anchor="ra")
    return out


def confidence_overlay(crop: Image.Image, confidence: np.ndarray, opacity: float, scale: int = 1) -> Image.Image:
    """Per-patch confidence as a viridis heat map, values printed where they fit, with a colour bar."""
    out = upscale_image(tint(crop, confidence_colors(confidence), opacity), scale)
    rows, cols = confidence.shape
    cell = min(out.width // cols, out.height // rows)
    if cell >= 26:
        size = max(8, cell // 3)
        for r in range(rows):
            for c in range(cols):
                stamp = _text_stamp(_short_prob(float(confidence[r, c])), size)
                x = int((c + 0.5) * out.width / cols) - stamp.width // 2
                y = int((r + 0.5) * out.height / rows) - stamp.height // 2
                out.paste(stamp, (x, y), stamp)
    draw_grid_lines(out, confidence.shape)
    return add_colorbar(out, "top-class probability (keep chance)")


def kept_overlay(crop: Image.Image, maps: TokenMaps, opacity: float, scale: int = 1) -> Image.Image:
    """Kept tokens in their class colour; dropped ones greyed with a cross in the drawn class's colour."""
    rows, cols = maps.grid
    palette = class_palette(int(max(maps.labels.max(), maps.sampled.max())) + 1)
    rgb = crop.convert("RGB")
    keep_mask = Image.fromarray(expand_grid(maps.kept.astype(np.uint8) * 255, rgb.size))
    base = Image.composite(rgb, rgb.convert("L").convert("RGB"), keep_mask)
    out = upscale_image(tint(base, palette[maps.labels], np.where(maps.kept, opacity, 0.0)), scale)
    draw = ImageDraw.Draw(out)
    for r, c in zip(*np.nonzero(~maps.kept)):
        x0, x1 = c * out.width // cols + 2, (c + 1) * out.width // cols - 2
        y0, y1 = r * out.height // rows + 2, (r + 1) * out.height // rows - 2
        color = class_color(int(maps.sampled[r, c]))
        width = max(1, (x1 - x0) // 10)
        draw.line([(x0, y0), (x1, y1)], fill=color, width=width)
        draw.line([(x0, y1), (x1, y0)], fill=color, width=width)
    draw_grid_lines(out, maps.grid)
    return out


def add_legend(image: Image.Image, entries: Sequence[tuple[tuple[int, int, int], str]],
               title: str | None = None) -> Image.Image:
    """A legend strip (colour swatch + text per entry) below an image, text sized to its width."""
    size = max(14, image.width // 22)
    font = _font(size)
    line = size + 6
    lines = len(entries) + (1 if title else 0)
    out = Image.new("RGB", (max(image.width, 240), image.height + 8 + line * lines), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    y = image.height + 6
    if title:
        draw.text((4, y), title, fill=(0, 0, 0), font=font)
        y += line
    for color, text in entries:
        draw.rectangle([4, y + 2, 4 + size, y + 2 + size], fill=tuple(color), outline=(0, 0, 0))
        draw.text((10 + size, y), text, fill=(0, 0, 0), font=font)
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


def render_label_map(crop: Image.Image, maps: TokenMaps, class_names: Sequence[str], opacity: float,
                     scale: int = 1, title: str | None = None) -> Image.Image:
    """A self-contained label-map picture: overlay plus legend (for files and comparisons)."""
    return add_legend(label_overlay(crop, maps.labels, opacity, scale), legend_entries(maps, class_names), title)


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
