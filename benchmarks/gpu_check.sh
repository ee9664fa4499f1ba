#!/usr/bin/env bash
# Everything stl-bench measures on a GPU, as one command (about 10 minutes on one H200):
#   bash benchmarks/gpu_check.sh OUT_DIR
# 1. the CUDA / GPU-marked tests;
# 2. the inference table at batch 64 (eager FP32, bf16 autocast, torch.compile FP32 and bf16
#    with CUDA graphs) with agreement and MFU;
# 3. eval-loop throughput, and on-the-fly ImageNet-C versus pre-written folders;
# 4. served throughput with one GPU replica (Ray Serve, PyTorch backend).
# Each step writes its log (and CSV where it has one) into OUT_DIR and has its own time limit,
# so one slow step cannot take the others' time; a failed step is reported and the rest run.
# Where no GPU is visible it says so and exits 0 without running anything.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False RAY_USAGE_STATS_ENABLED=0

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to PyTorch here; nothing to measure (run it on a GPU machine)"
    exit 0
fi

{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    python - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
for name in ("timm", "onnxruntime", "tensorrt", "ray"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # not installed on this machine: say so
        print(name, "not available:", type(exc).__name__)
EOF
} | tee "$out/versions.txt"

status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)" | tee -a "$out/summary.txt"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "    exit $rc after $((SECONDS - t0)) s; log $out/$name.log" | tee -a "$out/summary.txt"
    tail -n 25 "$out/$name.log"
    [ $rc -eq 0 ] || status=1
}

step tests 150 python -m pytest -q -rs -p no:cacheprovider -m "gpu" tests
step tests_cuda 120 python -m pytest -q -rs -p no:cacheprovider -k "cuda or gpu" -m "not gpu" \
    tests/test_runners.py tests/test_bench.py tests/test_corruptions.py
step inference 210 python benchmarks/inference.py --device cuda --batch-size 64 \
    --models fan_tiny_12_p16_224 fan_small_12_p4_hybrid_token \
    --backends eager,autocast-bf16,compile,compile-bf16 --latency-iters 10 --throughput-iters 10 \
    --real-images 64 --csv "$out/inference_cuda.csv"
step eval_throughput 90 python benchmarks/eval_throughput.py --device cuda --amp bf16 --batch-size 256 \
    --workers 8 --model fan_small_12_p4_hybrid_token
step inc_on_the_fly 90 python benchmarks/inc_on_the_fly.py --device cuda --amp bf16 --batch-size 128 \
    --workers 8 --model fan_small_12_p4_hybrid_token
step serve_load 150 python benchmarks/serve_load.py --backend torch --device cuda --amp bf16 \
    --models fan_small_12_p4_hybrid_token --concurrency 1 8 32 64 --max-batch 64 --requests 256 \
    --time-limit 20 --batch-sizes 1 16 64 --csv "$out/serve_load_cuda.csv"

echo "gpu_check: done (exit $status); logs and CSVs in $out" | tee -a "$out/summary.txt"
exit $status
