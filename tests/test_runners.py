"""One runner interface: PyTorch and ONNX Runtime give the same Prediction for the same file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import stl_bench  # noqa: F401
from stl_bench.data.real_images import real_images
from stl_bench.deploy.export_onnx import export_onnx
from stl_bench.deploy.onnx_format import metadata_for
from stl_bench.deploy.onnx_runner import OnnxRunner
from stl_bench.deploy.open import open_runner
from stl_bench.deploy.runner import Prediction
from stl_bench.errors import StlBenchError
from stl_bench.fan import create_model, file_sha256

NAME = "fan_nano_4_p4_32_token"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runners")
    torch.manual_seed(1)
    model = create_model(NAME, num_classes=4)
    ckpt = root / "nano.pth"
    torch.save({"model": model.state_dict(), "arch": NAME, "num_classes": 4, "class_names": list("abcd"),
                "stl_bench_version": "0.1.0"}, ckpt)
    meta = metadata_for(model, NAME, tokens=True, class_names=list("abcd"), checkpoint_sha256=file_sha256(ckpt),
                        weights="model:nano.pth")
    onnx_path = export_onnx(model, root / "nano.onnx", meta)
    return {"ckpt": ckpt, "onnx": onnx_path}


@pytest.mark.parametrize("head", ["auto", "cls"])
def test_torch_and_onnx_runners_agree(files, head):
    torch_runner = open_runner(str(files["ckpt"]), head=head)
    onnx_runner = open_runner(str(files["onnx"]), head=head)
    assert isinstance(onnx_runner, OnnxRunner)
    a, b = torch_runner.info, onnx_runner.info
    assert (a.name, a.num_classes, a.has_tokens, a.head, a.class_names) == \
           (b.name, b.num_classes, b.has_tokens, b.head, b.class_names)
    assert b.head == ("fused" if head == "auto" else "cls")
    for key in ("input_size", "mean", "std", "crop_pct"):
        assert b.data_config[key] == pytest.approx(a.data_config[key])
    assert b.data_config["interpolation"] == a.data_config["interpolation"]
    images = real_images(b.data_config, 5)
    for batch in (images[:1], images[:2], images):
        p, q = torch_runner.predict(batch), onnx_runner.predict(batch)
        assert isinstance(q, Prediction) and q.logits.shape == (len(batch), 4)
        assert q.token_logits.shape == (len(batch), 64, 4)
        torch.testing.assert_close(q.logits, p.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(q.token_logits, p.token_logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(onnx_runner(batch).argmax(-1), torch_runner(batch).argmax(-1))


def test_fused_head_differs_from_class_head(files):
    x = real_images(OnnxRunner.open(files["onnx"]).info.data_config, 3)
    fused = OnnxRunner.open(files["onnx"], head="fused").predict(x).logits
    cls = OnnxRunner.open(files["onnx"], head="cls").predict(x)
    bonus = 0.5 * cls.token_logits.max(dim=1).values
    # the two heads differ by the token term, and it is not negligible on this model
    assert (fused - cls.logits).abs().max() > 1e-3
    assert bonus.abs().max() > 1e-3
    torch.testing.assert_close(fused, cls.logits + bonus)


def test_wrong_input_size_is_a_clear_error(files):
    runner = OnnxRunner.open(files["onnx"])
    with pytest.raises(StlBenchError, match=r"takes \[B, 3, 32, 32\] batches"):
        runner.predict(torch.zeros(1, 3, 64, 64))


def test_missing_onnx_file(tmp_path):
    with pytest.raises(StlBenchError, match="does not exist"):
        OnnxRunner.open(tmp_path / "nope.onnx")


def test_gpu_provider_not_installed_is_refused(files):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider; the refusal path needs a CPU-only build")
    with pytest.raises(StlBenchError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxRunner.open(files["onnx"], device="cuda")
    with pytest.raises(StlBenchError, match="no TensorrtExecutionProvider"):
        OnnxRunner.open(files["onnx"], device="tensorrt")
    with pytest.raises(StlBenchError, match="unknown ONNX Runtime device"):
        OnnxRunner.open(files["onnx"], device="tpu")


def test_silent_cpu_fallback_is_caught(files, monkeypatch):
    """ORT accepts a CUDA provider it cannot use and runs on the CPU: the runner must notice."""
    import onnxruntime as ort

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: CUDA would not fall back here")
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with pytest.raises(StlBenchError, match="fell back to CPUExecutionProvider instead of CUDAExecutionProvider"):
        OnnxRunner.open(files["onnx"], device="cuda")


def test_fused_head_needs_token_outputs(files, tmp_path):
    model = create_model("fan_nano_4_p4_32", num_classes=3)
    path = export_onnx(model, tmp_path / "plain.onnx", metadata_for(model, "fan_nano_4_p4_32", tokens=False))
    runner = OnnxRunner.open(path)
    assert runner.info.head == "cls" and runner.predict(torch.zeros(2, 3, 32, 32)).token_logits is None
    with pytest.raises(StlBenchError, match="fused head needs a token-label model"):
        OnnxRunner.open(path, head="fused")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU and onnxruntime-gpu")
def test_cuda_provider_matches_cpu(files):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu)")
    x = torch.randn(3, 3, 32, 32)
    cpu = OnnxRunner.open(files["onnx"]).predict(x)
    gpu = OnnxRunner.open(files["onnx"], device="cuda").predict(x.cuda())
    torch.testing.assert_close(gpu.logits.cpu(), cpu.logits, atol=1e-3, rtol=1e-3)


def test_opening_an_onnx_file_does_not_load_the_exporter(files):
    """Reading an export needs the file format only: the exporter (and the custom op its
    graph rewrites register) stays unloaded, in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from stl_bench.deploy.onnx_runner import OnnxRunner\n"
        "from stl_bench.deploy.open import open_runner\n"
        f"r = OnnxRunner.open({str(files['onnx'])!r})\n"
        f"q = open_runner({str(files['onnx'])!r})\n"
        "q.predict(torch.zeros(1, *q.info.data_config['input_size']))\n"
        "loaded = [m for m in ('stl_bench.deploy.export_onnx', 'stl_bench.deploy.graph_rewrites',\n"
        "          'stl_bench.deploy.parity', 'stl_bench.deploy.tensorrt', 'onnxscript') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert not hasattr(torch.ops.stl_bench, 'token_attention'), 'custom op registered'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
