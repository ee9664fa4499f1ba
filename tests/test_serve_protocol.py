"""The served API's contract without a server: limits, parsing, preprocessing, response shape."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stl_bench.data.decode import ImageLimits
from stl_bench.data.folders import load_rgb
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.serve.inputs import image_crop, model_inputs, prepare
from stl_bench.serve.protocol import (NPY, ItemResult, Query, RequestError, ServeConfig, check_body, parse_npy,
                                      prediction_body, to_npy)

EXAMPLES = Path(__file__).resolve().parents[1] / "app" / "examples"
PREP = Preprocessing(input_size=(32, 32), crop_pct=0.875, interpolation="bicubic")
LIMITS = ImageLimits(min_side=8)


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value.status, info.value.message


@pytest.mark.parametrize("body, ctype, status, words", [
    (b"", "image/png", 400, "empty"),
    (b"x" * 2000, "image/png", 413, "over the server's limit"),
    (b"abc", "text/plain", 415, "not accepted"),
    (b"abc", "application/x-www-form-urlencoded", 415, "multipart"),
    (b"abc", None, 415, "(none)"),
])
def test_bodies_are_checked_before_decoding(body, ctype, status, words):
    code, message = _status(check_body, body, ctype, 1000)
    assert code == status and words in message


def test_accepted_media_types():
    assert check_body(b"x", "image/jpeg", 10) == "image/jpeg"
    assert check_body(b"x", "application/octet-stream", 10) == "application/octet-stream"
    assert check_body(b"x", f"{NPY}; charset=binary", 10) == NPY


@pytest.mark.parametrize("make, status, words", [
    (lambda: b"not an image at all", 400, "not an image"),
    (lambda: _png((64, 64))[:300], 400, "truncated or corrupt"),
    (lambda: _png((1, 1)), 422, "smaller than 8"),
    (lambda: _png((20000, 20)), 422, "aspect ratio"),
])
def test_bad_images_are_4xx_with_a_message(make, status, words):
    code, message = _status(image_crop, make(), PREP, LIMITS)
    assert code == status and words in message


def test_decompression_bomb_header_is_refused_unread():
    # a 30000 x 30000 PNG header with no pixel data: refused from the header alone
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    code, message = _status(image_crop, data, PREP, LIMITS)
    assert code == 413 and "too large" in message


def test_served_preprocessing_is_the_harness_preprocessing():
    path = EXAMPLES / "digit_3.png"
    want = PREP.to_model_input(PREP.folder_transform()(load_rgb(path))[None])
    item = prepare(path.read_bytes(), "image/png", PREP, LIMITS, 4, 0.0)
    assert not item.normalised and item.images.dtype == torch.uint8
    assert torch.equal(model_inputs([item], PREP), want)
    # an array request is passed through untouched, and batches concatenate in order
    arr = prepare(to_npy(want.repeat(2, 1, 1, 1)), NPY, PREP, LIMITS, 4, 0.0)
    assert arr.normalised and arr.count == 2
    both = model_inputs([item, arr], PREP)
    assert both.shape == (3, 3, 32, 32) and torch.equal(both[0], want[0]) and torch.equal(both[2], want[0])


def test_npy_requests_are_checked():
    good = torch.zeros(2, 3, 32, 32)
    assert parse_npy(to_npy(good), (32, 32), 4).shape == (2, 3, 32, 32)
    assert _status(parse_npy, b"\x93NUMPY garbage", (32, 32), 4)[0] == 400
    assert "float32 [B, 3, 32, 32]" in _status(parse_npy, to_npy(torch.zeros(2, 3, 16, 16)), (32, 32), 4)[1]
    assert _status(parse_npy, to_npy(torch.zeros(5, 3, 32, 32)), (32, 32), 4)[0] == 413
    assert "NaN" in _status(parse_npy, to_npy(torch.full((1, 3, 32, 32), float("nan"))), (32, 32), 4)[1]
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert _status(parse_npy, pickled.getvalue(), (32, 32), 4)[0] == 400  # never unpickled


def test_query_options():
    q = Query.parse({"tokens": "1", "top_k": "50"}, 5, 10)
    assert q.tokens and not q.logits and q.top_k == 10
    assert Query.parse({}, 3, 10).top_k == 3
    assert _status(Query.parse, {"top_k": "x"}, 5, 10)[0] == 400
    assert _status(Query.parse, {"tokens": "maybe"}, 5, 10)[0] == 400


def test_prediction_body_shape():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    tokens = torch.zeros(2, 4, 3)
    tokens[:, :, 2] = 5.0
    result = ItemResult(logits, tokens)
    model = {"name": "m", "head": "fused"}
    body = prediction_body(result, Query(tokens=True, logits=True, top_k=2), ["a", "b", "c"], (2, 2), model)
    first = body["predictions"][0]
    assert [e["name"] for e in first["top_k"]] == ["b", "c"] and first["logits"] == [0.0, 3.0, 1.0]
    assert first["tokens"]["grid"] == [2, 2] and first["tokens"]["classes"] == [[2, 2], [2, 2]]
    assert 0.9 < first["tokens"]["confidence"][0][0] <= 1.0
    assert body["head"] == "fused" and set(body["timing"]) >= {"decode_ms", "inference_ms", "batch_images"}
    with pytest.raises(RequestError, match="no token-label head"):
        prediction_body(ItemResult(logits, None), Query(tokens=True), ["a", "b", "c"], None, model)


def test_serve_config_checks_and_round_trips():
    cfg = ServeConfig(source="m.pth", max_batch=8)
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(StlBenchError, match="--max-batch"):
        ServeConfig(source="m.pth", max_batch=0)
    with pytest.raises(StlBenchError, match="nothing to serve"):
        ServeConfig()
    with pytest.raises(StlBenchError, match="unknown serve option"):
        ServeConfig.from_dict({"source": "m.pth", "max_bach": 3})
