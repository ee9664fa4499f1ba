"""`stl-bench export`: parity, metadata, FP16 graph, atomic writes and bad input (nano model, CPU)."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import stl_bench  # noqa: F401  (registers the FAN models)
from stl_bench.cli import main
from stl_bench.data.real_images import real_images
from stl_bench.deploy.onnx_format import LOGITS, TOKEN_LOGITS, OnnxMetadata, read_metadata
from stl_bench.deploy.parity import check_parity
from stl_bench.errors import StlBenchError
from stl_bench.fan import create_model

NANO_TOKEN = "fan_nano_4_p4_32_token"
CLASSES = [f"digit-{i}" for i in range(10)]


def _checkpoint(path: Path, name: str, num_classes: int = 10, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes)
    torch.save({"model": model.state_dict(), "arch": name, "num_classes": num_classes,
                "class_names": CLASSES[:num_classes], "stl_bench_version": "0.1.0"}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """One CLI export of the token nano model, FP16 graph included (the FP32 one is kept beside)."""
    root = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(root / "nano_token.pth", NANO_TOKEN)
    out = root / "nano.onnx"
    rc = main(["export", str(ckpt), "--output", str(out), "--tokens", "--fp16", "--batch-sizes", "1,2,3"])
    assert rc == 0
    return {"root": root, "ckpt": ckpt, "fp16": out, "fp32": root / "nano.fp32.onnx"}


def test_export_writes_both_graphs_and_prints_parity(exported, capsys):
    assert exported["fp16"].is_file() and exported["fp32"].is_file()
    # No scratch files or side files are left next to the outputs.
    leftovers = [p.name for p in exported["root"].iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not (exported["root"] / "nano.onnx.data").exists()


def test_graph_has_dynamic_batch_and_both_outputs(exported):
    proto = onnx.load(str(exported["fp32"]))
    onnx.checker.check_model(proto)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    assert [o.name for o in proto.graph.output] == [LOGITS, TOKEN_LOGITS]


def test_metadata_round_trip(exported):
    meta = read_metadata(exported["fp32"])
    model = create_model(NANO_TOKEN, num_classes=10)
    assert meta.arch == NANO_TOKEN and meta.num_classes == 10 and meta.has_tokens
    assert meta.class_names == CLASSES
    assert meta.token_grid == (8, 8)
    assert meta.data_config["input_size"] == tuple(model.pretrained_cfg["input_size"])
    assert meta.data_config["interpolation"] == model.pretrained_cfg["interpolation"]
    assert meta.data_config["mean"] == pytest.approx(model.pretrained_cfg["mean"])
    assert meta.data_config["crop_pct"] == pytest.approx(model.pretrained_cfg["crop_pct"])
    from stl_bench.fan import file_sha256

    assert meta.checkpoint_sha256 == file_sha256(exported["ckpt"])
    assert meta.stl_bench_version == stl_bench.__version__
    assert meta.precision == "fp32" and read_metadata(exported["fp16"]).precision == "fp16"
    # props -> metadata -> props is lossless
    again = OnnxMetadata.from_props(meta.to_props(), "test")
    assert again == meta


def test_fp32_parity_at_batch_1_2_3_on_random_and_real(exported):
    from stl_bench.fan import create_model_from_checkpoint

    model, _ = create_model_from_checkpoint(exported["ckpt"])
    real = real_images(read_metadata(exported["fp32"]).data_config, 4)
    report = check_parity(model, exported["fp32"], batch_sizes=(1, 2, 3), atol=1e-4, real=real)
    assert report.passed, report.table()
    seen = {(r.images, r.batch, r.output) for r in report.rows}
    for source in ("random", "real"):
        for bs in (1, 2, 3):
            assert {(source, bs, LOGITS), (source, bs, TOKEN_LOGITS)} <= seen
    assert max(r.max_abs_diff for r in report.rows) < 1e-4
    # A tolerance nothing can meet must fail: the gate is live.
    strict = check_parity(model, exported["fp32"], batch_sizes=(2,), atol=1e-12, real=real[:2])
    assert not strict.passed and "atol" in strict.reason


def test_fp16_graph_keeps_norms_fp32_and_agrees(exported):
    proto = onnx.load(str(exported["fp16"]))
    types = {init.name: init.data_type for init in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types.values()
    ln = [n for n in proto.graph.node if n.op_type == "LayerNormalization"]
    assert ln and all(types.get(n.input[1], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for n in ln)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    from stl_bench.fan import create_model_from_checkpoint

    model, _ = create_model_from_checkpoint(exported["ckpt"])
    real = real_images(read_metadata(exported["fp16"]).data_config, 16)
    report = check_parity(model, exported["fp16"], batch_sizes=(1, 3), min_agreement=0.97, real=real)
    assert report.passed, report.table()
    pooled = [r for r in report.rows if r.batch == 16]
    assert len(pooled) == 2 and all(r.agreement >= 0.97 for r in pooled)
    assert report.rows[0].max_abs_diff > 0  # it really is a different (half-precision) graph


def test_real_images_are_normalised_digits():
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
           "crop_pct": 1.0}
    x = real_images(cfg, 5)
    assert x.shape == (5, 3, 32, 32)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6 and x.std() > 0.1


def test_parity_failure_writes_nothing(exported, tmp_path, capsys):
    out = tmp_path / "strict.onnx"
    rc = main(["export", str(exported["ckpt"]), "-o", str(out), "--tokens", "--atol", "1e-12", "--batch-sizes", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "parity check failed" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_one_clear_line(tmp_path, capsys):
    rc = main(["export", "--model", "fan_nano_4_p4_23", "-o", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "unknown model 'fan_nano_4_p4_23'" in err and "fan_nano_4_p4_32" in err
    assert len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_checkpoint_for_another_model(exported, tmp_path, capsys):
    rc = main(["export", str(exported["ckpt"]), "--model", "fan_nano_4_p4_32", "-o", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert rc == 1 and "does not fit model fan_nano_4_p4_32" in err and "aux_head" in err
    assert list(tmp_path.iterdir()) == []


def test_tokens_flag_needs_a_token_model(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "plain.pth", "fan_nano_4_p4_32")
    rc = main(["export", str(ckpt), "-o", str(tmp_path / "x.onnx"), "--tokens"])
    assert rc == 1 and "needs a token-label model" in capsys.readouterr().err


def test_onnx_without_our_metadata(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "foreign",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 3, 32, 32])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(StlBenchError, match="no stl-bench metadata.*re-export"):
        read_metadata(path)
    from stl_bench.deploy.open import open_runner

    with pytest.raises(StlBenchError, match="no stl-bench metadata"):
        open_runner(str(path))


def test_bad_output_suffix_and_opset(exported, tmp_path, capsys):
    assert main(["export", str(exported["ckpt"]), "-o", str(tmp_path / "x.pt")]) == 1
    assert "must end in .onnx" in capsys.readouterr().err
    assert main(["export", str(exported["ckpt"]), "-o", str(tmp_path / "x.onnx"), "--opset", "11"]) == 1
    assert "--opset 11 is not supported" in capsys.readouterr().err


def test_export_uses_the_size_a_checkpoint_records(tmp_path):
    """A fine-tune at another size than the architecture's is exported at its own size."""
    import argparse

    torch.manual_seed(0)
    model = create_model("fan_nano_4_p4_32", num_classes=10)
    path = tmp_path / "ft48.pth.tar"
    torch.save({"state_dict": model.state_dict(), "arch": "fan_nano_4_p4_32",
                "args": argparse.Namespace(model="fan_nano_4_p4_32", input_size=[3, 48, 48], img_size=None)}, path)
    out = tmp_path / "ft48.onnx"
    assert main(["export", str(path), "-o", str(out), "--batch-sizes", "1,2"]) == 0
    meta = read_metadata(out)
    assert tuple(meta.data_config["input_size"]) == (3, 48, 48)


def test_output_in_an_unwritable_place_is_one_line_before_the_export(exported, tmp_path, capsys, monkeypatch):
    """`-o` below a regular file cannot be written (even by root): one line, before any export work."""
    import stl_bench.deploy.export_onnx as exporter

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setattr(exporter, "export_onnx", lambda *a, **k: pytest.fail("the export started"))
    rc = main(["export", str(exported["ckpt"]), "-o", str(blocker / "sub" / "x.onnx"), "--tokens"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "cannot write the export output folder" in err and str(blocker / "sub") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_graph_with_side_file_is_written_whole_with_its_final_names(exported, tmp_path, monkeypatch):
    """Above the protobuf limit the weights go to `<name>.onnx.data`: the CLI's final file
    must name that side file (not the scratch one), and no temporaries stay behind."""
    import os

    import stl_bench.deploy.export_onnx as exporter
    from stl_bench.deploy.onnx_runner import OnnxRunner
    from stl_bench.io import current_umask

    monkeypatch.setattr(exporter, "_SINGLE_FILE_LIMIT", 0)
    out = tmp_path / "big.onnx"
    assert main(["export", str(exported["ckpt"]), "-o", str(out), "--tokens", "--batch-sizes", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    proto = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}
    for path in (out, tmp_path / "big.onnx.data"):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~current_umask()
    x = real_images(read_metadata(out).data_config, 2)
    want = OnnxRunner.open(exported["fp32"]).predict(x).logits
    torch.testing.assert_close(OnnxRunner.open(out).predict(x).logits, want)
    # a later small export of the same name drops the stale side file
    monkeypatch.setattr(exporter, "_SINGLE_FILE_LIMIT", 1_800_000_000)
    exporter.save_onnx(onnx.load(str(exported["fp32"])), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]
