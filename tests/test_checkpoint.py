"""The one checkpoint loader: every layout it reads and every way it refuses a file."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

import stl_bench  # noqa: F401
from stl_bench.errors import StlBenchError
from stl_bench.fan import create_model_from_checkpoint, load_checkpoint, read_checkpoint

NAME = "fan_nano_4_p4_32_token"


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = timm.create_model(NAME, num_classes=10).eval()
    ema = {k: v.clone() + (0.5 if v.is_floating_point() else 0) for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    return model, ema, x, out


def _fresh() -> torch.nn.Module:
    torch.manual_seed(123)
    return timm.create_model(NAME, num_classes=10).eval()


def _same_output(model, reference) -> None:
    _, _, x, out = reference
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), out)


def _official_dict(state, ema):
    """What timm 0.5.4's CheckpointSaver wrote for the official FAN/STL releases."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    return {
        "epoch": 309,
        "arch": NAME,
        "state_dict": state,
        "optimizer": opt.state_dict(),
        "version": 2,
        "args": argparse.Namespace(model=NAME, lr=2e-3, aa="rand-m9-mstd0.5-inc1", img_size=None, smoothing=0.1),
        "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7},
        "metric": 83.4,
        "state_dict_ema": ema,
    }


def test_official_timm054_checkpoint(tmp_path, reference):
    model, ema, _, _ = reference
    path = tmp_path / "fan_hybrid_small.pth.tar"
    torch.save(_official_dict(model.state_dict(), ema), path)
    fresh = _fresh()
    info = load_checkpoint(fresh, path)
    assert (info.format, info.weights, info.arch, info.epoch, info.has_ema) == ("official", "model", NAME, 309, True)
    _same_output(fresh, reference)
    info = load_checkpoint(fresh, path, use_ema=True)
    assert info.weights == "ema"
    assert torch.equal(fresh.state_dict()["head.weight"], ema["head.weight"])


def test_module_prefix_and_model_key(tmp_path, reference):
    model = reference[0]
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    fresh = _fresh()
    load_checkpoint(fresh, path)
    _same_output(fresh, reference)


def test_older_official_names(tmp_path, reference):
    """`pos_embeder.*` and fused class-attention `qkv` tensors, as older FAN files have them."""
    model = reference[0]
    old = {}
    for k, v in model.state_dict().items():
        old[k.replace("pos_embed.", "pos_embeder.", 1) if k.startswith("pos_embed.") else k] = v
    for i in range(2):
        p = f"cls_attn_blocks.{i}.attn."
        for kind in ("weight", "bias"):
            old[p + f"qkv.{kind}"] = torch.cat([old.pop(p + f"{q}.{kind}") for q in "qkv"], dim=0)
    path = tmp_path / "old.pth"
    torch.save(old, path)
    fresh = _fresh()
    info = load_checkpoint(fresh, path)
    assert info.format == "state_dict"
    _same_output(fresh, reference)


def test_our_training_checkpoint_builds_its_own_model(tmp_path, reference):
    model, ema, _, _ = reference
    path = tmp_path / "last.pth"
    torch.save({
        "model": model.state_dict(), "model_ema": ema, "arch": NAME, "num_classes": 10,
        "model_kwargs": {}, "class_names": [str(i) for i in range(10)], "epoch": 4, "step": 100,
        "config": {"lr": 1e-3}, "stl_bench_version": "0.1.0",
    }, path)
    built, info = create_model_from_checkpoint(path)
    assert (info.format, info.arch, info.num_classes, info.class_names[3]) == ("stl-bench", NAME, 10, "3")
    _same_output(built, reference)
    _, info = create_model_from_checkpoint(path, use_ema=True)
    assert info.weights == "ema"
    assert len(info.sha256) == 64


def test_safetensors(tmp_path, reference):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in reference[0].state_dict().items()}, str(path))
    built, info = create_model_from_checkpoint(path, model_name=NAME)
    assert info.format == "safetensors" and info.num_classes == 10  # read from the head's shape
    _same_output(built, reference)


def test_ema_requested_but_absent(tmp_path, reference):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": reference[0].state_dict()}, path)
    with pytest.raises(StlBenchError, match="no EMA weights"):
        read_checkpoint(path, use_ema=True)


def test_mismatch_names_checkpoint_model_and_keys(tmp_path, reference):
    state = dict(reference[0].state_dict())
    state.pop("aux_head.weight")
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(3, 96)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(StlBenchError) as err:
        load_checkpoint(_fresh(), path, model_name=NAME)
    msg = str(err.value)
    for needle in (str(path), NAME, "missing keys: aux_head.weight", "unexpected keys: extra.weight",
                   "head.weight (checkpoint (3, 96), model (10, 96))"):
        assert needle in msg


def test_wrong_architecture(tmp_path, reference):
    path = tmp_path / "nano.pth"
    torch.save({"state_dict": reference[0].state_dict(), "arch": NAME}, path)
    with pytest.raises(StlBenchError, match="does not fit model fan_tiny_12_p16_224"):
        create_model_from_checkpoint(path, model_name="fan_tiny_12_p16_224")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode()}, path)
    with pytest.raises(StlBenchError, match="could run code"):
        read_checkpoint(path)
    legacy = tmp_path / "evil_legacy.pth"
    with open(legacy, "wb") as f:
        pickle.dump({"payload": _RunsCode()}, f)
    with pytest.raises(StlBenchError):
        read_checkpoint(legacy)


def test_truncated_not_a_checkpoint_and_missing(tmp_path, reference):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": reference[0].state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StlBenchError, match="truncated"):
        read_checkpoint(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    short = tmp_path / "short.pth"
    short.write_text("hello")
    with pytest.raises(StlBenchError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(short)
    with pytest.raises(StlBenchError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(text)
    with pytest.raises(StlBenchError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(StlBenchError, match="is a folder"):
        read_checkpoint(tmp_path)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 5)
    with pytest.raises(StlBenchError, match="safetensors"):
        read_checkpoint(broken)


def test_unknown_model_name_suggests_close_ones(tmp_path, reference):
    path = tmp_path / "x.pth"
    torch.save(reference[0].state_dict(), path)
    with pytest.raises(StlBenchError, match="Did you mean: fan_nano_4_p4_32_token"):
        create_model_from_checkpoint(path, model_name="fan_nano_4_p4_32_tokn")
    built, info = create_model_from_checkpoint(path)  # a bare state dict: the fitting variant is found
    assert info.arch == NAME
    _same_output(built, reference)
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(StlBenchError, match="fits no FAN variant"):
        create_model_from_checkpoint(path)


# --- the input size a checkpoint is scored at ------------------------------------------
def _official_at(tmp_path, reference, name: str, **args) -> str:
    model, ema, _, _ = reference
    obj = _official_dict(model.state_dict(), ema)
    obj["args"] = argparse.Namespace(model=NAME, **args)
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("args, hw", [
    ({"input_size": [3, 64, 48], "img_size": None}, (64, 48)),
    ({"input_size": None, "img_size": 56}, (56, 56)),
    ({"input_size": None, "img_size": None}, None),
])
def test_official_args_record_the_training_size(tmp_path, reference, args, hw):
    from stl_bench.deploy.open import open_runner

    path = _official_at(tmp_path, reference, "ft.pth.tar", **args)
    _, info = read_checkpoint(path)
    assert info.input_hw == hw
    runner = open_runner(path)
    assert tuple(runner.info.data_config["input_size"]) == (3, *(hw or (32, 32)))


def test_model_card_names_the_size_of_a_file_that_records_none(tmp_path, reference, monkeypatch):
    """The official 384-px fine-tunes are matched to their card by file name."""
    from stl_bench.deploy.open import open_runner

    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "nano_ft.md").write_text(
        "---\nname: nano_ft_64\ntitle: t\narch: " + NAME + "\ninput_size: [3, 64, 64]\nparams: 1\n"
        "reported: {}\nurl: https://example.invalid/nano_ft_64.pth.tar\nfile: nano_ft_64.pth.tar\n---\nbody\n"
    )
    monkeypatch.setenv("STL_BENCH_MODELS_DIR", str(cards))
    path = _official_at(tmp_path, reference, "nano_ft_64.pth.tar", input_size=None, img_size=None)
    assert tuple(open_runner(path).info.data_config["input_size"]) == (3, 64, 64)
    # An explicit size wins over the card; another file name matches no card.
    assert tuple(open_runner(path, img_size=48).info.data_config["input_size"]) == (3, 48, 48)
    other = _official_at(tmp_path, reference, "renamed.pth.tar", input_size=None, img_size=None)
    assert tuple(open_runner(other).info.data_config["input_size"]) == (3, 32, 32)


def test_the_384px_cards_name_their_release_files():
    from stl_bench.fan.cards import card_for_file

    for name in ("fan_hybrid_base_in22k_1k_384", "fan_hybrid_large_in22k_1k_384"):
        card = card_for_file(f"/downloads/{name}.pth.tar")
        assert card is not None and card["input_size"] == [3, 384, 384], name
