"""Every registered FAN variant, every property (the shape of timm's tests/test_models.py)."""
from __future__ import annotations

import functools
import hashlib
import math
from unittest import mock

import pytest
import timm
import torch
import torch.nn.functional as F

import stl_bench  # noqa: F401  (registers the models)
import stl_bench.fan.model as fan_model
from stl_bench.fan import FAN_MODEL_NAMES
from stl_bench.fan.cards import cards_for_arch, pretrained_tag
from stl_bench.fan.model import ChannelProcessing, FANBlock, SEMlp, TokenMixing, TokenPairForward

# Parameter counts of the official architectures at 1000 classes (NVlabs/FAN, NVlabs/STL).
OFFICIAL_PARAMS = {
    "fan_tiny_12_p16_224": 7_319_920,
    "fan_small_12_p16_224": 28_345_336,
    "fan_base_18_p16_224": 54_350_320,
    "fan_large_24_p16_224": 80_574_100,
    "fan_small_12_p16_224_se_attn": 27_452_440,
    "fan_tiny_8_p4_hybrid": 7_467_240,
    "fan_small_12_p4_hybrid": 26_117_944,
    "fan_base_16_p4_hybrid": 50_475_048,
    "fan_large_16_p4_hybrid": 76_855_140,
    "fan_tiny_8_p4_hybrid_token": 7_660_240,
    "fan_small_12_p4_hybrid_token": 26_502_944,
    "fan_base_16_p4_hybrid_token": 50_924_048,
    "fan_large_16_p4_hybrid_token": 77_336_140,
}
TOKEN_MODELS = [n for n in FAN_MODEL_NAMES if n.endswith("_token")]
NUM_CLASSES = 5


def _small_input(name: str, batch: int = 2) -> torch.Tensor:
    size = 32 if "nano" in name else 64
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=NUM_CLASSES, **kwargs)


@functools.lru_cache(maxsize=None)
def _shared(name: str) -> torch.nn.Module:
    """One instance per variant for the read-only tests (building the large ones dominates)."""
    return _build(name, drop_path_rate=0.1, drop_rate=0.1)


def test_every_required_variant_is_registered():
    required = set(OFFICIAL_PARAMS) | {
        f"{n}_token" for n in OFFICIAL_PARAMS if "p16" in n
    } | {"fan_nano_4_p4_32", "fan_nano_4_p4_32_token"}
    assert required <= set(timm.list_models("fan_*"))
    assert set(FAN_MODEL_NAMES) == set(timm.list_models("fan_*"))


# --- the registry as it was before the variants became one function each -------------
# Every variant's only pretrained config (tag "untrained"): the fields every one shares,
# then what each changes. "architecture" and "tag" are filled in by timm.
_CFG_BASE = {
    "url": "", "file": None, "state_dict": None, "hf_hub_id": None, "hf_hub_filename": None, "source": None,
    "tag": "untrained", "custom_load": False, "input_size": (3, 224, 224), "test_input_size": None,
    "min_input_size": None, "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 1.0,
    "test_crop_pct": None, "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "num_classes": 1000, "label_offset": None, "label_names": None, "label_descriptions": None, "pool_size": None,
    "test_pool_size": None, "first_conv": "patch_embed.proj.0.0", "classifier": "head",
    "license": "NVIDIA Source Code License-NC (official weights)", "description": None, "origin_url": None,
    "paper_name": None, "paper_ids": None, "notes": None,
}
_HYBRID_CFG = {"first_conv": "patch_embed.backbone.stem.0"}
_TOKEN_CFG = {"classifier": ("head", "aux_head")}
_NANO_CFG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "license": ""}
# sha256 of "key:shape;..." of each variant's state dict (1000 classes), first 16 hex digits.
REGISTRY = {
    "fan_tiny_12_p16_224": ({}, "2390484f17c649d3"),
    "fan_tiny_12_p16_224_token": (_TOKEN_CFG, "db9713da13c1de22"),
    "fan_small_12_p16_224_se_attn": ({}, "d3f833b64448967a"),
    "fan_small_12_p16_224_se_attn_token": (_TOKEN_CFG, "b41e7cddad8dab2b"),
    "fan_small_12_p16_224": ({}, "4d27b2bf86d19e44"),
    "fan_small_12_p16_224_token": (_TOKEN_CFG, "fe169b11862b430e"),
    "fan_base_18_p16_224": ({}, "1e6cd6f862e06252"),
    "fan_base_18_p16_224_token": (_TOKEN_CFG, "72bb188bb2e70b17"),
    "fan_large_24_p16_224": ({}, "ea4e70c07d60dec3"),
    "fan_large_24_p16_224_token": (_TOKEN_CFG, "ddef8bf2c721ccae"),
    "fan_tiny_8_p4_hybrid": (_HYBRID_CFG, "b9fb6b542b6bcbb1"),
    "fan_tiny_8_p4_hybrid_token": ({**_HYBRID_CFG, **_TOKEN_CFG}, "ba810ad61f17d017"),
    "fan_small_12_p4_hybrid": (_HYBRID_CFG, "8a0850a492c8c30f"),
    "fan_small_12_p4_hybrid_token": ({**_HYBRID_CFG, **_TOKEN_CFG}, "ef2e457f4a674a7d"),
    "fan_base_16_p4_hybrid": (_HYBRID_CFG, "c4addd5a30e1857d"),
    "fan_base_16_p4_hybrid_token": ({**_HYBRID_CFG, **_TOKEN_CFG}, "c73dec9a7add9b48"),
    "fan_large_16_p4_hybrid": (_HYBRID_CFG, "ab5f73e13480a89a"),
    "fan_large_16_p4_hybrid_token": ({**_HYBRID_CFG, **_TOKEN_CFG}, "6fa97d29fb3dc1fb"),
    "fan_nano_4_p4_32": (_NANO_CFG, "d1da1f214be46e91"),
    "fan_nano_4_p4_32_token": ({**_NANO_CFG, **_TOKEN_CFG}, "0e86ac388011a614"),
}


def test_registry_names_and_order_are_unchanged():
    assert FAN_MODEL_NAMES == tuple(REGISTRY)  # `stl-bench models --all` lists them in this order
    assert set(timm.list_models("fan_*")) == set(REGISTRY)


@pytest.mark.parametrize("name", FAN_MODEL_NAMES)
def test_registry_entry_is_unchanged(name):
    """One `@register_model` function per variant, named as the variant, with the same configs and layout."""
    from timm.models import get_pretrained_cfg
    from timm.models._registry import _model_default_cfgs, _model_entrypoints

    entrypoint = _model_entrypoints[name]
    assert entrypoint is getattr(fan_model, name) and entrypoint.__name__ == name  # grep finds `def {name}(`
    released = {pretrained_tag(card) for card in cards_for_arch(name)}  # the model cards are the pretrained tags
    assert set(_model_default_cfgs[name].tags) == {"untrained", *released}
    overrides, layout_digest = REGISTRY[name]
    expected = {**_CFG_BASE, "architecture": name, **overrides}
    assert get_pretrained_cfg(f"{name}.untrained").to_dict(remove_source=False, remove_null=False) == expected
    with torch.device("meta"):
        model = timm.create_model(name)
    assert model.pretrained_cfg["architecture"] == name
    layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    assert hashlib.sha256(layout.encode()).hexdigest()[:16] == layout_digest


@pytest.mark.parametrize("name", FAN_MODEL_NAMES)
def test_parameter_count(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    params = sum(p.numel() for p in model.parameters())
    if name in OFFICIAL_PARAMS:
        assert params == OFFICIAL_PARAMS[name]
    elif name.endswith("_token"):
        # A token twin adds exactly one Linear(embed_dim, 1000) head.
        with torch.device("meta"):
            plain = timm.create_model(name[: -len("_token")], head_init_scale=1.0)
        assert params == sum(p.numel() for p in plain.parameters()) + (model.embed_dim + 1) * 1000
    else:
        assert params < 1_000_000  # the nano CPU variant


@pytest.mark.parametrize("name", FAN_MODEL_NAMES)
def test_forward_backward_and_shapes(name):
    model = _shared(name).train()
    model.zero_grad(set_to_none=True)
    x = _small_input(name)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    out.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if model.has_token_head:
        assert unused == ["aux_head.weight", "aux_head.bias"]  # the class head does not read it
    else:
        assert unused == []
    grid = model.token_grid(x.shape[-2:])
    assert math.prod(grid) == (x.shape[-1] // (4 if "nano" in name else 16)) ** 2


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_token_outputs(name):
    model = _shared(name).eval()
    x = _small_input(name)
    n_tokens = math.prod(model.token_grid(x.shape[-2:]))
    with torch.no_grad():
        cls_logits, token_logits = model.forward_tokens(x)
        assert cls_logits.shape == (2, NUM_CLASSES)
        assert token_logits.shape == (2, n_tokens, NUM_CLASSES)
        assert torch.equal(model(x), cls_logits)
        pair = TokenPairForward(model)(x)
        assert isinstance(pair, tuple) and torch.equal(pair[0], cls_logits) and torch.equal(pair[1], token_logits)
        fused = model.set_output("fused")(x)
        torch.testing.assert_close(fused, cls_logits + 0.5 * token_logits.max(dim=1).values)
        model.set_output("cls")
    created = timm.create_model(name, num_classes=NUM_CLASSES, output="fused")
    assert created.output == "fused"
    with pytest.raises(ValueError, match="TokenPairForward"):
        model.set_output("pair")


@pytest.mark.parametrize("name", FAN_MODEL_NAMES)
def test_eval_mode_is_deterministic(name):
    model = _shared(name).eval()
    x = _small_input(name, batch=3)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[:1])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[:1], atol=1e-5, rtol=1e-4)  # no cross-sample leakage


@pytest.mark.parametrize("name", ["fan_nano_4_p4_32_token", "fan_tiny_8_p4_hybrid", "fan_small_12_p16_224_se_attn"])
def test_timm_api(name):
    model = _build(name)
    cfg = model.pretrained_cfg
    for key in ("mean", "std", "input_size", "crop_pct", "interpolation"):
        assert key in cfg
    assert cfg["crop_pct"] == 1.0
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == cfg["input_size"]
    x = _small_input(name)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + math.prod(model.token_grid(x.shape[-2:])), model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    if model.has_token_head:
        assert model.forward_tokens(x)[1].shape[-1] == 7
    assert model.get_classifier() is model.head
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()


def _forward_backward_counting_blocks(model: torch.nn.Module, x: torch.Tensor) -> tuple[list, int, int]:
    """Gradients, and how often `FANBlock.forward` ran during the forward and during the backward.

    Counted in the method itself: module hooks do not fire when checkpointing re-runs a block.
    """
    calls = [0]
    forward = FANBlock.forward

    def counting(self, *args):
        calls[0] += 1
        return forward(self, *args)

    with mock.patch.object(FANBlock, "forward", counting):
        torch.manual_seed(1)
        out = model(x)
        forward_calls = calls[0]
        out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return grads, forward_calls, calls[0] - forward_calls


def test_grad_checkpointing_gives_same_gradients():
    model = _build("fan_nano_4_p4_32_token")
    x = _small_input("fan_nano_4_p4_32_token")
    model.train()
    depth = len(model.blocks)
    ref, ref_fwd, ref_bwd = _forward_backward_counting_blocks(model, x)
    assert (ref_fwd, ref_bwd) == (depth, 0)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    got, fwd, bwd = _forward_backward_counting_blocks(model, x)
    # Checkpointing keeps no block activations and re-runs each block in the backward:
    # a no-op switch would re-run none.
    assert (fwd, bwd) == (depth, depth)
    assert len(got) == len(ref)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_drop_path_is_the_same_rate_in_every_block():
    model = _build("fan_tiny_12_p16_224", drop_path_rate=0.25)
    rates = {blk.drop_path.drop_prob for blk in model.blocks}
    assert rates == {0.25}


def test_output_switch_rejects_plain_models():
    model = _build("fan_tiny_12_p16_224")
    with pytest.raises(ValueError, match="token-label model"):
        model.set_output("fused")
    with pytest.raises(ValueError, match="token-label model"):
        TokenPairForward(model)
    with pytest.raises(ValueError, match="token-label model"):
        model.forward_tokens(_small_input("fan_tiny_12_p16_224"))


# --- official layout: names and shapes that official checkpoints carry --------------
OFFICIAL_KEYS = {
    "fan_tiny_12_p16_224": {
        "patch_embed.proj.0.0.weight": (24, 3, 3, 3),
        "patch_embed.proj.0.1.running_var": (24,),
        "patch_embed.proj.6.0.weight": (192, 96, 3, 3),
        "pos_embed.token_projection.weight": (192, 64, 1, 1),
        "blocks.0.attn.q.weight": (192, 192),
        "blocks.0.attn.kv.weight": (384, 192),
        "blocks.11.mlp.temperature": (4, 1, 1),
        "blocks.0.mlp.q.weight": (192, 192),
        "blocks.0.mlp.mlp_v.fc1.weight": (768, 192),
        "blocks.0.mlp.mlp_v.dwconv.conv1.weight": (768, 1, 3, 3),
        "blocks.0.mlp.mlp_v.dwconv.bn.running_mean": (768,),
        "blocks.0.mlp.mlp_v.gamma": (768,),
        "blocks.0.mlp.norm_v.weight": (192,),
        "blocks.0.gamma1": (192,),
        "cls_token": (1, 1, 192),
        "cls_attn_blocks.1.attn.k.weight": (192, 192),
        "cls_attn_blocks.1.mlp.fc2.weight": (192, 768),
        "cls_attn_blocks.0.gamma2": (192,),
        "norm.weight": (192,),
        "head.weight": (1000, 192),
    },
    "fan_small_12_p16_224_se_attn": {
        "blocks.0.mlp.fc1.weight": (1536, 384),
        "blocks.0.mlp.dwconv.conv2.weight": (1536, 1, 3, 3),
        "blocks.0.mlp.gamma": (1536,),
        "blocks.0.mlp.fc2.weight": (384, 1536),
        "blocks.0.mlp.se.conv_reduce.weight": (96, 384, 1, 1),
        "blocks.0.mlp.se.conv_expand.weight": (384, 96, 1, 1),
    },
    "fan_large_16_p4_hybrid_token": {
        "patch_embed.backbone.stem.0.weight": (128, 3, 4, 4),
        "patch_embed.backbone.stem.1.weight": (128,),
        "patch_embed.backbone.stages.0.blocks.2.conv_dw.weight": (128, 1, 7, 7),
        "patch_embed.backbone.stages.0.blocks.0.mlp.fc1.weight": (512, 128, 1, 1),
        "patch_embed.backbone.stages.0.blocks.0.gamma": (128,),
        "patch_embed.backbone.stages.1.downsample.0.weight": (128,),
        "patch_embed.backbone.stages.1.downsample.1.weight": (256, 128, 2, 2),
        "patch_embed.backbone.stages.1.blocks.4.mlp.fc2.weight": (256, 1024, 1, 1),
        "patch_embed.proj.weight": (480, 256, 2, 2),
        "blocks.21.mlp.temperature": (10, 1, 1),
        "aux_head.weight": (1000, 480),
        "aux_head.bias": (1000,),
    },
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_official_key_names_and_shapes(name):
    with torch.device("meta"):
        state = timm.create_model(name).state_dict()
    for key, shape in OFFICIAL_KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("patch_embed.backbone.stages.0.downsample") for k in state)
    assert not any(".attn.qkv." in k for k in state)


# --- official formulations, re-expressed, against our modules' outputs --------------
def _official_channel_processing(m: ChannelProcessing, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The official formulation: adaptive average pooling and a permute chain."""
    b, n, c = x.shape
    heads = m.num_heads
    v = x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    q = m.q(x).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    k = x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    q = q.softmax(-2).transpose(-1, -2)
    k = F.adaptive_avg_pool2d(k.softmax(-2), (n, 1))
    attn = torch.sigmoid(q @ k) * m.temperature
    bv, hd, nv, cv = v.shape
    v = m.norm_v(m.mlp_v(v.transpose(1, 2).reshape(bv, nv, hd * cv), h, w)).reshape(bv, nv, hd, cv).transpose(1, 2)
    return (attn * v.transpose(-1, -2)).permute(0, 3, 1, 2).reshape(b, n, c)


def _official_token_mixing(m: TokenMixing, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    q = m.q(x).reshape(b, n, m.num_heads, c // m.num_heads).permute(0, 2, 1, 3)
    kv = m.kv(x).reshape(b, -1, 2, m.num_heads, c // m.num_heads).permute(2, 0, 3, 1, 4)
    attn = (q * m.scale @ kv[0].transpose(-2, -1)).softmax(dim=-1)
    return m.proj((attn @ kv[1]).transpose(1, 2).reshape(b, n, c))


def test_channel_processing_matches_official_formulation():
    torch.manual_seed(0)
    m = ChannelProcessing(48, num_heads=4, qkv_bias=True, mlp_hidden_dim=96).eval()
    with torch.no_grad():
        m.temperature.uniform_(0.5, 2.0)
        x = torch.randn(3, 20, 48)
        torch.testing.assert_close(m(x, 4, 5), _official_channel_processing(m, x, 4, 5), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_token_mixing_matches_official_formulation(fused):
    torch.manual_seed(0)
    m = TokenMixing(48, num_heads=4, qkv_bias=True).eval()
    m.fused_attn = fused
    x = torch.randn(2, 10, 48)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _official_token_mixing(m, x), atol=1e-6, rtol=1e-5)


def test_se_mlp_matches_official_formulation():
    torch.manual_seed(0)
    m = SEMlp(32, hidden_features=64).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        y = m.fc1(x)
        y = m.gamma * m.dwconv(y, 3, 4) + y
        y = m.fc2(y)
        grid = y.permute(0, 2, 1).reshape(2, 32, 3, 4)
        se = F.adaptive_avg_pool2d(grid, 1)
        se = m.se.conv_expand(torch.relu(m.se.conv_reduce(se)))
        expected = (grid * se.sigmoid()).reshape(2, 32, 12).permute(0, 2, 1)
        torch.testing.assert_close(m(x, 3, 4), expected, atol=1e-6, rtol=1e-5)
