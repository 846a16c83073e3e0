"""``galmet train`` under torchrun: two CPU processes (Gloo) on a tiny mock sky."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from galmet.model import Checkpoint
from galmet.predictor import Predictor
from galmet.training.dataset import split_indices
from galmet.training.distributed import DistInfo, from_environment, local_batch
from galmet.training.simulate import simulate
from tests.ddp_probe import state_hash

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mock64(tmp_path_factory) -> Path:
    """64 mock galaxies with 64 px images (``galmet simulate --n 64 --size 64``; 64 px is
    SkyServer's smallest cutout), trained at 32 px."""
    out = tmp_path_factory.mktemp("mock64")
    simulate(64, out, seed=4, size=64, workers=1)
    return out


def test_ranks_take_disjoint_shares_that_make_up_the_global_batch():
    perm = np.random.default_rng(0).permutation(100)
    for world in (1, 2, 4):
        for step in range(100 // 8):
            shares = [perm[local_batch(step, 8, 100, DistInfo(r, world, r))] for r in range(world)]
            assert all(len(s) == 8 // world for s in shares)
            assert np.array_equal(np.concatenate(shares), perm[step * 8 : (step + 1) * 8])


def test_without_torchrun_it_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = from_environment()
    assert (info.rank, info.world_size, info.enabled, info.is_main) == (0, 1, False, True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == DistInfo(rank=3, world_size=4, local_rank=1)


def test_torchrun_two_cpu_processes_train_one_model_in_sync(mock64, tmp_path):
    out = tmp_path / "ddp.pt"
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "tests.ddp_probe",
        str(probe),
        "train",
        "--data",
        str(mock64),
        "--size",
        "32",
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--frozen-epochs",
        "1",
        "--cycles",
        "1",
        "--tta",
        "1",
        "--device",
        "cpu",
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Rank 0 alone prints the summary and writes.
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("galaxies (") == 1
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert "checkpoint" in ranks[0]["writes"] and "metrics" in ranks[0]["writes"]
    assert ranks[1]["writes"] == []

    # Each rank trained on its own half of every batch; together, whole batches of 8.
    train_rows = set(split_indices(64)["train"].tolist())
    assert set(ranks[0]["fits"][0]["train_rows"]) == train_rows
    epochs = sorted({e for e, _ in ranks[0]["batches"]})
    assert epochs == [0, 1]
    for epoch in epochs:
        seen = [[row for e, rows in r["batches"] if e == epoch for row in rows] for r in ranks]
        assert len(seen[0]) == len(seen[1]) == (len(train_rows) // 8) * 4
        assert not set(seen[0]) & set(seen[1]), "the ranks' shares overlap"
        assert len(set(seen[0]) | set(seen[1])) == len(seen[0]) * 2
        assert set(seen[0]) | set(seen[1]) <= train_rows

    # DDP kept the weights (and the averaged BatchNorm statistics) equal on both ranks.
    assert ranks[0]["fits"][0]["final"] == ranks[1]["fits"][0]["final"]
    assert ranks[0]["fits"][0]["best"] == ranks[1]["fits"][0]["best"]
    ck = Checkpoint.load(out)
    assert state_hash(ck.model_states[0]) == ranks[0]["fits"][0]["best"]
    assert ck.config["world_size"] == 2 and ck.config["batch_size"] == 8
    assert set(ck.sigma_scale) == {1, 2, 4, 8} and ck.metrics["n"] > 0
    history = json.loads(out.with_name("ddp.pt.metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    pred = Predictor(ck).predict_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert np.all(np.isfinite(pred.mean))
