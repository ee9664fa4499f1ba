"""Triton model repositories: layout, config read from the graph, checks, CLI, engines (nano models, CPU).

Triton itself is not run (it needs NVIDIA's container); each config is parsed with
Triton's own schema (`tritonclient`'s `model_config_pb2`) and checked against the graph.
"""
from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

import stl_bench  # noqa: F401  (registers the FAN models)
from stl_bench.cli import main
from stl_bench.deploy.export_onnx import export_onnx
from stl_bench.deploy.onnx_format import OnnxMetadata, metadata_for
from stl_bench.deploy.tensorrt import BatchProfile, EngineSidecar, Platform, TensorSpec, sidecar_path
from stl_bench.errors import StlBenchError
from stl_bench.fan import create_model
from stl_bench.fan.model import fuse_token_head
from stl_bench.serve.triton_repo import (
    FUSED_TOKEN_WEIGHT,
    client_metadata_of,
    validate_triton_repo,
    write_triton_repo,
)

NANO = "fan_nano_4_p4_32"
NANO_TOKEN = "fan_nano_4_p4_32_token"
CLASSES = [f"digit-{i}" for i in range(10)]


def _config(model_dir: Path) -> pb.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


def _dims(config: pb.ModelConfig, field: str) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in getattr(config, field)}


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory) -> dict:
    """The plain nano model exported by the CLI with --triton-repo (the end-to-end path)."""
    root = tmp_path_factory.mktemp("triton_cli")
    onnx_path, repo = root / "m.onnx", root / "repo"
    rc = main(["export", "--model", NANO, "--num-classes", "5", "-o", str(onnx_path), "--batch-sizes", "1",
               "--triton-repo", str(repo)])
    assert rc == 0
    return {"root": root, "onnx": onnx_path, "repo": repo}


@pytest.fixture(scope="module")
def token_onnx(tmp_path_factory) -> Path:
    """The token nano model with class names, exported without the parity check (tested elsewhere)."""
    torch.manual_seed(0)
    model = create_model(NANO_TOKEN, num_classes=10).eval()
    meta = metadata_for(model, NANO_TOKEN, tokens=True, class_names=CLASSES)
    return export_onnx(model, tmp_path_factory.mktemp("triton_token") / "nano_token.onnx", meta)


# --------------------------------------------------------------------------- ONNX
def test_cli_export_writes_a_valid_repository(cli_export, capsys):
    model_dir = cli_export["repo"] / NANO
    config = validate_triton_repo(model_dir)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert (model_dir / "1" / "model.onnx").read_bytes() == cli_export["onnx"].read_bytes()
    assert not (model_dir / "labels.txt").exists() and not config.output[0].label_filename  # random init: no names
    hidden = [p for p in cli_export["root"].rglob(".*")]
    assert hidden == []  # no temporary files left behind


def test_cli_refuses_an_existing_model_folder_then_overwrites(cli_export, capsys):
    before = cli_export["onnx"].stat().st_mtime_ns
    args = ["export", "--model", NANO, "--num-classes", "5", "-o", str(cli_export["onnx"]),
            "--triton-repo", str(cli_export["repo"])]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "already exists" in err and "--triton-overwrite" in err
    assert cli_export["onnx"].stat().st_mtime_ns == before  # refused before re-exporting
    # An exported file and no --output: only the repository is (re)written.
    assert main(["export", str(cli_export["onnx"]), "--triton-repo", str(cli_export["repo"]),
                 "--triton-overwrite", "--triton-kind", "gpu", "--triton-instances", "2"]) == 0
    out = capsys.readouterr().out
    assert "tritonserver --model-repository" in out and str(cli_export["repo"].absolute()) in out
    group = validate_triton_repo(cli_export["repo"] / NANO).instance_group[0]
    assert group.kind == pb.ModelInstanceGroup.KIND_GPU and group.count == 2


def test_token_model_config_comes_from_the_graph(token_onnx, tmp_path):
    model_dir = write_triton_repo(token_onnx, tmp_path / "repo", max_batch_size=16, instances=3)
    assert model_dir == tmp_path / "repo" / NANO_TOKEN  # default name: the architecture
    config = _config(model_dir)
    assert config.name == NANO_TOKEN and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]  # 32 > max batch: dropped
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, pb.ModelInstanceGroup.KIND_CPU)]
    assert _dims(config, "input") == {"input": [3, 32, 32]}
    assert config.input[0].data_type == pb.TYPE_FP32
    assert _dims(config, "output") == {"logits": [10], "token_logits": [64, 10]}
    assert [o.data_type for o in config.output] == [pb.TYPE_FP32, pb.TYPE_FP32]
    assert config.output[0].label_filename == "labels.txt" and not config.output[1].label_filename
    assert (model_dir / "labels.txt").read_text().splitlines() == CLASSES
    assert (model_dir / "1" / "model.onnx").read_bytes() == token_onnx.read_bytes()
    meta = client_metadata_of(config)
    assert meta["head"] == "fused" and meta["has_tokens"] and meta["num_classes"] == 10
    assert meta["input_size"] == [3, 32, 32] and meta["token_grid"] == [8, 8] and len(meta["mean"]) == 3
    assert FUSED_TOKEN_WEIGHT == inspect.signature(fuse_token_head).parameters["weight"].default
    assert validate_triton_repo(model_dir) == config


def test_plain_model_named_on_the_gpu(cli_export, tmp_path):
    model_dir = write_triton_repo(cli_export["onnx"], tmp_path / "repo", "nano-plain", kind="gpu",
                                  preferred_batch_sizes=(4,), max_queue_delay_us=0)
    config = validate_triton_repo(model_dir)
    assert config.name == "nano-plain" and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert _dims(config, "output") == {"logits": [5]}
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert client_metadata_of(config)["head"] == "cls"


def test_new_version_keeps_the_old_one(cli_export, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repo(cli_export["onnx"], repo)
    with pytest.raises(StlBenchError, match="already exists"):
        write_triton_repo(cli_export["onnx"], repo, version=2)
    model_dir = write_triton_repo(cli_export["onnx"], repo, version=2, overwrite=True)
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "2"]
    validate_triton_repo(model_dir)


def test_tampered_config_is_rejected_naming_the_file(token_onnx, tmp_path):
    model_dir = write_triton_repo(token_onnx, tmp_path / "repo")
    path = model_dir / "config.pbtxt"
    good = path.read_text()
    path.write_text(good.replace("dims: [64, 10]", "dims: [49, 10]"))
    with pytest.raises(StlBenchError, match=r"config\.pbtxt: output 'token_logits' is TYPE_FP32 \[49, 10\]"):
        validate_triton_repo(model_dir)
    path.write_text(good.replace("dims: [3, 32, 32]", "dims: [3, 64, 64]"))
    with pytest.raises(StlBenchError, match=re.escape(f"{path}: input 'input' is TYPE_FP32 [3, 64, 64]")):
        validate_triton_repo(model_dir)
    path.write_text(good.replace("TYPE_FP32", "TYPE_FP16", 1))
    with pytest.raises(StlBenchError, match="input 'input' is TYPE_FP16"):
        validate_triton_repo(model_dir)
    path.write_text(good.replace("max_batch_size: 64", "max_batch_size: lots"))
    with pytest.raises(StlBenchError, match="not a valid Triton model configuration"):
        validate_triton_repo(model_dir)
    path.write_text(good)
    (model_dir / "1" / "model.onnx").unlink()
    with pytest.raises(StlBenchError, match="has no model.onnx"):
        validate_triton_repo(model_dir)


def test_symbolic_dims_besides_the_batch_are_refused(tmp_path):
    meta = OnnxMetadata(arch="toy", num_classes=3, has_tokens=False,
                        data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                     "interpolation": "bilinear", "crop_pct": 1.0})
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, "h", "w"])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3, "h", "w"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input"], ["logits"])], "toy", [x], [y])
    proto = onnx.helper.make_model(graph)
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    path = tmp_path / "toy.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(StlBenchError, match=re.escape(f"{path}: input has symbolic dims")):
        write_triton_repo(path, tmp_path / "repo")


# --------------------------------------------------------------------------- bad input
def test_bad_settings_are_one_clear_error(cli_export, tmp_path):
    onnx_path, repo = cli_export["onnx"], tmp_path / "repo"
    for kwargs, words in [({"max_batch_size": 0}, "max batch size 0"), ({"instances": 0}, "0 instances"),
                          ({"max_queue_delay_us": -1}, "queue delay -1"), ({"kind": "tpu"}, "unknown instance kind"),
                          ({"name": "../up"}, "must be letters"), ({"version": 0}, "version 0")]:
        with pytest.raises(StlBenchError, match=words):
            write_triton_repo(onnx_path, repo, **kwargs)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StlBenchError, match="is a file, not a folder"):
        write_triton_repo(onnx_path, blocker)
    with pytest.raises(StlBenchError, match="does not exist"):
        write_triton_repo(tmp_path / "missing.onnx", repo)
    assert not repo.exists()


@pytest.mark.parametrize("extra, words", [
    (["--triton-max-batch", "0"], "--triton-max-batch 0"),
    (["--triton-instances", "-2"], "--triton-instances -2"),
    (["--triton-name", "x"], "only apply with --triton-repo"),
    (["--triton-repo", "BLOCKER"], "is a file, not a folder"),
])
def test_cli_bad_triton_flags_fail_before_exporting(tmp_path, capsys, extra, words):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    extra = [str(blocker) if e == "BLOCKER" else e for e in extra]
    if "--triton-repo" not in extra and "--triton-name" not in extra:
        extra += ["--triton-repo", str(tmp_path / "repo")]
    rc = main(["export", "--model", NANO, "-o", str(tmp_path / "x.onnx"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error:") and "\n" not in err and words in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_output_needed_for_a_checkpoint(tmp_path, capsys):
    assert main(["export", "--model", NANO, "--triton-repo", str(tmp_path / "repo")]) == 1
    assert "--output FILE.onnx (or FILE.engine) is required" in capsys.readouterr().err


def test_missing_tritonclient_says_how_to_install(cli_export, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)
    with pytest.raises(StlBenchError, match=r'pip install "stl-bench\[serve\]"'):
        write_triton_repo(cli_export["onnx"], tmp_path / "repo")


# --------------------------------------------------------------------------- engines
def _engine(tmp_path: Path, profile: BatchProfile = BatchProfile(1, 8, 16), tensors: list | None = None) -> Path:
    """A fabricated engine and sidecar, as tests/test_tensorrt.py fakes them (no GPU needed)."""
    meta = OnnxMetadata(arch=NANO_TOKEN, num_classes=10, has_tokens=True,
                        data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                     "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"},
                        class_names=CLASSES, token_grid=(8, 8), precision="fp16")
    engine = tmp_path / "nano.engine"
    engine.write_bytes(b"not a real engine")
    if tensors is None:
        tensors = [TensorSpec("input", "input", "float32", [-1, 3, 32, 32]),
                   TensorSpec("logits", "output", "float32", [-1, 10]),
                   TensorSpec("token_logits", "output", "float16", [-1, 64, 10])]
    sidecar = EngineSidecar(platform=Platform("10.9.0", "NVIDIA H100 80GB HBM3", "9.0"), profile=profile,
                            tensors=tensors, metadata=meta.to_props())
    sidecar_path(engine).write_text(sidecar.to_json())
    return engine


def test_engine_repository(tmp_path):
    engine = _engine(tmp_path)
    with pytest.raises(StlBenchError, match="above engine .* profile \\(up to 16\\)"):
        write_triton_repo(engine, tmp_path / "repo")  # default max batch 64 > the profile's 16
    with pytest.raises(StlBenchError, match="GPU only"):
        write_triton_repo(engine, tmp_path / "repo", max_batch_size=16, kind="cpu")
    model_dir = write_triton_repo(engine, tmp_path / "repo", max_batch_size=16)
    config = validate_triton_repo(model_dir)
    assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert (model_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert json.loads((model_dir / "1" / "model.plan.json").read_text())["platform"]["tensorrt_version"] == "10.9.0"
    assert _dims(config, "output") == {"logits": [10], "token_logits": [64, 10]}
    assert [o.data_type for o in config.output] == [pb.TYPE_FP32, pb.TYPE_FP16]
    assert (model_dir / "labels.txt").read_text().splitlines() == CLASSES
    assert client_metadata_of(config)["precision"] == "fp16"


def test_engine_sidecar_without_shapes_or_batch_1(tmp_path):
    with pytest.raises(StlBenchError, match="records no tensor shapes; rebuild the engine"):
        write_triton_repo(_engine(tmp_path, tensors=[]), tmp_path / "repo", max_batch_size=16)
    with pytest.raises(StlBenchError, match="batches from 2.*--min-batch 1"):
        write_triton_repo(_engine(tmp_path, profile=BatchProfile(2, 8, 16)), tmp_path / "repo", max_batch_size=16)
    assert not (tmp_path / "repo").exists()
