"""Where a process runs: its device and, under `torchrun`, its place in the process group.

The trainer and the evaluation harness share this one context. Under `torchrun`
(RANK, WORLD_SIZE, LOCAL_RANK in the environment) each process joins the group with
NCCL on GPUs or gloo on CPU, so the same code path runs (and is tested) with two CPU
processes here. Evaluation shards without padding and sums integer counts: the same
numbers as one process, with no duplicates (torch's DistributedSampler pads the last
shard by repeating samples).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(name: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """A `--device` value ("auto", "cpu", "cuda", "cuda:1") as a torch device, or one clear error.

    "auto" (or None) is the GPU when torch sees one. A bare "cuda" under torchrun means
    this process's own GPU (LOCAL_RANK), so ranks never share one.
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise StlBenchError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1): {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StlBenchError(f"--device {name} asked for CUDA, but torch sees no GPU here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


@dataclass
class DistContext:
    """Rank, world size and the device this process computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collectives run: the GPU for NCCL, the CPU for gloo."""
        if self.world_size > 1 and dist.is_initialized() and dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    @classmethod
    def from_env(cls, device: torch.device | str | None = "auto") -> "DistContext":
        """This process's context: a single process, or its place in the group `torchrun` describes."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device if isinstance(device, str) or device is None else str(device), local_rank)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            log.debug("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)

    def shard(self, indices: Sequence[int]) -> list[int]:
        """Strided shard: rank r gets items r, r + W, r + 2W, ...; no item twice, none padded."""
        return list(indices[self.rank::self.world_size])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        t = tensor.to(self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def broadcast(self, obj: T) -> T:
        """Rank 0's value on every rank (for decisions that must agree, like which cells to run)."""
        if self.world_size == 1:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (a no-op for a single process)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
