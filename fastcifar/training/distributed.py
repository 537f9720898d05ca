"""Multi-process training helpers: torchrun detection, process group, metric reduction.

``torchrun --nproc_per_node=N -m fastcifar.train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them training runs as one process and every helper here is a no-op.
NCCL is used when the device is CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints summaries and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables describe a job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun; return a single-process context otherwise.

    ``device_type`` is ``"cuda"`` or ``"cpu"``; it picks the backend (NCCL or gloo) and, on CUDA,
    binds this process to the GPU ``LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return DistContext()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (safe to call twice or in a single-process run)."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``values`` (any shape, float64 recommended for counts) over all ranks, in place."""
    if ctx.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank before evaluation.

    DDP broadcasts buffers at the start of each training forward, so after the last step ranks
    differ by one local update; evaluating with rank 0's statistics everywhere makes the reduced
    test metrics exactly those of the checkpointed model.
    """
    if not ctx.is_distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
