"""Multi-process training under ``torchrun``: gloo on CPU, NCCL on GPU; only rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def teardown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def gather_rows(d: Dist, array):
    """Concatenate each rank's numpy rows, in rank order, on every rank."""
    if not d.enabled:
        return array
    import numpy as np
    import torch.distributed as dist

    parts = [None] * d.world
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def shard(d: Dist, n: int) -> slice:
    """Contiguous shard of ``range(n)`` for this rank (so gathered rows keep their order)."""
    per = -(-n // d.world)
    return slice(d.rank * per, min(n, (d.rank + 1) * per))
