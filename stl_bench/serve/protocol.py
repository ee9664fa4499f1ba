"""The served API's contract, without the server: what a request may be, what comes back.

Kept apart from the Ray Serve deployment so that parsing, limits and response shapes are
tested in-process in milliseconds, and so that the HTTP runner (the client side) and the
server share one definition of paths, content types and error bodies.

Requests to `POST /v1/predict` are one of:

* an encoded image (raw body with `Content-Type: image/*` or `application/octet-stream`,
  or a multipart upload): decoded and preprocessed once on the server exactly as the
  evaluation harness does (`load_rgb`, then the model's resize / centre crop / normalise);
* a float32 NumPy array (`application/x-npy`) of already preprocessed inputs
  `[B, 3, H, W]` at the model's input size: what the HTTP runner sends, so that an
  evaluation through the endpoint scores exactly the harness's tensors.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from stl_bench.errors import StlBenchError

API = "/v1"
PREDICT, HEALTH, MODEL = f"{API}/predict", f"{API}/health", f"{API}/model"
NPY = "application/x-npy"
IMAGE_TYPES = ("image/", "application/octet-stream")
MULTIPART = "multipart/form-data"
HOW_TO_SEND = (f"send an image as the raw body (Content-Type image/jpeg, image/png or application/octet-stream), "
               f"as a multipart upload (curl -F image=@photo.jpg), or preprocessed inputs as {NPY}")


class RequestError(Exception):
    """A bad request: answered with `status` and a JSON `{"error": message}`; the server keeps serving."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


@dataclass
class ServeConfig:
    """Everything a replica needs to open its model and answer requests (JSON-able: it is
    the `args` of the Ray Serve application, in `--write-config` files too)."""

    source: str | None = None
    model: str | None = None
    head: str = "auto"
    device: str = "cpu"
    ema: bool = False
    num_classes: int | None = None
    img_size: int | None = None
    amp: str = "none"
    max_batch: int = 32
    batch_wait_ms: float = 10.0
    max_body_mb: float = 10.0
    min_side: int = 8
    max_aspect: float = 20.0
    max_pixels: int = 40_000_000
    top_k: int = 5
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [(self.max_batch >= 1, "--max-batch must be at least 1"),
                  (self.batch_wait_ms >= 0, "--batch-wait-ms must not be negative"),
                  (self.max_body_mb > 0, "--max-body-mb must be positive"),
                  (self.min_side >= 1, "--min-side must be at least 1"),
                  (self.top_k >= 1, "--top-k must be at least 1"),
                  (self.threads is None or self.threads >= 1, "--threads must be at least 1"),
                  (self.amp in ("none", "bf16", "fp16"), "--amp must be none, bf16 or fp16"),
                  (bool(self.source or self.model), "nothing to serve: pass a checkpoint, an ONNX file or an "
                                                    "engine, or --model NAME (random weights)")]
        for ok, message in checks:
            if not ok:
                raise StlBenchError(message)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ServeConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise StlBenchError(f"unknown serve option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


@dataclass
class Query:
    """Per-request options from the query string."""

    tokens: bool = False
    logits: bool = False
    top_k: int = 5

    @classmethod
    def parse(cls, params: dict[str, str], default_top_k: int, num_classes: int) -> "Query":
        def flag(name: str) -> bool:
            value = params.get(name, "0").strip().lower()
            if value not in ("0", "1", "true", "false", "yes", "no", ""):
                raise RequestError(400, f"?{name}= takes 1 or 0, not {value!r}")
            return value in ("1", "true", "yes")

        raw = params.get("top_k", params.get("topk", str(default_top_k)))
        try:
            top_k = int(raw)
        except ValueError:
            raise RequestError(400, f"?top_k= takes a whole number, not {raw!r}") from None
        if top_k < 1:
            raise RequestError(400, f"?top_k= must be at least 1, not {top_k}")
        return cls(tokens=flag("tokens"), logits=flag("logits"), top_k=min(top_k, num_classes))


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def body_too_large(size: int, limit: int) -> RequestError:
    return RequestError(413, f"the request body is {size / 2**20:.1f} MB, over the server's limit of "
                             f"{limit / 2**20:.1f} MB (stl-bench serve --max-body-mb)")


def check_body(body: bytes, content_type: str | None, limit: int) -> str:
    """Refuse empty, oversized and wrongly typed bodies; return the media type."""
    kind = media_type(content_type)
    if not body:
        raise RequestError(400, f"the request body is empty; {HOW_TO_SEND}")
    if len(body) > limit:
        raise body_too_large(len(body), limit)
    if kind == NPY or kind.startswith(IMAGE_TYPES):
        return kind
    raise RequestError(415, f"Content-Type {kind or '(none)'} is not accepted; {HOW_TO_SEND}")


def parse_npy(body: bytes, input_size: tuple[int, int], max_batch: int) -> torch.Tensor:
    """A preprocessed float32 batch `[B, 3, H, W]` from an `.npy` body (no pickles)."""
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RequestError(400, f"the body is not a NumPy .npy array ({exc})") from None
    h, w = input_size
    if arr.dtype != np.float32 or arr.ndim != 4 or tuple(arr.shape[1:]) != (3, h, w):
        raise RequestError(400, f"expected float32 [B, 3, {h}, {w}] preprocessed inputs, got {arr.dtype} "
                                f"{list(arr.shape)}; GET {MODEL} gives the preprocessing")
    if not 1 <= arr.shape[0] <= max_batch:
        raise RequestError(413, f"{arr.shape[0]} images in one request; send 1 to {max_batch} "
                                "(stl-bench serve --max-batch)")
    if not np.isfinite(arr).all():
        raise RequestError(400, "the array holds NaN or infinite values")
    return torch.from_numpy(arr.copy())


def to_npy(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32)), allow_pickle=False)
    return buf.getvalue()


@dataclass
class Timing:
    """Milliseconds spent on a request, and the runner call it shared with others."""

    wait_ms: float = 0.0  # body received -> decoding starts (a free worker thread)
    decode_ms: float = 0.0
    queue_ms: float = 0.0  # decoded -> in a model call (the batch queue)
    inference_ms: float = 0.0
    total_ms: float = 0.0
    batch_images: int = 0
    batch_requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class ItemResult:
    """One request's share of a batched runner call."""

    logits: torch.Tensor  # [n, C]
    token_logits: torch.Tensor | None  # [n, N, C]
    timing: Timing = field(default_factory=Timing)


def top_k_entries(logits: torch.Tensor, k: int, names: list[str]) -> list[dict[str, Any]]:
    probs = torch.softmax(logits.float(), dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]))
    return [{"index": int(i), "name": names[int(i)], "probability": float(p)} for p, i in zip(values, indices)]


def token_grid_entry(token_logits: torch.Tensor, grid: tuple[int, int]) -> dict[str, Any]:
    """The per-patch labels the app draws: argmax class and its softmax probability, row-major."""
    probs = torch.softmax(token_logits.float(), dim=-1)
    confidence, classes = probs.max(dim=-1)
    rows, cols = grid
    return {"grid": [rows, cols], "classes": classes.reshape(rows, cols).tolist(),
            "confidence": [[round(float(c), 6) for c in row] for row in confidence.reshape(rows, cols)]}


def prediction_body(result: ItemResult, query: Query, names: list[str], grid: tuple[int, int] | None,
                    model: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer to one predict request: one entry per image, in request order."""
    predictions = []
    for i in range(result.logits.shape[0]):
        entry: dict[str, Any] = {"top_k": top_k_entries(result.logits[i], query.top_k, names)}
        if query.logits:
            # float32 -> Python float -> JSON repr round-trips exactly, so clients score the same numbers
            entry["logits"] = [float(v) for v in result.logits[i].float()]
        if query.tokens:
            if result.token_logits is None or grid is None:
                raise RequestError(400, f"{model['name']} has no token-label head; drop ?tokens=1")
            entry["tokens"] = token_grid_entry(result.token_logits[i], grid)
        predictions.append(entry)
    return {"model": model["name"], "head": model["head"], "predictions": predictions,
            "timing": result.timing.to_dict()}


def error_from_json(status: int, text: str) -> str:
    """The message of a server's JSON error body (or its text when it is not ours)."""
    try:
        return str(json.loads(text).get("error") or text)
    except (ValueError, AttributeError):
        return text.strip()[:300] or f"HTTP {status}"
