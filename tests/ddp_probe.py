"""``galmet train`` under torchrun, watched: what each rank trained on, wrote and ended with.

    python -m torch.distributed.run --nproc_per_node 2 --standalone -m tests.ddp_probe \\
        OUT_DIR train --data ... --out ...

Runs ``galmet.cli.main`` with the arguments after OUT_DIR, exactly as ``-m galmet.cli``
would, with thin wrappers that record (without changing anything) the rows of every
training batch, every checkpoint / metrics / figure write, and a hash of the weights when
each fit ends. Writes OUT_DIR/rank{RANK}.json for tests/test_ddp.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from galmet.cli import main as galmet
from galmet.model import Checkpoint
from galmet.training import train as train_module
from galmet.training.trainer import Trainer


def state_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def run() -> int:
    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ["RANK"])
    record: dict = {"rank": rank, "batches": [], "writes": [], "fits": []}
    trainer = Trainer
    real_batch, real_run_epoch, real_fit = trainer._batch, trainer.run_epoch, trainer.fit
    epoch_now = {"epoch": -1}

    def run_epoch(self, epoch, *args, **kwargs):
        epoch_now["epoch"] = epoch
        return real_run_epoch(self, epoch, *args, **kwargs)

    def batch(self, rows, rows_dev):
        record["batches"].append([epoch_now["epoch"], rows.tolist()])
        return real_batch(self, rows, rows_dev)

    def fit(self, *args, **kwargs):
        best = real_fit(self, *args, **kwargs)
        record["fits"].append(
            {
                "final": state_hash(self.model.state_dict()),
                "best": state_hash(best["state"]),
                "train_rows": self.train_rows.tolist(),
            }
        )
        return best

    def watched(name, real):
        def wrapper(*args, **kwargs):
            record["writes"].append(name)
            return real(*args, **kwargs)

        return wrapper

    trainer.run_epoch, trainer._batch, trainer.fit = run_epoch, batch, fit
    Checkpoint.save = watched("checkpoint", Checkpoint.save)
    train_module.write_history = watched("metrics", train_module.write_history)
    train_module.plot_history = watched("figure", train_module.plot_history)
    code = galmet(argv)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    return code


if __name__ == "__main__":
    raise SystemExit(run())
