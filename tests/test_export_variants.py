"""Every FAN variant exports to ONNX and matches PyTorch in ONNX Runtime (CPU) at batch 1, 2 and 3.

Small inputs (64 px, 5 classes) keep the graphs cheap; a full-depth export of the large
variants still takes about a minute on 2 cores, so the all-variants sweep is marked
slow. The fast set covers each stem and block type once at depth 1.
"""
from __future__ import annotations

import pytest
import torch

import stl_bench  # noqa: F401
from stl_bench.data.real_images import real_images
from stl_bench.deploy.export_onnx import export_onnx
from stl_bench.deploy.onnx_format import metadata_for
from stl_bench.deploy.parity import check_parity
from stl_bench.fan import FAN_MODEL_NAMES, create_model

IMG = 64
CLASSES = 5


def _export_and_check(trained_looking, name: str, tmp_path, **model_kwargs) -> None:
    torch.manual_seed(0)
    model = trained_looking(create_model(name, num_classes=CLASSES, img_size=IMG, **model_kwargs).eval())
    tokens = bool(model.has_token_head)
    meta = metadata_for(model, name, tokens=tokens, img_size=IMG)
    path = export_onnx(model, tmp_path / f"{name}.onnx", meta)
    report = check_parity(model, path, batch_sizes=(1, 2, 3), atol=1e-4, real=real_images(meta.data_config, 3))
    assert report.passed, report.table()
    outputs = {r.output for r in report.rows}
    assert outputs == ({"logits", "token_logits"} if tokens else {"logits"})
    assert {r.batch for r in report.rows} >= {1, 2, 3}
    if tokens:
        grid = model.token_grid(IMG)
        assert meta.token_grid == grid
        assert all(r.agreement >= 0.99 for r in report.rows if r.output == "token_logits")


@pytest.mark.parametrize("name", ["fan_tiny_8_p4_hybrid_token", "fan_small_12_p16_224_se_attn"])
def test_each_stem_and_block_type_exports_at_depth_1(trained_looking, name, tmp_path):
    _export_and_check(trained_looking, name, tmp_path, depth=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAN_MODEL_NAMES)
def test_every_variant_exports_with_parity(trained_looking, name, tmp_path):
    _export_and_check(trained_looking, name, tmp_path)
