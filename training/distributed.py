"""Data-parallel training under ``torchrun``: which process this is, and the few collectives.

``torchrun --nproc_per_node G -m galmet.cli train ...`` starts G copies of ``galmet train``
with RANK, WORLD_SIZE and LOCAL_RANK in their environment. Each copy joins one process
group (NCCL on CUDA, Gloo on the CPU), trains its share of every batch under
DistributedDataParallel, and only rank 0 writes files or prints. Without those variables
this is one process of one, and nothing here talks to anyone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from galmet.errors import GalmetError

# Rank 0 alone calibrates sigma and measures the test split after training while the others
# wait at the final barrier; the default timeout could end a long run there.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and figures, and prints."""
        return self.rank == 0


def from_environment() -> DistInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; one process when unset."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )


def init(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, Gloo on the CPU); returns this rank's device.

    On CUDA each process takes GPU ``LOCAL_RANK`` of its node.
    """
    if not info.enabled:
        return device
    if device.type == "cuda":
        check_gpu_count(info, torch.cuda.device_count())
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=info.rank,
            world_size=info.world_size,
            timeout=TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
    return device


def check_gpu_count(info: DistInfo, gpus: int) -> None:
    """Refuse, in one line, more processes on this machine than it has GPUs (each process
    takes GPU ``LOCAL_RANK``; beyond the last one CUDA fails deep inside with "invalid device
    ordinal")."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.local_rank + 1))
    if max(local, info.local_rank + 1) > gpus:
        raise GalmetError(
            f"torchrun started {max(local, info.local_rank + 1)} processes on this machine but "
            f"it has {gpus} CUDA GPU{'s' if gpus != 1 else ''}: use --nproc_per_node {gpus} "
            "or fewer (one process per GPU)"
        )


def shutdown(info: DistInfo) -> None:
    """Wait for every rank, then leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave(info: DistInfo) -> None:
    """Leave the process group without waiting for the other ranks."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def local_batch(step: int, global_batch: int, n_rows: int, info: DistInfo) -> slice:
    """Where in the epoch's permutation this rank's part of batch ``step`` lies.

    The global batch ``step`` is ``perm[step * B : (step + 1) * B]`` whatever the world
    size, and rank r takes its r-th contiguous share: the ranks' shares are disjoint, and
    together they are the batch one process would have used (the order of the data does
    not depend on the number of GPUs).
    """
    per_rank = global_batch // info.world_size
    start = (step * global_batch) % n_rows + info.rank * per_rank
    return slice(start, start + per_rank)


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``x`` over the ranks (in place), or ``x`` itself when alone."""
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average BatchNorm running statistics over the ranks.

    DDP gives every rank rank 0's buffers at the start of each forward pass, and each
    rank's own batch then moves them a little: after the last step they differ. Averaging
    makes validation the same on every rank and the saved statistics see all shards.
    """
    if not info.enabled:
        return
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(info.world_size)
