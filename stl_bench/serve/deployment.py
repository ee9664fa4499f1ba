"""The Ray Serve application: one deployment that decodes, batches and predicts.

Each request is read, checked and decoded in a worker thread of its replica (decoding
happens once, with the harness's preprocessing), then waits in Ray Serve's
`@serve.batch` queue; the queue hands up to `max_batch` images (counted by
`batch_size_fn`, so a request carrying several arrays counts them all) to one runner
call, which also runs in a thread so the replica keeps accepting requests meanwhile.
Replicas, placement, restarts, the HTTP proxy and Prometheus metrics are Ray Serve's.

`build_app(args)` is the application builder that `serve run` / `serve deploy` (and
KubeRay's RayService) import through `import_path: stl_bench.serve.deployment:build_app`.

No `from __future__ import annotations` here: FastAPI reads the endpoint signatures'
annotations at run time to know that `request` is the `Request`.
"""

import asyncio
import logging
import os
import time
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.metrics import Counter, Histogram

from stl_bench.data.decode import ImageLimits
from stl_bench.deploy.class_names import class_names_for
from stl_bench.deploy.open import open_runner
from stl_bench.deploy.runner import Prediction, Runner
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.serve.inputs import PreparedItem, model_inputs, prepare
from stl_bench.serve.model_card import describe_runner, token_grid_of
from stl_bench.serve.protocol import (HEALTH, MODEL, MULTIPART, PREDICT, ItemResult, Query, RequestError,
                                      ServeConfig, Timing, body_too_large, check_body, media_type,
                                      prediction_body)

log = logging.getLogger("stl_bench.serve")
DEPLOYMENT = "StlBenchModel"
APP_NAME = "stl-bench"
api = FastAPI(title="stl-bench", description="FAN / STL models served: POST /v1/predict, GET /v1/model, "
                                             "GET /v1/health", docs_url="/docs", redoc_url=None)

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


async def _read_body(request: Request, limit: int) -> tuple[bytes, str]:
    """The image bytes and their media type; a multipart upload's first file field."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:  # multipart framing allowed for
        raise body_too_large(int(declared), limit)
    kind = media_type(request.headers.get("content-type"))
    if kind != MULTIPART:
        return await request.body(), request.headers.get("content-type", "")
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=limit + 1)
    except Exception as exc:  # starlette raises its own MultiPartException, HTTPException, ...
        raise RequestError(400, f"the multipart upload could not be read ({exc})") from None
    uploads = [v for v in form.values() if hasattr(v, "read")]
    if not uploads:
        raise RequestError(400, "the multipart upload has no file field; send curl -F image=@photo.jpg")
    upload = uploads[0]
    data = await upload.read()
    return data, upload.content_type or "application/octet-stream"


def _open(cfg: ServeConfig) -> Runner:
    """The replica's runner. ONNX Runtime threads do not spin while idle here: a spinning
    pool would take the cores that the HTTP proxy and the batching loop need between calls."""
    if cfg.source and cfg.source.lower().endswith(".onnx"):
        from stl_bench.deploy.onnx_runner import OnnxRunner

        return OnnxRunner.open(cfg.source, device=cfg.device, head=cfg.head, threads=cfg.threads or 0, spin=False)
    return open_runner(cfg.source, model_name=cfg.model, device=cfg.device, head=cfg.head, use_ema=cfg.ema,
                       num_classes=cfg.num_classes, amp_dtype=_AMP[cfg.amp], img_size=cfg.img_size)


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=256, health_check_period_s=5.0)
@serve.ingress(api)
class StlBenchModel:
    """A model behind `/v1/*`: opened once per replica through `open_runner`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = ServeConfig.from_dict(config)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.runner = _open(self.cfg)
        self.prep = Preprocessing.from_data_config(self.runner.info.data_config)
        self.names = class_names_for(self.runner.info)
        self.grid = token_grid_of(self.runner)
        self.card = describe_runner(self.runner, self.cfg, self.prep, self.grid)
        self.limits = ImageLimits(max_pixels=self.cfg.max_pixels, max_aspect=self.cfg.max_aspect,
                                  min_side=self.cfg.min_side)
        self.predict_batch.set_max_batch_size(self.cfg.max_batch)
        self.predict_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000.0)
        self._per_image_s = 0.0  # recent runner time per image (moving average)
        self._call_ends = 0.0  # when the running runner call should end (perf_counter); 0: none running
        self._window_s = self.cfg.batch_wait_ms / 1000.0
        tags = ("model",)
        self.images_total = Counter("stl_bench_images", description="images predicted", tag_keys=tags)
        self.errors_total = Counter("stl_bench_request_errors", description="requests refused (4xx)",
                                    tag_keys=("model", "status"))
        self.batch_images = Histogram("stl_bench_batch_images", description="images per runner call",
                                      boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256], tag_keys=tags)
        self.inference_ms = Histogram("stl_bench_inference_ms", description="runner call time (ms)",
                                      boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
                                      tag_keys=tags)
        for metric in (self.images_total, self.batch_images, self.inference_ms):
            metric.set_default_tags({"model": self.runner.info.name})
        self.errors_total.set_default_tags({"model": self.runner.info.name})
        self.loaded = True
        log.info("serving %s (%s, %s head) pid %d", self.runner.info.name, self.runner.info.backend,
                 self.runner.info.head, os.getpid())

    # ------------------------------------------------------------------ endpoints
    @api.get(HEALTH)
    def health(self) -> JSONResponse:
        ok = bool(getattr(self, "loaded", False))
        return JSONResponse({"status": "ok" if ok else "loading", "model": self.runner.info.name},
                            status_code=200 if ok else 503)

    @api.get(MODEL)
    def model(self) -> dict[str, Any]:
        return {**self.card, "replica_pid": os.getpid()}

    @api.post(PREDICT)
    async def predict(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        try:
            query = Query.parse(dict(request.query_params), self.cfg.top_k, self.runner.info.num_classes)
            body, content_type = await _read_body(request, self.cfg.max_body_bytes)
            kind = check_body(body, content_type, self.cfg.max_body_bytes)
            item = await asyncio.to_thread(prepare, body, kind, self.prep, self.limits, self.cfg.max_batch,
                                           time.perf_counter())
            self._tune_window()
            result: ItemResult = await self.predict_batch(item)
            result.timing.total_ms = (time.perf_counter() - start) * 1000.0
            return JSONResponse(prediction_body(result, query, self.names, self.grid, self.card))
        except RequestError as exc:
            self.errors_total.inc(tags={"status": str(exc.status)})
            return JSONResponse(exc.body(), status_code=exc.status)

    # ------------------------------------------------------------------ batching
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=lambda items: sum(i.count for i in items))
    async def predict_batch(self, items: list[PreparedItem]) -> list[ItemResult]:
        started = time.perf_counter()
        total = sum(i.count for i in items)
        self._call_ends = started + self._per_image_s * total
        try:
            pred = await asyncio.to_thread(self._run, items)
        finally:
            self._call_ends = 0.0
        inference_ms = (time.perf_counter() - started) * 1000.0
        per_image = inference_ms / 1000.0 / total
        self._per_image_s = 0.8 * self._per_image_s + 0.2 * per_image if self._per_image_s else per_image
        self.images_total.inc(total)
        self.batch_images.observe(total)
        self.inference_ms.observe(inference_ms)
        out, offset = [], 0
        for item in items:
            n = item.count
            tokens = pred.token_logits[offset:offset + n] if pred.token_logits is not None else None
            timing = Timing(wait_ms=(item.prepared - item.received) * 1000.0 - item.decode_ms,
                            decode_ms=item.decode_ms, queue_ms=(started - item.prepared) * 1000.0,
                            inference_ms=inference_ms, batch_images=total, batch_requests=len(items))
            out.append(ItemResult(pred.logits[offset:offset + n], tokens, timing))
            offset += n
        return out

    def _tune_window(self) -> None:
        """Close the next batch when the runner frees up: at once when it is idle, else when
        its running call should end (set as a request joins the queue, since Ray Serve reads
        the wait once, when a batch's first request arrives).

        Ray Serve (2.60) forms the next batch while the previous one runs, closing it after
        the batch wait, and queues it behind the running one. A fixed short wait leaves a
        slow model's batches small (2 to 3 images at 32 concurrent requests) however long
        requests queue; a fixed wait of one model call (the first fix) idles the runner
        whenever a batch's first request comes after the previous call ended, as every
        request does at low concurrency (runner busy 62 % at 8 concurrent requests). Waiting
        for the running call's expected end does neither: what arrives during a call goes
        into the next one, and an idle runner waits only --batch-wait-ms.
        """
        base = self.cfg.batch_wait_ms / 1000.0
        window = base
        if self._call_ends:
            window = min(max(base, self._call_ends - time.perf_counter()), 1.0)
        if abs(window - self._window_s) > 1e-4:
            self._window_s = window
            self.predict_batch.set_batch_wait_timeout_s(window)

    def _run(self, items: list[PreparedItem]) -> Prediction:
        pred = self.runner.predict(model_inputs(items, self.prep))
        return Prediction(pred.logits.cpu(), pred.token_logits.cpu() if pred.token_logits is not None else None)

    def check_health(self) -> None:
        """Ray Serve's replica health probe: a replica without a model is restarted."""
        if not getattr(self, "loaded", False):
            raise RuntimeError("model not loaded")


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug, but never an HTML page
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc})", "status": 500}, status_code=500)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application for a config: `args` are `ServeConfig` fields plus `replicas`,
    `cpus_per_replica` and `gpus_per_replica` (what `serve build`-style configs carry)."""
    args = dict(args)
    replicas = int(args.pop("replicas", 1))
    cpus = float(args.pop("cpus_per_replica", 1))
    gpus = float(args.pop("gpus_per_replica", 0))
    cfg = ServeConfig.from_dict(args)
    deployment = StlBenchModel.options(num_replicas=replicas, ray_actor_options={"num_cpus": cpus, "num_gpus": gpus})
    return deployment.bind(cfg.to_dict())
