"""Served throughput under load, next to the in-process runner's best, in one run.

For each model: export it to ONNX (unless it already is one), find the in-process
ONNX Runtime runner's best batch size, then start `stl-bench serve` on 127.0.0.1
(embedded Ray, ONNX Runtime backend) and, at each concurrency, alternate `--rounds`
in-process rounds at that batch size with rounds of a bounded load generator (fixed
request count and a time limit per round; it stops by itself), so that the reference is
timed beside the served rounds. Every request is one encoded image, decoded and
preprocessed by the server.
Reports requests/s, p50/p99 latency and mean batch size (images per runner call, from the
timing each response carries), and served throughput as a ratio to in-process.

    python benchmarks/serve_load.py --models demo-student fan_tiny_12_p16_224 \
        --concurrency 1 8 32 64 --ingress haproxy --csv benchmarks/results/serve_load_cpu_2core_haproxy.csv

`demo-student` is the student of `stl-bench demo` (stl_bench_runs/demo/student/last.pt).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stl_bench  # noqa: E402,F401
from stl_bench.deploy.open import open_runner  # noqa: E402
from stl_bench.evaluate.preprocess import Preprocessing  # noqa: E402
from stl_bench.serve.ingress import INGRESSES  # noqa: E402
from stl_bench.serve.launcher import LaunchOptions, start  # noqa: E402
from stl_bench.serve.protocol import PREDICT, ServeConfig  # noqa: E402

log = logging.getLogger("benchmarks.serve_load")
DEMO_STUDENT = Path("stl_bench_runs/demo/student/last.pt")
_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def export(model: str, out_dir: Path) -> Path:
    """An ONNX file for a source: as is, exported from a checkpoint, or random weights by name."""
    from stl_bench.cli import main

    if model.endswith(".onnx"):
        return Path(model)
    source = DEMO_STUDENT if model == "demo-student" else Path(model)
    out = out_dir / f"{source.stem if source.exists() else model}.onnx"
    args = ["export", str(source), "-o", str(out)] if source.exists() else ["export", "--model", model, "-o", str(out)]
    if source.exists():
        args.append("--tokens")
    if main(args + ["--batch-sizes", "2"]) != 0:
        raise SystemExit(f"export of {model} failed")
    return out


def sample_images(size: int, count: int = 16) -> list[bytes]:
    """Encoded PNG digits (scikit-learn's, nothing downloaded), upscaled towards the model's input."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(count):
        pixels = (digits.images[i] * (255.0 / 16.0)).astype("uint8")
        img = Image.fromarray(pixels, mode="L").convert("RGB").resize((max(32, size + size // 7),) * 2)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _model_input(runner, images: list[bytes], batch: int) -> torch.Tensor:
    """A preprocessed batch of the sample images, as the server would build it."""
    from stl_bench.data.decode import ImageLimits
    from stl_bench.serve.inputs import image_crop

    prep = Preprocessing.from_data_config(runner.info.data_config)
    crops = torch.cat([image_crop(b, prep, ImageLimits()) for b in images])
    return prep.to_model_input(crops[torch.arange(batch) % len(crops)])


def in_process_rate(runner, x: torch.Tensor, seconds: float) -> float:
    """Images/s of the in-process runner on one preprocessed batch, after one untimed call."""
    runner.predict(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.predict(x).logits.cpu()  # .cpu(): waits for a GPU, as a served answer does
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def in_process_best(runner, images: list[bytes], batch_sizes: list[int], seconds: float,
                    passes: int = 2) -> tuple[float, int]:
    """The in-process runner's best batch size (and its images/s) over `batch_sizes`.

    Each size is timed in `passes` interleaved passes and scored by its median: a single
    pass let one slow minute of a shared VM pick batch 1 (23.9 img/s) over batch 8
    (30 img/s in the run before), which made every ratio of that run flatter the server.
    """
    inputs = {bs: _model_input(runner, images, bs) for bs in batch_sizes}
    rates: dict[int, list[float]] = {bs: [] for bs in batch_sizes}
    for _ in range(passes):
        for bs, x in inputs.items():
            rates[bs].append(in_process_rate(runner, x, seconds))
    for bs, r in rates.items():
        log.info("in-process batch %d: %.1f img/s (passes %s)", bs, statistics.median(r),
                 "/".join(f"{v:.1f}" for v in r))
    return max((statistics.median(r), bs) for bs, r in rates.items())


async def _load(url: str, images: list[bytes], concurrency: int, requests: int, limit_s: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    batch_requests: list[int] = []
    batch_images: list[int] = []
    inference_ms: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + limit_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued, errors
        while issued < requests and time.perf_counter() < deadline:
            body = images[issued % len(images)]
            issued += 1
            t0 = time.perf_counter()
            async with session.post(url + PREDICT, data=body, headers={"Content-Type": "image/png"}) as resp:
                out = await resp.json()
            if resp.status != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            batch_requests.append(out["timing"]["batch_requests"])
            batch_images.append(out["timing"]["batch_images"])
            inference_ms.append(out["timing"]["inference_ms"])

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=limit_s + 120)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"seconds": time.perf_counter() - start, "errors": errors, "latencies": latencies,
            "batch_requests": batch_requests, "batch_images": batch_images, "inference_ms": inference_ms}


def summarise(rounds: list[dict]) -> dict:
    """Requests/s, latency percentiles and mean batch over the served rounds of one level."""
    lat = sorted(x for r in rounds for x in r["latencies"])
    batch_requests = [x for r in rounds for x in r["batch_requests"]]
    batch_images = [x for r in rounds for x in r["batch_images"]]
    done, wall = len(lat), sum(r["seconds"] for r in rounds)
    inference_ms = [x for r in rounds for x in r["inference_ms"]]
    # each response saw its runner call: a call of k requests is reported k times
    calls = sum(1.0 / k for k in batch_requests) or 1.0
    busy_s = sum(ms / k for ms, k in zip(inference_ms, batch_requests)) / 1000.0
    return {"requests": done, "errors": sum(r["errors"] for r in rounds), "seconds": wall, "req_per_s": done / wall,
            "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
            "mean_batch": sum(i / k for i, k in zip(batch_images, batch_requests)) / calls if done else 0.0,
            # how much of the wall time the runner was busy, and its speed while it was: tells a
            # model starved between calls from a model slowed down by the request path's CPU
            "model_busy": busy_s / wall if wall else 0.0, "model_img_s": done / busy_s if busy_s else float("nan")}


def serve_config(model: str, args: argparse.Namespace, out_dir: Path) -> ServeConfig:
    """ONNX Runtime (an exported file) or PyTorch (the checkpoint, or random weights by name)."""
    common = dict(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, device=args.device, amp=args.amp)
    if args.backend == "onnx":
        return ServeConfig(source=str(export(model, out_dir).resolve()), **common)
    source = DEMO_STUDENT if model == "demo-student" else Path(model)
    if source.exists():
        return ServeConfig(source=str(source.resolve()), **common)
    return ServeConfig(model=model, **common)


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of the processes that take part, by role (psutil; {} without it)."""
    try:
        import psutil
    except ImportError:
        return {}
    roles: dict[str, float] = {}
    for p in psutil.process_iter(["pid", "name"]):
        name = p.info["name"] or ""
        role = ("replica" if "ServeReplica" in name else "http proxy" if "ProxyActor" in name or name == "haproxy"
                else "load generator" if p.info["pid"] == os.getpid() else "ray other" if name.startswith(("ray::", "gcs", "raylet"))
                else None)
        if role:
            try:
                t = p.cpu_times()
                roles[role] = roles.get(role, 0.0) + t.user + t.system
            except psutil.Error:
                continue
    return roles


def _served_round(url: str, images: list[bytes], c: int, requests: int, limit_s: float) -> dict:
    """One bounded load round, with the CPU seconds each role spent in it."""
    before = _cpu_seconds()
    r = asyncio.run(_load(url, images, c, requests, limit_s))
    after = _cpu_seconds()
    r["cpu_s"] = {k: after[k] - before.get(k, 0.0) for k in after}
    return r


def measure_level(url: str, runner, x: torch.Tensor, images: list[bytes], c: int, args: argparse.Namespace) -> dict:
    """`--rounds` alternations of an in-process round and a served round at concurrency `c`.

    Shared machines change speed from minute to minute (in-process throughput moved by up
    to 1.7x between two runs on one 2-core VM), so the reference is timed right beside
    each served round rather than once before all of them; the ratio is then taken
    between rates measured under the same conditions.
    """
    requests = max(args.requests, 4 * c)
    rounds, in_process = [], []
    for _ in range(args.rounds):
        in_process.append(in_process_rate(runner, x, args.in_process_seconds))
        rounds.append(_served_round(url, images, c, requests, args.time_limit))
    out = summarise(rounds)
    cpu: dict[str, float] = {}
    for r in rounds:
        for k, v in r["cpu_s"].items():
            cpu[k] = cpu.get(k, 0.0) + v
    out["cpu_ms_per_request"] = {k: round(1000 * v / max(1, out["requests"]), 1) for k, v in cpu.items()}
    out["in_process_img_s"] = statistics.mean(in_process)
    out["in_process_rounds"] = "/".join(f"{v:.1f}" for v in in_process)
    out["served_rounds"] = "/".join(f"{len(r['latencies']) / r['seconds']:.1f}" for r in rounds)
    out["served_vs_in_process"] = out["req_per_s"] / out["in_process_img_s"]
    return out


def bench_model(model: str, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    cfg = serve_config(model, args, out_dir)
    runner = open_runner(cfg.source, model_name=cfg.model, device=cfg.device, amp_dtype=_AMP[cfg.amp])
    size = int(runner.info.data_config["input_size"][-1])
    images = sample_images(size)
    _, best_bs = in_process_best(runner, images, args.batch_sizes, args.in_process_seconds)
    x = _model_input(runner, images, best_bs)
    name, backend = runner.info.name, runner.info.backend
    launch = LaunchOptions(port=args.port, gpus_per_replica=1.0 if args.device.startswith("cuda") else 0.0,
                           ingress=args.ingress)
    server = start(cfg, launch)
    rows = []
    try:
        asyncio.run(_load(server.url, images, 4, 16, 30))  # warm-up
        for c in args.concurrency:
            r = measure_level(server.url, runner, x, images, c, args)
            r.update(model=name, source=Path(cfg.source or cfg.model).name, backend=backend, concurrency=c,
                     in_process_batch=best_bs, ingress=args.ingress)
            log.info("%s %s c=%d: %.1f req/s (%.2fx in-process %.1f img/s at batch %d; rounds served %s, in-process %s), "
                     "p50 %.0f ms, p99 %.0f ms, mean batch %.1f, runner busy %.0f%% at %.1f img/s, %d errors; CPU ms per request %s",
                     name, args.ingress, c,
                     r["req_per_s"], r["served_vs_in_process"], r["in_process_img_s"], best_bs, r["served_rounds"],
                     r["in_process_rounds"], r["p50_ms"], r["p99_ms"], r["mean_batch"], 100 * r["model_busy"], r["model_img_s"], r["errors"],
                     r["cpu_ms_per_request"])
            rows.append(r)
    finally:
        server.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["demo-student", "fan_tiny_12_p16_224"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=100,
                   help="requests per served round (at least 4 x concurrency)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per level at most")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32, 64],
                   help="in-process batch sizes tried; the best one is the reference")
    p.add_argument("--in-process-seconds", type=float, default=5.0, help="seconds per in-process timing")
    p.add_argument("--rounds", type=int, default=3,
                   help="in-process and served rounds alternated per level (each served round: --requests requests)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--ingress", default="proxy", choices=INGRESSES,
                   help="what answers on the port: Ray Serve's Python proxy or HAProxy (stl-bench serve --ingress)")
    p.add_argument("--backend", default="onnx", choices=["onnx", "torch"],
                   help="onnx: export and serve with ONNX Runtime (CPU); torch: serve the checkpoint / model name")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for one GPU replica (torch backend)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast (torch backend)")
    p.add_argument("--csv", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cpu = platform.processor() or platform.machine()
    log.info("torch %s, %d cores, %s", torch.__version__, os.cpu_count() or 0, cpu)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rows += bench_model(model, args, Path(tmp))
    cols = ["model", "backend", "ingress", "concurrency", "requests", "errors", "req_per_s", "p50_ms", "p99_ms", "mean_batch",
            "in_process_img_s", "in_process_batch", "served_vs_in_process", "model_busy", "model_img_s", "served_rounds", "in_process_rounds",
            "cpu_ms_per_request"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]).replace("|", "/") for c in cols)
              + " |")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
