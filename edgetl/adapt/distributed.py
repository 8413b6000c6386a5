"""Multi-process training under ``torchrun``: gloo on CPU, NCCL on GPU (one per rank); only rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from edgetl.adapt.device import Execution


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    execution: Execution = field(default_factory=Execution)  # this rank's device

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(execution: Execution | None = None) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else single process.
    ``execution``: this rank's device (``edgetl.adapt.device.resolve``); NCCL when it is a GPU."""
    execution = execution or Execution()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(execution=execution)
    import torch
    import torch.distributed as dist

    if execution.is_cuda:
        torch.cuda.set_device(execution.device)  # NCCL's collectives run on the current device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if execution.is_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), execution)


def wrap(d: Dist, model):
    """The model under DDP when there are several ranks (bound to this rank's GPU on CUDA)."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if d.execution.is_cuda:
        return DistributedDataParallel(model, device_ids=[int(d.execution.device.split(":")[1])])
    return DistributedDataParallel(model)


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
