"""The AlexNet-style CNN that normalises the demo's corruption errors."""
import timm
import torch

import stl_bench  # noqa: F401


def test_alexnet_mini_is_a_timm_model():
    model = timm.create_model("alexnet_mini_32", num_classes=10, drop_path_rate=0.1)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 32, 32)
    model.reset_classifier(3)
    assert model.eval()(x).shape == (4, 3)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (4, model.num_features)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
