"""A request body to model input, on the server: decoded once, preprocessed as the harness does.

An encoded image goes through the same three steps an evaluation folder's files go
through (the one decoder, `data.decode.to_rgb`, that `load_rgb` also uses; the model's
resize and centre crop to uint8; then normalisation on the batch), so a served
prediction equals the in-process one exactly, 16-bit and EXIF-rotated files included.
Untrusted bodies are checked from the image header before any pixel is decoded.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass

import torch

from stl_bench.data.decode import ImageLimits, ImageRefused, decode_rgb, open_checked
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.serve.protocol import NPY, RequestError, parse_npy


@dataclass
class PreparedItem:
    """One request's images, ready for a batched runner call.

    `images` is uint8 crops [n, 3, H, W] (`normalised=False`, from encoded images) or the
    client's float32 model inputs (`normalised=True`, from `.npy` bodies).
    """

    images: torch.Tensor
    normalised: bool
    decode_ms: float
    received: float  # time.perf_counter() when the body was in
    prepared: float = 0.0  # ... and when decoding ended (queueing for the model starts)

    @property
    def count(self) -> int:
        return int(self.images.shape[0])


# Payload too large for pixel bombs, unprocessable for shapes a centre crop cannot serve.
_STATUS = {"unreadable": 400, "too_large": 413, "shape": 422}


def image_crop(body: bytes, prep: Preprocessing, limits: ImageLimits, name: str = "the image") -> torch.Tensor:
    """uint8 [1, 3, H, W]: decode (header checked first), resize and centre-crop."""
    try:
        img = open_checked(io.BytesIO(body), name, limits)
        with img:
            rgb = decode_rgb(img, name)
    except ImageRefused as exc:
        raise RequestError(_STATUS[exc.reason], str(exc)) from None
    return prep.folder_transform()(rgb)[None]


def prepare(body: bytes, kind: str, prep: Preprocessing, limits: ImageLimits, max_batch: int,
            received: float) -> PreparedItem:
    """Turn a checked body (see `protocol.check_body`) into a `PreparedItem`."""
    start = time.perf_counter()
    if kind == NPY:
        images, normalised = parse_npy(body, prep.input_size, max_batch), True
    else:
        images, normalised = image_crop(body, prep, limits), False
    end = time.perf_counter()
    return PreparedItem(images, normalised, (end - start) * 1000.0, received, end)


def model_inputs(items: list[PreparedItem], prep: Preprocessing) -> torch.Tensor:
    """One float batch from several requests: crops normalised together, arrays as they came."""
    parts = [item.images if item.normalised else prep.to_model_input(item.images) for item in items]
    return torch.cat(parts) if len(parts) > 1 else parts[0]
