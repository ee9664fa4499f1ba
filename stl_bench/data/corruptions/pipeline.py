"""The geometry and the JPEG step around the corruptions, as ImageNet-C was made.

ImageNet-C: resize the shorter side to 256 (PIL bilinear, which antialiases), centre
crop 224, corrupt, save as JPEG quality 85. `IMAGENET_C_PRE` is the first two steps as a
torchvision transform; `jpeg_roundtrip` is the last one for on-the-fly evaluation.
"""
from __future__ import annotations

import warnings

import torch
from torchvision import transforms
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms import InterpolationMode

from stl_bench.data.decode import to_rgb

IMAGENET_C_RESIZE = 256
IMAGENET_C_CROP = 224
IMAGENET_C_JPEG_QUALITY = 85


def imagenet_c_transform(crop: int = IMAGENET_C_CROP, resize: int | None = None) -> transforms.Compose:
    """Resize the shorter side to `resize` (default: crop * 256 / 224), centre crop `crop`.

    Works on PIL images (Pillow's bilinear with its antialiasing, as the original) and on
    uint8 tensors (torchvision's antialiased bilinear, within a grey level of Pillow).
    """
    if resize is None:
        resize = round(crop * IMAGENET_C_RESIZE / IMAGENET_C_CROP)
    return transforms.Compose([
        transforms.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(crop),
    ])


IMAGENET_C_PRE = imagenet_c_transform()


def imagenet_c_pipeline(image) -> torch.Tensor:
    """A PIL image or uint8 [3, H, W] tensor -> the uint8 [3, 224, 224] that gets corrupted.

    A PIL image of any mode becomes RGB through the one decoder (`data.decode.to_rgb`);
    one already decoded passes through unchanged."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"imagenet_c_pipeline takes uint8 tensors, got {image.dtype}")
        return IMAGENET_C_PRE(image)
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(IMAGENET_C_PRE(to_rgb(image)))


def jpeg_roundtrip(images: torch.Tensor, quality: int = IMAGENET_C_JPEG_QUALITY) -> torch.Tensor:
    """Encode and decode uint8 [B, 3, H, W] (or [3, H, W]) as JPEG at `quality`.

    Runs libjpeg on the CPU whatever the input device (nvJPEG on a GPU would give other
    pixels); the result goes back to the input's device. Pixels equal a Pillow
    save(quality=q) / open round trip (tested), which is what ImageNet-C stored.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"jpeg_roundtrip takes uint8 images, got {images.dtype}")
    single = images.dim() == 3
    batch = images[None] if single else images
    if batch.shape[0] == 0:
        return images.clone()
    cpu = [img.contiguous() for img in batch.detach().cpu()]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its JPEG codec in favour of torchcodec; it still is
        # libjpeg-turbo, which is what Pillow used for ImageNet-C, so keep it quietly.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        decoded = decode_jpeg(encode_jpeg(cpu, quality=int(quality)))
    out = torch.stack(decoded).to(images.device)
    return out[0] if single else out
