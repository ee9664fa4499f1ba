"""`stl-bench serve`: a checkpoint, ONNX file or TensorRT engine over HTTP with Ray Serve."""
from __future__ import annotations

import argparse
import logging

from stl_bench.commands import arguments as arg
from stl_bench.serve.ingress import INGRESSES

NAME = "serve"
HELP = "serve a model over HTTP (Ray Serve: dynamic batching, replicas, clusters)"
DESCRIPTION = (
    "Serve a checkpoint, an ONNX file or a TensorRT engine over HTTP with Ray Serve. By default a local Ray "
    "instance is started (token authentication on, dashboard off) and the API listens on 127.0.0.1; "
    "--address auto or ray://HOST:10001 joins an existing Ray cluster instead. Concurrent requests are "
    "batched into one model call (--max-batch, --batch-wait-ms). API: POST /v1/predict (an image as the "
    "raw body or a multipart upload; ?tokens=1 adds the per-patch token labels), GET /v1/model, "
    "GET /v1/health. --write-config FILE writes the Ray Serve config for `serve deploy` / KubeRay instead "
    "of serving. Ctrl-C stops the server."
)
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", type=arg.model_source,
                   help="checkpoint (.pth/.pth.tar/.pt/.safetensors), .onnx file, TensorRT "
                   "engine (.engine/.plan) or a model card name (`stl-bench models`; cached by --download)")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="architecture for a bare state dict; alone: random weights (smoke tests)")
    m.add_argument("--head", default="auto", choices=["auto", "cls", "fused"],
                   help="token models: fused = class logits + 0.5 x per-class max over tokens (auto: fused)")
    m.add_argument("--ema", action="store_true", help="serve the checkpoint's EMA weights")
    m.add_argument("--num-classes", type=arg.positive_int, help="class count for a model built by name")
    m.add_argument("--img-size", type=arg.positive_int, help="input size for a checkpoint (default: what it records)")
    m.add_argument("--device", default="cpu", type=arg.device,
                   help="cpu, cuda or cuda:N inside each replica (a GPU replica "
                   "also needs --gpus-per-replica)")
    m.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast for checkpoints")
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch", type=arg.positive_int, default=32, help="most images in one model call")
    b.add_argument("--batch-wait-ms", type=arg.non_negative_float, default=10.0,
                   help="how long a batch waits for more requests when the model is idle (while "
                        "it runs, the next batch gathers until that call should end)")
    b.add_argument("--max-body-mb", type=arg.positive_float, default=10.0, help="largest request body accepted")
    b.add_argument("--min-side", type=arg.positive_int, default=8, help="smallest image side accepted (pixels)")
    b.add_argument("--top-k", type=arg.positive_int, default=5, help="classes returned per image unless ?top_k= says")
    b.add_argument("--threads", type=arg.positive_int, help="intra-op threads per replica (default: its reserved CPUs)")
    s = p.add_argument_group("where it runs")
    s.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0 exposes the API to the network)")
    s.add_argument("--port", type=arg.port, default=8000, help="HTTP port")
    s.add_argument("--address", help="join a Ray cluster: auto (the local cluster `ray start` made) or "
                   "ray://HOST:10001; default: start an embedded Ray instance")
    s.add_argument("--replicas", type=arg.positive_int, default=1, help="model replicas (each opens its own copy)")
    s.add_argument("--cpus-per-replica", type=arg.positive_float,
                   help="CPUs reserved per replica (default: cores / replicas)")
    s.add_argument("--gpus-per-replica", type=arg.non_negative_float, default=0.0,
                   help="GPUs per replica (fractions share a GPU)")
    s.add_argument("--ingress", default="proxy", choices=INGRESSES,
                   help="what answers on --port (embedded instance): proxy, Ray Serve's Python proxy; haproxy, "
                   "Ray Serve's high-throughput mode (ray>=2.56, Linux): HAProxy hands each request straight to a "
                   "replica, under 1 ms of CPU per request instead of about 7, but Ray opens HAProxy's statistics "
                   "page and metrics on every interface (ports printed at start-up; firewall them). A joined "
                   "cluster keeps the mode its nodes were started with")
    s.add_argument("--metrics-port", type=arg.port, help="port of Ray's Prometheus metrics endpoint (embedded "
                   "instance; default: a free port, printed at start-up)")
    s.add_argument("--write-config", metavar="FILE", type=arg.output_file,
                   help="write the Ray Serve config YAML for this application "
                   "and exit (deploy it with `serve deploy FILE`)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stl_bench.deploy.runner import is_endpoint_url
    from stl_bench.serve.launcher import (LaunchOptions, StopSignals, curl_example, serve_until_stopped, start,
                                          write_config)
    from stl_bench.serve.protocol import HEALTH, MODEL, ServeConfig

    from stl_bench.fan.hub import resolve_source

    source = resolve_source(args.source)  # a model card's name: fetched here once, not by every replica
    source = str(Path(source).resolve()) if source and not is_endpoint_url(str(source)) else source
    cfg = ServeConfig(source=source, model=args.model, head=args.head, device=args.device, ema=args.ema,
                      num_classes=args.num_classes, img_size=args.img_size, amp=args.amp, max_batch=args.max_batch,
                      batch_wait_ms=args.batch_wait_ms, max_body_mb=args.max_body_mb, min_side=args.min_side,
                      top_k=args.top_k, threads=args.threads)
    launch = LaunchOptions(host=args.host, port=args.port, address=args.address, replicas=args.replicas,
                           cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                           metrics_port=args.metrics_port, ingress=args.ingress)
    if args.address and args.ingress != "proxy":
        print(f"note: --ingress applies to the embedded instance; {args.address} keeps the mode its nodes were "
              "started with (README: HAProxy ingress on a cluster)")
    if args.write_config:
        path = write_config(Path(args.write_config), cfg, launch)
        print(f"wrote {path}; deploy it on a running Ray cluster with: serve deploy {path}")
        return 0
    print(f"starting Ray Serve ({'embedded Ray instance' if launch.address is None else launch.address}) ...",
          flush=True)
    with StopSignals() as stop:
        server = start(cfg, launch)
        print(f"serving at {server.url} through {server.ingress}  (model: {server.url}{MODEL}, "
              f"health: {server.url}{HEALTH})")
        print(f"try:  {curl_example(launch)}")
        if server.haproxy:
            print(f"HAProxy's statistics (:{server.haproxy['stats_port']}/stats) and metrics "
                  f"(:{server.haproxy['metrics_port']}/metrics) listen on every interface (Ray's template); "
                  "firewall these two ports")
        if server.metrics_url:
            print(f"Prometheus metrics (Ray Serve's and stl_bench_*): {server.metrics_url}")
        print("Ctrl-C stops the server", flush=True)
        serve_until_stopped(server, stop)
    return 0
