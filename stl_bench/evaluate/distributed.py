"""The few collective operations evaluation needs, as no-ops in a single process.

Under `torchrun` each process evaluates its own shard of the file list and the integer
counts are summed across processes: the same numbers as one process, with no padding
duplicates (torch's DistributedSampler pads the last shard by repeating samples).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class DistContext:
    """Rank, world size and the device collectives run on (CPU for gloo, CUDA for NCCL)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device | str = "cpu") -> "DistContext":
        """Join the process group `torchrun` describes in the environment, if any."""
        device = torch.device(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=torch.device("cpu"))
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            log.debug("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
        comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), device=comm)

    def shard(self, indices: Sequence[int]) -> list[int]:
        """Strided shard: rank r gets items r, r + W, r + 2W, ...; no item twice, none padded."""
        return list(indices[self.rank::self.world_size])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        t = tensor.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

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
