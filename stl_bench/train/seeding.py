"""Random streams keyed by where a draw happens, so a resumed run needs no saved RNG state.

Training draws random numbers in two places: the per-image augmentation (crop, flip,
RandAugment, erasing: Python's `random`, numpy and torch, in the data workers) and the
per-step model side (drop path, mixup/cutmix, batch erasing, Gumbel token labels: the
trainer's global torch and numpy RNGs). Both are reseeded before every draw from a key:
an image by (seed, epoch, its place in the epoch's global order), a micro-batch by
(seed, rank, optimizer step, micro-batch). A run resumed at step k therefore draws what
an uninterrupted run draws from step k on, with any number of data workers.

Saving and restoring the global RNG states instead cannot be exact: a `DataLoader` takes
its base seed from torch's global RNG whenever an iterator is created (at an epoch's
start in one run, at the resumed step in the other), and worker processes keep their own
streams, which run ahead of the trainer by the prefetch depth and across epochs.

On CUDA, equal draws are not enough for equal weights: the kernels must be deterministic
too (no cuDNN autotuning, no atomics in backward), which PyTorch does not promise by
default; the kill tests (tests/test_train_kill.py) run on CPU.
"""
from __future__ import annotations

import hashlib
import random
from typing import NamedTuple

import numpy as np
import torch

# distinct first words keep the image and step streams apart for equal numbers
_IMAGE, _STEP = 0x1A6E, 0x57E9


class SampleKey(NamedTuple):
    """What the sampler hands the dataset: the image and where it falls in the run."""

    index: int
    epoch: int
    position: int  # place in the epoch's global (all ranks) order, padding included


def seed_all(*key: int, cuda: bool = True) -> None:
    """Seed Python's `random`, numpy's and torch's global RNGs (CUDA's too unless `cuda` is off) from `key`.

    The key is hashed (BLAKE2b) into a 64-bit seed per generator, so nearby keys give
    unrelated streams and no two images of a long run share one by accident. The three
    seeds differ: Python and numpy seeded with equal words would draw equal numbers.
    """
    digest = hashlib.blake2b(b"".join((k % 2**64).to_bytes(8, "little") for k in key), digest_size=24).digest()
    random.seed(int.from_bytes(digest[:8], "little"))
    np.random.seed(np.frombuffer(digest[8:16], dtype=np.uint32))  # both words: an int seed keeps only 32 bits
    value = int.from_bytes(digest[16:], "little")
    if cuda:
        torch.manual_seed(value)
    else:  # torch.manual_seed also queues a CUDA seeding, which costs ~1 ms: too slow per image
        torch.default_generator.manual_seed(value)


def seed_image(seed: int, key: SampleKey) -> None:
    """Before an image's augmentation (CPU only): the same draws whichever worker or run loads it."""
    seed_all(_IMAGE, seed, key.epoch, key.position, cuda=False)


def seed_step(seed: int, rank: int, step: int, micro: int) -> None:
    """Before a micro-batch's forward: the model-side draws of that step on that rank."""
    seed_all(_STEP, seed, rank, step, micro)
