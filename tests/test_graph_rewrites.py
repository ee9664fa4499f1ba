"""Export-time graph rewrites: each computes what the model computes, and the graph shows it."""
from __future__ import annotations

import onnx
import pytest
import torch

import stl_bench  # noqa: F401
from stl_bench.deploy.export_onnx import export_onnx
from stl_bench.deploy.graph_rewrites import GraphOptions, prepare_for_export, token_attention
from stl_bench.deploy.onnx_format import metadata_for
from stl_bench.deploy.tensorrt import check_parser_supports
from stl_bench.errors import StlBenchError
from stl_bench.fan import create_model
from stl_bench.fan.model import FANBlock

VIT = "fan_nano_4_p4_32_token"
ONE_AT_A_TIME = [
    GraphOptions(True, False, False, False),
    GraphOptions(False, True, False, False),
    GraphOptions(False, False, True, False),
    GraphOptions(False, False, False, True),
    GraphOptions(),
]


def _model(trained_looking, name: str = VIT, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return trained_looking(create_model(name, num_classes=7, **kwargs).eval())


@pytest.mark.parametrize("options", ONE_AT_A_TIME, ids=lambda o: "".join(str(int(v)) for v in vars(o).values()))
@pytest.mark.parametrize("name, kwargs", [
    (VIT, {}),
    ("fan_nano_4_p4_32", {"qkv_bias": True}),  # the official models have no q/k/v bias; a fine-tune may
    ("fan_small_12_p16_224_se_attn", {"img_size": 64, "depth": 2}),
    ("fan_tiny_8_p4_hybrid_token", {"img_size": 64, "depth": 2}),
], ids=["nano-token", "nano-qkv-bias", "se", "hybrid"])
def test_each_rewrite_keeps_the_outputs(trained_looking, name, kwargs, options):
    model = _model(trained_looking, name, **kwargs)
    tokens = bool(model.has_token_head)
    size = (3, kwargs.get("img_size", 32), kwargs.get("img_size", 32))
    plain = prepare_for_export(model, size, tokens, GraphOptions.none())
    rewritten = prepare_for_export(model, size, tokens, options)
    x = torch.randn(3, *size)
    with torch.no_grad():
        want, got = plain(x), rewritten(x)
    want, got = (want, got) if tokens else ((want,), (got,))
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)
    # The source model is untouched: layer scales are still parameters.
    assert all(isinstance(b.gamma1, torch.nn.Parameter) for b in model.blocks)


def test_fold_layer_scales_removes_the_scales_and_keeps_the_block(trained_looking):
    torch.manual_seed(0)
    for se in (False, True):
        block = FANBlock(32, 4, se_mlp=se).eval()
        trained_looking(block)
        x = torch.randn(2, 12, 32)
        with torch.no_grad():
            want = block(x, 3, 4)
            block.fold_layer_scales()
            got = block(x, 3, 4)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert block.gamma1 is None
        # The SE-MLP's gate reads the unscaled output, so its gamma2 must stay.
        assert (block.gamma2 is not None) == se


def test_token_attention_op_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 10, 24) for _ in range(3))
    split = [t.reshape(2, 10, 4, 6).transpose(1, 2) for t in (q, k, v)]
    want = torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(2, 10, 24)
    torch.testing.assert_close(token_attention(q, k, v, 4), want)


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_default_export_uses_the_attention_op_and_opset_20_does_not(trained_looking, tmp_path):
    model = _model(trained_looking)
    meta = metadata_for(model, VIT, tokens=True)
    new = _ops(export_onnx(model, tmp_path / "23.onnx", meta))
    old = _ops(export_onnx(model, tmp_path / "20.onnx", meta, opset=20))
    blocks = len(model.blocks)
    assert new.count("Attention") >= blocks
    assert "Attention" not in old and old.count("Softmax") > new.count("Softmax")
    # The rewrites leave fewer layout copies: no 5-D permute of a joint kv tensor.
    assert new.count("Transpose") < old.count("Transpose")
    plain = _ops(export_onnx(model, tmp_path / "plain.onnx", meta, opset=20, options=GraphOptions.none()))
    assert len(new) < len(plain) and plain.count("Mul") > new.count("Mul")


@pytest.mark.parametrize("version, ok", [("10.13.3", False), ("10.8.0.43", False), ("10.14.1", True), ("11.0.0", True)])
def test_tensorrt_before_10_14_refuses_the_attention_op(version, ok, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    if ok:
        check_parser_supports({"Attention", "MatMul"}, version, onnx_path)
    else:
        with pytest.raises(StlBenchError, match="--opset 20"):
            check_parser_supports({"Attention", "MatMul"}, version, onnx_path)
    check_parser_supports({"MatMul", "Softmax"}, "10.0.1", onnx_path)  # an opset-20 graph builds anywhere


@pytest.mark.parametrize("tokens", [False, True])
def test_export_heads_outputs_and_parameter_names(tokens):
    """The token pair comes through `TokenPairForward`, class logits through the model's own
    forward; the parameters keep one name each (`model.*`), which the graph's initializers carry."""
    torch.manual_seed(0)
    model = create_model(VIT, num_classes=5).eval()
    heads = prepare_for_export(model, (3, 32, 32), tokens, GraphOptions.none())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        got = heads(x)
        want = model.forward_tokens(x) if tokens else model(x)
    if tokens:
        assert isinstance(got, tuple) and len(got) == 2
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    else:
        torch.testing.assert_close(got, want)
    assert [n for n, _ in heads.named_parameters()] == [f"model.{n}" for n, _ in model.named_parameters()]
