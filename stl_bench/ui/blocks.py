"""The Gradio Blocks page: upload an image, see its token-label maps.

The only module of the app that imports Gradio; `stl-bench app` and `app/app.py` call
`build_demo` then `launch`. Every event handler turns user errors into `gr.Error`
messages (shown in the page, returned to API clients) and logs anything unexpected, so a
bad request never takes the server or its queue down.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from stl_bench.errors import StlBenchError
from stl_bench.ui.analysis import Analysis, analyze_image
from stl_bench.ui.catalog import Catalog, ModelEntry
from stl_bench.ui.images import MAX_PIXELS, SUPPORTED, load_image
from stl_bench.ui.outputs import OutputFiles
from stl_bench.ui.views import comparison_view, details, map_views

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no telemetry calls
import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)

API_NAME = "analyze"
DEFAULT_OPACITY = 0.55
MAX_FILE_SIZE = "10mb"
CONCURRENCY = 2  # two requests at once keep 2 CPU cores busy (model + rendering overlap)
QUEUE_SIZE = 64
# System fonts only: the default theme would fetch web fonts, which fails offline.
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
CSS = ".tokenmap img { image-rendering: pixelated; }"

INTRO = """# STL token-label maps
Upload an image (or pick an example) to see, patch by patch, which class a FAN token-label
model assigns, how sure it is, and which tokens the STL student's hard Gumbel-Softmax label
keeps. **Kept** tokens carry their argmax class; **dropped** ones (greyed, crossed in the
colour of the class they drew) get a noisy label this step. The confidence of a patch is the
probability that a fresh draw keeps it."""


def _explain_upload_errors(component: gr.Image) -> gr.Image:
    """Make a failed upload a message instead of a bare "Error".

    Gradio opens an upload with Pillow before the handler runs; for a text file or an
    empty file that raises, and users would see no explanation. The instance's
    `preprocess` is wrapped rather than `gr.Image` subclassed: Gradio's component
    metaclass writes a `.pyi` stub beside the source file of every component class it
    sees created, and the package must never write inside itself.
    """
    preprocess = component.preprocess

    def explained(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(f"{name} is not an image file this app can read ({exc.__class__.__name__}); "
                           f"upload a {SUPPORTED} image", print_exception=False) from None

    component.preprocess = explained
    return component


def _error(message: str) -> gr.Error:
    return gr.Error(message, duration=None, print_exception=False)


def _analyze(catalog: Catalog, image_path: str | None, model_key: str | None, opacity: float,
             seed: float | None, files: OutputFiles) -> tuple:
    """The page's one computation: outputs for the label, maps, comparison, details and status."""
    start = time.perf_counter()
    try:
        entry = catalog.get(model_key)
    except StlBenchError as exc:
        raise _error(str(exc)) from None
    if entry.runner is None:
        raise _error(f"model '{entry.key}' could not be opened: {entry.error}")
    if not image_path:
        raise _error("Upload an image or click an example first.")
    seed = int(seed or 0)
    opacity = float(min(max(opacity if opacity is not None else DEFAULT_OPACITY, 0.0), 1.0))
    try:
        loaded = load_image(image_path)
        result = analyze_image(entry, loaded.image, seed=seed)
        views = map_views(result, entry.class_names, opacity)
        compare, agreement = None, None
        pair = catalog.pair()
        if pair is not None and views is not None:
            labeler, student = pair
            lab = result if labeler is entry else analyze_image(labeler, loaded.image, seed=seed)
            stu = result if student is entry else analyze_image(student, loaded.image, seed=seed)
            compare, agreement = comparison_view(lab, stu, labeler.class_names, opacity)
        pictures = files.save({
            "label_map": views.label_map if views else None,
            "confidence": views.confidence if views else None,
            "kept": views.kept if views else None,
            "compare": compare,
        })
    except StlBenchError as exc:
        raise _error(str(exc)) from None
    except Exception as exc:
        log.exception("analysis failed for %s with %s", image_path, model_key)
        raise _error(f"Internal error while analysing the image ({exc.__class__.__name__}); "
                     "the server log has the details.") from None
    total_ms = (time.perf_counter() - start) * 1e3
    return (
        {name: prob for name, prob in result.top},
        pictures["label_map"],
        pictures["confidence"],
        pictures["kept"],
        pictures["compare"],
        details(entry, result, total_ms),
        _status(entry, result, total_ms, agreement, loaded.notes),
    )


def _status(entry: ModelEntry, result: Analysis, total_ms: float, agreement: float | None,
            notes: list[str]) -> str:
    """The status line: who answered how fast, the grid and Gumbel draw, comparisons, input notes."""
    info = entry.runner.info
    lines = [f"**{entry.key}**: {info.name} ({info.backend}, {info.head} head) answered in **{total_ms:.0f} ms** "
             f"(model {result.timings_ms['model']:.0f} ms)."]
    maps = result.maps
    if maps is None:
        lines.append("This model has no token head (a plain classifier), so it has no token maps; "
                     "pick a `*_token` model for them.")
    else:
        lines.append(f"{maps.grid[0]}×{maps.grid[1]} patches; Gumbel draw (seed {maps.seed}) keeps "
                     f"{int(maps.kept.sum())}/{maps.labels.size} tokens (expected {maps.expected_kept():.1f}).")
    if agreement is not None:
        lines.append(f"Labeler and student agree on {agreement:.0%} of the patches."
                     if agreement == agreement else "Labeler and student use different patch grids.")
    if notes:
        lines.append("Input: " + "; ".join(notes) + ".")
    return "  \n".join(lines)


def build_demo(catalog: Catalog, examples: Sequence[Path] = ()) -> gr.Blocks:
    """The page for a catalogue of opened models and a list of example image files."""
    choices = [(e.label, k) for k, e in catalog.entries.items()]
    first = catalog.first_key()
    start_status = catalog.empty_message if not catalog.entries else (
        "Pick an image and press **Analyze**." + "".join(
            f"  \n⚠️ {e.key}: {e.error}" for e in catalog.entries.values() if e.error))
    # Every answer adds its pictures to Gradio's cache: hourly, drop those older than an hour.
    with gr.Blocks(title="STL token-label maps", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = _explain_upload_errors(gr.Image(label="Image", type="filepath", image_mode=None,
                                                        sources=["upload", "clipboard"], height=300))
                model = gr.Dropdown(choices=choices, value=first, label="Model", interactive=bool(choices))
                opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Overlay opacity")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Gumbel seed", minimum=0)
                    resample = gr.Button("New Gumbel draw", size="sm")
                run = gr.Button("Analyze", variant="primary")
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[image],
                                example_labels=[Path(p).stem.replace("_", " ") for p in examples],
                                label="Examples", examples_per_page=12)
                gr.Markdown(f"Images up to {MAX_FILE_SIZE} and {MAX_PIXELS // 1_000_000} megapixels; "
                            "the model sees its own centre crop, shown below at patch resolution.")
            with gr.Column(scale=2):
                status = gr.Markdown(start_status, elem_id="status")
                with gr.Row():
                    label_map = gr.Image(label="Token-label map: class per patch", type="filepath",
                                         interactive=False, elem_classes=["tokenmap"])
                    confidence = gr.Image(label="Confidence per patch (= keep probability)", type="filepath",
                                          interactive=False, elem_classes=["tokenmap"])
                with gr.Row():
                    kept = gr.Image(label="Tokens a hard Gumbel-Softmax draw keeps", type="filepath",
                                    interactive=False, elem_classes=["tokenmap"])
                    top5 = gr.Label(num_top_classes=5, label="Top-5 classes")
                compare = gr.Image(label="Labeler vs student", type="filepath", interactive=False,
                                   elem_classes=["tokenmap"], visible=catalog.pair() is not None)
                with gr.Accordion("Details (JSON)", open=False):
                    info = gr.JSON(label="Per-patch labels, confidence, timings")

        files = OutputFiles()
        inputs = [image, model, opacity, seed]
        outputs = [top5, label_map, confidence, kept, compare, info, status]

        def analyze(image_path: str | None, model_key: str | None, opacity_value: float, seed_value: float):
            return _analyze(catalog, image_path, model_key, opacity_value, seed_value, files)

        def refresh(image_path: str | None, model_key: str | None, opacity_value: float, seed_value: float):
            # Slider, seed and model changes redraw only once there is an image to redraw.
            if not image_path:
                return tuple(gr.skip() for _ in outputs)
            return _analyze(catalog, image_path, model_key, opacity_value, seed_value, files)

        run.click(analyze, inputs, outputs, api_name=API_NAME)
        # A new image (upload or example) analyses itself: the example's value reaches the
        # server only once it has loaded, whereas an Analyze click right after an example
        # click can arrive before it. "always_last" drops stale redraws when inputs change fast.
        for event in (image.change, opacity.release, model.change, seed.change):
            event(refresh, inputs, outputs, api_visibility="private", trigger_mode="always_last")
        resample.click(lambda s: int(s or 0) + 1, seed, seed, api_visibility="private")
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None,
           max_file_size: str | int = MAX_FILE_SIZE, concurrency: int = CONCURRENCY,
           prevent_thread_lock: bool = False, quiet: bool = False) -> gr.Blocks:
    """Queue and serve the page; localhost unless `host` says otherwise."""
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_SIZE)
    theme = gr.themes.Default(font=_FONTS, font_mono=["ui-monospace", "monospace"])
    try:
        demo.launch(server_name=host, server_port=port, max_file_size=max_file_size,
                    prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssr_mode=False,
                    show_error=False, theme=theme, css=CSS)
    except OSError as exc:
        raise StlBenchError(f"cannot serve on {host}:{port}: {exc}; pass another --port or --host") from None
    return demo
