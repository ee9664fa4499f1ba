"""TensorRT: everything up to the GPU boundary runs everywhere; the engine tests need a GPU and TensorRT.

The sidecar checks (platform, batch profile, missing or damaged sidecar) are tested with
fabricated sidecars, so a wrong-version engine is refused the same way on any machine.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import stl_bench  # noqa: F401
from stl_bench.cli import main
from stl_bench.deploy.onnx_format import OnnxMetadata
from stl_bench.deploy.tensorrt import (
    BatchProfile,
    EngineSidecar,
    Platform,
    TensorSpec,
    check_batch,
    check_platform,
    read_sidecar,
    sidecar_path,
    tensorrt_unavailable_reason,
)
from stl_bench.errors import StlBenchError

UNAVAILABLE = tensorrt_unavailable_reason()
H100 = Platform("10.9.0", "NVIDIA H100 80GB HBM3", "9.0")


def _meta() -> OnnxMetadata:
    return OnnxMetadata(arch="fan_nano_4_p4_32_token", num_classes=10, has_tokens=True,
                        data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                     "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"},
                        class_names=[str(i) for i in range(10)], token_grid=(8, 8), stl_bench_version="0.1.0")


def _fabricate(tmp_path: Path, platform: Platform = H100, profile: BatchProfile = BatchProfile(1, 8, 16)) -> Path:
    engine = tmp_path / "nano.engine"
    engine.write_bytes(b"not a real engine")
    sidecar = EngineSidecar(platform=platform, profile=profile, metadata=_meta().to_props(), tensors=[
        TensorSpec("input", "input", "float32", [-1, 3, 32, 32]),
        TensorSpec("logits", "output", "float32", [-1, 10]),
        TensorSpec("token_logits", "output", "float32", [-1, 64, 10]),
    ])
    sidecar_path(engine).write_text(sidecar.to_json())
    return engine


def test_sidecar_round_trip(tmp_path):
    engine = _fabricate(tmp_path)
    side = read_sidecar(engine)
    assert side.platform == H100 and side.profile == BatchProfile(1, 8, 16)
    assert side.onnx_metadata == _meta()
    assert side.tensor("token_logits").shape == [-1, 64, 10]


@pytest.mark.parametrize("other, words", [
    (Platform("10.8.0", H100.gpu_name, H100.compute_capability), ["TensorRT 10.9.0", "has 10.8.0"]),
    (Platform(H100.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0"), ["NVIDIA H100", "sm 9.0", "sm 8.0"]),
    (Platform("11.0.0", "NVIDIA A100-SXM4-80GB", "8.0"), ["TensorRT 10.9.0", "sm 8.0"]),
])
def test_engine_for_another_platform_is_refused(tmp_path, other, words):
    engine = _fabricate(tmp_path)
    with pytest.raises(StlBenchError) as err:
        check_platform(read_sidecar(engine), other, engine)
    message = str(err.value)
    assert all(w in message for w in words), message
    assert "rebuild it here" in message and "\n" not in message


def test_same_architecture_other_card_is_allowed(tmp_path, caplog):
    engine = _fabricate(tmp_path)
    check_platform(read_sidecar(engine), Platform(H100.tensorrt_version, "NVIDIA H100 PCIe", "9.0"), engine)
    assert "tuned on NVIDIA H100 80GB HBM3" in caplog.text


def test_batch_outside_profile(tmp_path):
    profile = BatchProfile(2, 8, 16)
    check_batch(16, profile, "nano.engine")
    check_batch(2, profile, "nano.engine")
    with pytest.raises(StlBenchError, match=r"batch 17 is outside engine nano.engine's profile \(2..16\).*--max-batch 17"):
        check_batch(17, profile, "nano.engine")
    with pytest.raises(StlBenchError, match="batch 1 is outside"):
        check_batch(1, profile, "nano.engine")


def test_bad_profile_flags():
    with pytest.raises(StlBenchError, match="min <= opt <= max"):
        BatchProfile(1, 32, 16)


def test_missing_and_damaged_sidecar(tmp_path):
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"x")
    with pytest.raises(StlBenchError, match="has no sidecar lonely.engine.json"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(StlBenchError, match="not an stl-bench engine sidecar"):
        read_sidecar(engine)
    with pytest.raises(StlBenchError, match="does not exist"):
        read_sidecar(tmp_path / "missing.engine")


@pytest.mark.parametrize("content", ["[1, 2]", '"an engine"', "42", "null"])
def test_sidecar_that_is_not_a_json_object(tmp_path, content):
    """Valid JSON of another shape is a one-line error naming the file, not an AttributeError."""
    engine = tmp_path / "odd.engine"
    engine.write_bytes(b"engine")
    sidecar_path(engine).write_text(content)
    with pytest.raises(StlBenchError, match=r"odd\.engine\.json is not an stl-bench engine sidecar") as info:
        read_sidecar(engine)
    assert "\n" not in str(info.value)


def test_sidecar_that_is_not_text(tmp_path):
    engine = tmp_path / "binary.engine"
    engine.write_bytes(b"engine")
    sidecar_path(engine).write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(StlBenchError, match=r"binary\.engine\.json is not a readable engine sidecar"):
        read_sidecar(engine)


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are present: the refusal path does not apply")
def test_without_gpu_or_tensorrt_one_clear_line(tmp_path, capsys):
    engine = _fabricate(tmp_path)
    from stl_bench.deploy.open import open_runner

    with pytest.raises(StlBenchError, match="TensorRT engines need an NVIDIA GPU and TensorRT"):
        open_runner(str(engine), device="cuda")
    rc = main(["export", "--model", "fan_nano_4_p4_32", "-o", str(tmp_path / "new.engine")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "TensorRT engines need" in err
    assert not (tmp_path / "new.engine").exists() and not (tmp_path / "new.onnx").exists()


def test_engine_runs_on_cuda_only(tmp_path):
    from stl_bench.deploy.tensorrt_runner import TensorRTRunner

    with pytest.raises(StlBenchError, match="run on a CUDA device"):
        TensorRTRunner.open(_fabricate(tmp_path), device="cpu")


@pytest.fixture(scope="module")
def built_engine(tmp_path_factory):
    if UNAVAILABLE:
        pytest.skip(f"TensorRT engine tests skipped: {UNAVAILABLE}")
    root = tmp_path_factory.mktemp("trt")
    out = root / "nano.engine"
    rc = main(["export", "--model", "fan_nano_4_p4_32_token", "--num-classes", "10", "--tokens", "--fp16",
               "-o", str(out), "--min-batch", "1", "--opt-batch", "4", "--max-batch", "8"])
    assert rc == 0
    return out


@pytest.mark.gpu
def test_engine_build_writes_sidecar_and_cache(built_engine):
    side = read_sidecar(built_engine)
    assert side.profile == BatchProfile(1, 4, 8)
    assert (built_engine.parent / "timing.cache").stat().st_size > 0
    assert side.extra["precision"] == "fp16"


@pytest.mark.gpu
def test_engine_matches_onnx_runtime(built_engine):
    from stl_bench.deploy.onnx_runner import OnnxRunner
    from stl_bench.deploy.tensorrt_runner import TensorRTRunner

    trt_runner = TensorRTRunner.open(built_engine)
    ort_runner = OnnxRunner.open(built_engine.with_suffix(".onnx"))
    x = torch.randn(5, 3, 32, 32)
    a, b = trt_runner.predict(x.cuda()), ort_runner.predict(x)
    assert (a.logits.cpu().argmax(-1) == b.logits.argmax(-1)).float().mean() >= 0.8
    torch.testing.assert_close(a.token_logits.cpu(), b.token_logits, atol=5e-2, rtol=5e-2)
    with pytest.raises(StlBenchError, match="outside engine"):
        trt_runner.predict(torch.randn(9, 3, 32, 32).cuda())
