"""Inference benchmark: latency and throughput per backend, as ratios to PyTorch eager.

Every backend is timed in the same process on the same inputs, in interleaved rounds
(each round runs every backend once, starting from a different one), so that load
from other processes and clock drift hit all backends alike and the ratios to eager
stay meaningful on a shared machine. Each row also says whether the backend still
gives the same answers: top-1 and token-argmax agreement with FP32 eager on real
images.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from stl_bench.errors import StlBenchError
from stl_bench.fan.model import fuse_token_head
from stl_bench.io import write_bytes

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]

CPU_BACKENDS = ("eager", "autocast-bf16", "autocast-fp16", "compile", "ort", "ort-fp16")
GPU_BACKENDS = ("eager", "autocast-bf16", "autocast-fp16", "compile", "compile-bf16", "ort", "ort-fp16",
                "tensorrt", "tensorrt-fp16")
ALL_BACKENDS = tuple(dict.fromkeys(CPU_BACKENDS + GPU_BACKENDS))
H100_BF16_DENSE_TFLOPS = 790.0  # measured peak on the project's H100s (DESIGN/issue 5)


@dataclass
class BenchConfig:
    """What to benchmark and how long; small defaults suit a 2-core CPU."""

    model: str | None
    checkpoint: Path | None = None
    num_classes: int | None = None
    img_size: int | None = None
    device: str = "cpu"
    batch_size: int = 8
    latency_iters: int = 20
    throughput_iters: int = 5
    warmup: int = 2
    backends: tuple[str, ...] | None = None
    head: str = "auto"
    real_images: int = 64
    images_dir: Path | None = None
    work_dir: Path | None = None
    ort_threads: int = 0
    peak_tflops: float = H100_BF16_DENSE_TFLOPS


@dataclass
class BenchRow:
    """One backend's result; ratios are eager time / this backend's time (higher is faster)."""

    model: str | None
    backend: str
    precision: str
    device: str
    batch: int
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    throughput_img_s: float | None = None
    latency_speedup: float | None = None
    throughput_speedup: float | None = None
    top1_agreement: float | None = None
    token_agreement: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    status: str = "ok"
    note: str = ""
    date: str = ""
    machine: str = ""
    torch: str = torch.__version__
    onnxruntime: str = ""
    threads: int = 0
    load_1m: float | None = None


@dataclass
class Backend:
    name: str
    precision: str
    forward: Forward | None
    note: str = ""
    skip: str = ""  # why it cannot run here (then forward is None)


# --------------------------------------------------------------------------- backends
def torch_forward(model: torch.nn.Module, device: torch.device, amp: torch.dtype | None,
                  inference_mode: bool = True) -> Forward:
    """Eager forward; `inference_mode=False` uses no_grad instead, which `torch.compile`
    needs (inductor cannot trace a model whose parameters meet inference tensors)."""
    has_tokens = bool(getattr(model, "has_token_head", False))
    no_grad = torch.inference_mode if inference_mode else torch.no_grad

    def forward(x: torch.Tensor):
        with no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if has_tokens:
                cls, tokens = model.forward_tokens(x)
                return cls.float(), tokens.float()
            return model(x).float(), None

    return forward


def _compiled_forward(model: torch.nn.Module, device: torch.device, amp: torch.dtype | None) -> Forward:
    # CUDA graphs ("reduce-overhead") remove per-kernel launch cost on the GPU; on the
    # CPU there are no graphs to capture and inductor's default mode is the fast one.
    mode = "reduce-overhead" if device.type == "cuda" else None
    inner = torch_forward(model, device, amp, inference_mode=False)
    compiled = torch.compile(inner, mode=mode, dynamic=False)

    def forward(x: torch.Tensor):
        out = compiled(x)
        # CUDA-graph outputs are overwritten by the next replay: keep our own copy.
        return tuple(o.clone() if o is not None else None for o in out) if mode else out

    return forward


def _ort_forward(path: Path, device: torch.device, threads: int) -> Forward:
    from stl_bench.deploy.onnx_runner import OnnxRunner

    runner = OnnxRunner.open(path, device="cuda" if device.type == "cuda" else "cpu", head="cls", threads=threads)

    def forward(x: torch.Tensor):
        pred = runner.predict(x)
        return pred.logits, pred.token_logits

    return forward


def _trt_forward(path: Path, device: torch.device) -> Forward:
    from stl_bench.deploy.tensorrt_runner import TensorRTRunner

    runner = TensorRTRunner.open(path, device=device, head="cls")

    def forward(x: torch.Tensor):
        pred = runner.predict(x)
        return pred.logits, pred.token_logits

    return forward


def _why_not(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:240]


PRECISIONS = {"eager": "fp32", "autocast-bf16": "bf16", "autocast-fp16": "fp16", "compile": "fp32",
              "compile-bf16": "bf16", "ort": "fp32", "ort-fp16": "fp16", "tensorrt": "fp32", "tensorrt-fp16": "fp16"}


class _ExportedFiles:
    """The ONNX files and engines the ONNX Runtime and TensorRT backends run, each made once
    (FP32 export first: the FP16 graph and the engines are built from it)."""

    def __init__(self, config: BenchConfig, model: torch.nn.Module, arch: str, folder: Path) -> None:
        self.config, self.model, self.arch, self.folder = config, model, arch, folder
        self.paths: dict[str, Path] = {}

    def onnx(self, precision: str) -> Path:
        if precision not in self.paths:
            from stl_bench.deploy.export_onnx import convert_fp16, export_onnx
            from stl_bench.deploy.onnx_format import metadata_for

            fp32 = self.folder / f"{self.arch}.onnx"
            if not fp32.exists():
                tokens = bool(getattr(self.model, "has_token_head", False))
                meta = metadata_for(self.model, self.arch, tokens=tokens, img_size=self.config.img_size)
                export_onnx(self.model, fp32, meta)
            self.paths["fp32"] = fp32
            if precision == "fp16":
                self.paths["fp16"] = convert_fp16(fp32, self.folder / f"{self.arch}.fp16.onnx")
        return self.paths[precision]

    def engine(self, precision: str) -> Path:
        from stl_bench.deploy.tensorrt import BatchProfile, build_engine

        engine = self.folder / f"{self.arch}.{precision}.engine"
        if not engine.exists():
            batch = self.config.batch_size
            build_engine(self.onnx(precision), engine, profile=BatchProfile(1, batch, max(batch, 1)),
                         timing_cache=self.folder / "timing.cache")
        return engine


def _builders(config: BenchConfig, model: torch.nn.Module, device: torch.device,
              files: _ExportedFiles) -> dict[str, Callable[[], Forward]]:
    """How to make each backend's forward; called only for the backends asked for."""
    threads = config.ort_threads
    return {
        "eager": lambda: torch_forward(model, device, None),
        "autocast-bf16": lambda: torch_forward(model, device, torch.bfloat16),
        "autocast-fp16": lambda: torch_forward(model, device, torch.float16),
        "compile": lambda: _compiled_forward(model, device, None),
        "compile-bf16": lambda: _compiled_forward(model, device, torch.bfloat16),
        "ort": lambda: _ort_forward(files.onnx("fp32"), device, threads),
        "ort-fp16": lambda: _ort_forward(files.onnx("fp16"), device, threads),
        "tensorrt": lambda: _trt_forward(files.engine("fp32"), device),
        "tensorrt-fp16": lambda: _trt_forward(files.engine("fp16"), device),
    }


def _notes(config: BenchConfig, device: torch.device) -> dict[str, str]:
    cuda = device.type == "cuda"
    return {
        "compile": "inductor, CUDA graphs" if cuda else "inductor",
        "compile-bf16": "inductor, CUDA graphs" if cuda else "inductor",
        "ort": f"{'CUDA' if cuda else 'CPU'} EP, threads={config.ort_threads or 'default'}",
        "ort-fp16": f"{'CUDA' if cuda else 'CPU'} EP, FP16 graph",
        "tensorrt-fp16": "FP16 graph, strongly typed",
    }


def make_backends(config: BenchConfig, model: torch.nn.Module, arch: str, onnx_dir: Path) -> list[Backend]:
    """Build each requested backend; one that cannot run here becomes a skipped row with its reason."""
    device = torch.device(config.device)
    names = config.backends or (GPU_BACKENDS if device.type == "cuda" else CPU_BACKENDS)
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise StlBenchError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(ALL_BACKENDS)}")
    if "eager" not in names:
        names = ("eager", *names)  # the baseline every ratio refers to
    builders = _builders(config, model, device, _ExportedFiles(config, model, arch, onnx_dir))
    notes = _notes(config, device)
    backends = []
    for name in names:
        if name.startswith("tensorrt"):
            from stl_bench.deploy.tensorrt import tensorrt_unavailable_reason

            reason = tensorrt_unavailable_reason()
            if reason:
                backends.append(Backend(name, PRECISIONS[name], None, skip=reason))
                continue
        try:
            backends.append(Backend(name, PRECISIONS[name], builders[name](), note=notes.get(name, "")))
        except StlBenchError as exc:
            if name == "eager":
                raise
            backends.append(Backend(name, PRECISIONS[name], None, skip=_why_not(exc)))
    return backends


# --------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm(backends: list[Backend], x: torch.Tensor, warmup: int, device: torch.device) -> None:
    """Warm-up calls; a backend that fails here (e.g. an unsupported op) becomes a skip."""
    for b in backends:
        if b.forward is None:
            continue
        try:
            for _ in range(max(1, warmup)):
                b.forward(x)
            _sync(device)
        except Exception as exc:  # any backend failure is reported as that backend's row, not a crash
            if b.name == "eager":
                raise
            log.warning("%s failed during warm-up: %s", b.name, _why_not(exc))
            b.forward, b.skip = None, f"failed at batch {len(x)}: {_why_not(exc)}"


def time_interleaved(backends: list[Backend], x: torch.Tensor, iters: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Seconds per call for each runnable backend, in rounds that rotate the order.

    In-process thread pools interfere: ONNX Runtime's workers keep spinning after a
    run and starve PyTorch's OpenMP threads (on 2 loaded cores this slowed eager 4x in
    a first version), so each timed call follows an untimed one of the same backend.
    """
    _warm(backends, x, warmup, device)
    live = [b for b in backends if b.forward is not None]
    times: dict[str, list[float]] = {b.name: [] for b in live}
    for i in range(iters):
        for b in live[i % len(live):] + live[: i % len(live)]:
            # One untimed call first: it absorbs the previous backend's idle threads still
            # spinning (ONNX Runtime's pool, OpenMP's) and refills the caches.
            b.forward(x)
            _sync(device)
            start = time.perf_counter()
            b.forward(x)
            _sync(device)
            times[b.name].append(time.perf_counter() - start)
    return times


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# --------------------------------------------------------------------------- agreement and FLOPs
def _scores(forward: Forward, images: torch.Tensor, batch: int, device: torch.device,
            fused: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits, tokens = [], []
    for chunk in images.split(batch):
        cls, tok = forward(chunk.to(device))
        cls = cls.float().cpu()
        tok = tok.float().cpu() if tok is not None else None
        logits.append(fuse_token_head(cls, tok) if fused and tok is not None else cls)
        if tok is not None:
            tokens.append(tok)
    return torch.cat(logits), (torch.cat(tokens) if tokens else None)


def flops_per_image(model: torch.nn.Module, input_size: tuple[int, ...]) -> float:
    """Forward FLOPs of one image (matmuls, convolutions, attention), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = torch.zeros(1, *input_size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    # The counter knows no CPU flash-attention kernel and would count attention as 0;
    # the math backend runs it as counted matmuls.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        if getattr(model, "has_token_head", False):
            model.forward_tokens(x)
        else:
            model(x)
    return float(counter.get_total_flops())


def gemm_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048,
                    iters: int = 10) -> float:
    """FLOP/s of one large square matmul here: the practical ceiling for the model's matmuls.

    A model cannot run faster than its FLOPs at this rate, so `flops / peak` is the floor
    any backend's graph could reach at that precision on this machine.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2.0 * size**3 * iters / (time.perf_counter() - start)


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs)"


# --------------------------------------------------------------------------- the benchmark
def _bench_model(config: BenchConfig, device: torch.device) -> tuple[torch.nn.Module, str, dict]:
    """The model to time (from the checkpoint, else random weights), its name and its data config."""
    import timm.data

    from stl_bench.fan.factory import create_model, create_model_from_checkpoint

    kwargs = {"img_size": config.img_size} if config.img_size else {}
    if config.checkpoint:
        model, info = create_model_from_checkpoint(config.checkpoint, config.model, num_classes=config.num_classes,
                                                   **kwargs)
        arch = info.arch or config.model
    else:
        if config.num_classes:
            kwargs["num_classes"] = config.num_classes
        model, arch = create_model(config.model, **kwargs), config.model
        log.info("%s has random weights (no checkpoint): agreement figures compare random logits", arch)
    model = model.eval().to(device)
    data_config = dict(timm.data.resolve_data_config({}, model=model))
    if config.img_size:
        data_config["input_size"] = (3, config.img_size, config.img_size)
    return model, arch, data_config


@dataclass
class _Reference:
    """What every backend's row is compared with: eager's timings and answers."""

    latency: list[float]
    throughput: list[float]
    logits: torch.Tensor
    tokens: torch.Tensor | None


def _measured_row(b: Backend, latency: list[float], throughput: list[float], scores: tuple, ref: _Reference,
                  flops: float, config: BenchConfig, common: dict) -> BenchRow:
    p50 = statistics.median(latency)
    tput = config.batch_size / statistics.median(throughput)
    logits, toks = scores
    top1 = float((logits.argmax(-1) == ref.logits.argmax(-1)).float().mean())
    tok = (float((toks.argmax(-1) == ref.tokens.argmax(-1)).float().mean())
           if toks is not None and ref.tokens is not None else None)
    tflops = flops * tput / 1e12
    return BenchRow(
        backend=b.name, precision=b.precision,
        latency_p50_ms=1e3 * p50, latency_p95_ms=1e3 * _percentile(latency, 95),
        throughput_img_s=tput,
        latency_speedup=statistics.median(ref.latency) / p50,
        throughput_speedup=statistics.median(ref.throughput) / statistics.median(throughput),
        top1_agreement=top1, token_agreement=tok, tflops=tflops,
        mfu=tflops / config.peak_tflops if torch.device(config.device).type == "cuda" else None,
        note=b.note, **common,
    )


def run_benchmark(config: BenchConfig) -> list[BenchRow]:
    """Time every backend (batch 1 latency, batch-N throughput) and check its agreement."""
    import onnxruntime

    from stl_bench.data.real_images import real_images
    from stl_bench.deploy.runner import resolve_head

    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StlBenchError("--device cuda needs an NVIDIA GPU, and PyTorch sees none; use --device cpu")
    model, arch, data_config = _bench_model(config, device)
    fused = resolve_head(config.head, bool(getattr(model, "has_token_head", False))) == "fused"
    input_size = tuple(data_config["input_size"])
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, *input_size, generator=gen).to(device)
    xb = torch.randn(config.batch_size, *input_size, generator=gen).to(device)
    real = real_images(data_config, config.real_images, config.images_dir)

    with tempfile.TemporaryDirectory(prefix="stl-bench-") as tmp:
        onnx_dir = Path(config.work_dir) if config.work_dir else Path(tmp)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        backends = make_backends(config, model, arch, onnx_dir)
        load_before = os.getloadavg()[0]
        latency = time_interleaved(backends, x1, config.latency_iters, config.warmup, device)
        throughput = time_interleaved(backends, xb, config.throughput_iters, config.warmup, device)
        load = max(load_before, os.getloadavg()[0])
        base = backends[0].name
        ref = _Reference(latency[base], throughput[base],
                         *_scores(backends[0].forward, real, config.batch_size, device, fused))
        flops = flops_per_image(model, input_size)
        common = dict(model=arch, device=str(device), batch=config.batch_size,
                      date=_dt.datetime.now().isoformat(timespec="seconds"), machine=_machine(device),
                      onnxruntime=onnxruntime.__version__, threads=torch.get_num_threads(), load_1m=round(load, 2))
        rows = []
        for b in backends:
            if b.forward is None or b.name not in latency or b.name not in throughput:
                rows.append(BenchRow(backend=b.name, precision=b.precision, status="skipped", note=b.skip, **common))
                continue
            scores = _scores(b.forward, real, config.batch_size, device, fused)
            rows.append(_measured_row(b, latency[b.name], throughput[b.name], scores, ref, flops, config, common))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """A fixed-width table: one line per backend."""
    def f(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    def pct(v: float | None) -> str:
        return f"{100 * v:.1f}%" if v is not None else "-"

    head = (f"{'backend':<14} {'prec':<5} {'p50 ms':>8} {'p95 ms':>8} {'x eager':>7} {'img/s':>8} {'x eager':>7} "
            f"{'top-1':>7} {'tokens':>7} {'TFLOP/s':>8} {'MFU':>6}")
    lines = [head]
    for r in rows:
        if r.status != "ok":
            lines.append(f"{r.backend:<14} {r.precision:<5} skipped: {r.note}")
            continue
        lines.append(
            f"{r.backend:<14} {r.precision:<5} {f(r.latency_p50_ms, '8.2f')} {f(r.latency_p95_ms, '8.2f')} "
            f"{f(r.latency_speedup, '7.2f')} {f(r.throughput_img_s, '8.1f')} {f(r.throughput_speedup, '7.2f')} "
            f"{pct(r.top1_agreement):>7} {pct(r.token_agreement):>7} {f(r.tflops, '8.3f')} {pct(r.mfu):>6}"
        )
    return "\n".join(lines)


def write_csv(rows: list[BenchRow], path: Path | str) -> Path:
    """One row per backend, stable column names; written whole or not at all (`stl_bench.io`)."""
    path = Path(path)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(BenchRow)])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})
    return write_bytes(path, buffer.getvalue().encode("utf-8"))
