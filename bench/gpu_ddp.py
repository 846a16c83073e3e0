"""``galmet train`` under torchrun with its DDP path on, even for one process; watched.

    python -m torch.distributed.run --standalone --nproc_per_node 1 bench/gpu_ddp.py \\
        PROBE.json train --data ... --out ...

``galmet train`` trains alone when torchrun starts one process (a world of one needs no
process group). A machine with one GPU can still prove the distributed path: this runs
``galmet.cli.main`` with the arguments after PROBE.json, exactly as ``-m galmet`` would, but
with every process counted as distributed, so that it joins the process group (NCCL on
CUDA, Gloo on the CPU), wraps the model in DistributedDataParallel and all-reduces. It
writes PROBE.json: the backend, the world size, the device and the module that trained.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from galmet.cli import main as galmet
from galmet.training import distributed
from galmet.training.trainer import Trainer


class AlwaysDistributed(distributed.DistInfo):
    """A rank that joins the process group even in a world of one."""

    @property
    def enabled(self) -> bool:
        return True


def run() -> int:
    probe, argv = Path(sys.argv[1]), sys.argv[2:]
    info = AlwaysDistributed(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
    )
    seen: dict = {}
    real_init, real_forward = distributed.init, Trainer.forward_module

    def init(dist_info, device):
        device = real_init(dist_info, device)
        seen.update(backend=dist.get_backend(), world_size=dist.get_world_size())
        seen["device"] = str(device)
        return device

    def forward_module(self):
        module = real_forward(self)
        seen["ddp"] = type(module).__name__ == "DistributedDataParallel"
        return module

    distributed.from_environment = lambda: info
    distributed.init = init
    Trainer.forward_module = forward_module
    rc = galmet(argv)
    probe.write_text(json.dumps(seen | {"rc": rc}) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(run())
