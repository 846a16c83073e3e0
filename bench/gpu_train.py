"""The GPU check's training steps: a real short ``galmet train`` run, fast path against the
plain fp32 one, and ``galmet train`` under ``torchrun`` (DDP, NCCL on CUDA).

Both run ``galmet`` as a command, in child processes, on the sample in ``--data`` (a mock
sky made on the CPU and carried to the GPU machine: ``bench/gpu_check.sh prepare``).
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

from gpu_bench import attempt
from gpu_check import run_guarded, time_left

from galmet.model import Checkpoint

BENCH = Path(__file__).resolve().parent
#: Fast and plain test RMSEs agree when they differ by at most this (dex), or by twice the
#: difference that another seed makes on the plain path, whichever is larger.
RMSE_TOLERANCE_DEX = 0.01


def galmet_train(ctx: dict, name: str, extra: list[str]) -> dict:
    """``galmet train`` on the sample with the profile's options and ``extra``; its figures."""
    p = ctx["profile"]
    out = Path(ctx["work"]) / f"train_{name}.pt"
    cmd = [sys.executable, "-m", "galmet", "train", "--data", ctx["data"], "--out", str(out)]
    cmd += ["--device", ctx["device"], "--batch-size", str(p["train_batch"]), *p["train_args"]]
    cmd += extra
    rc, seconds = run_guarded(cmd, time_left(ctx))
    if rc != 0:
        raise RuntimeError(f"galmet train exited with {rc} (see the step's log): {cmd}")
    ck = Checkpoint.load(out)
    history = json.loads(out.with_name(out.name + ".metrics.json").read_text())
    unfrozen = [h for h in history if h["phase"] == "unfrozen"]
    frozen = [h for h in history if h["phase"] == "frozen"]
    results = ck.metrics["results"]
    tta = max(int(k.removeprefix("tta")) for k in results)
    return {
        "args": extra,
        "wall_s": round(seconds, 1),
        "train_s": round(ck.metrics["train_seconds"], 1),
        "epochs": len(history),
        "frozen_epoch_s": round(sum(h["seconds"] for h in frozen) / max(1, len(frozen)), 3),
        "epoch_s": round(sum(h["seconds"] for h in unfrozen) / max(1, len(unfrozen)), 3),
        "images_per_s": round(
            sum(h["images_per_second"] for h in unfrozen) / max(1, len(unfrozen)), 1
        ),
        "n_test": ck.metrics["n"],
        "tta": tta,
        "test_rmse_tta1": results["tta1"]["oh_p50"]["rmse"],
        "test_rmse": results[f"tta{tta}"]["oh_p50"]["rmse"],
    }


def speed_flags(ctx: dict, fast: bool) -> list[str]:
    """The fast path: ``galmet train``'s CUDA defaults (bf16, channels_last, fused optimiser,
    images on the GPU), switched on by hand on the CPU; the plain path: fp32, NCHW, images in
    host memory (the optimiser stays fused on CUDA: it has no switch)."""
    if fast:
        return ["--bf16", "--channels-last"] if ctx["device"] == "cpu" else []
    return ["--no-bf16", "--no-channels-last", "--data-on-device", "no"]


def train_run(ctx: dict, report) -> None:
    """Step 3: the paper's schedule on the sample, fast path and plain path, same seed; and
    the plain path with another seed, for the size of the noise."""
    runs: list = []
    report.data["runs"] = runs
    for name, fast, seed in (("fast", True, 0), ("plain", False, 0), ("plain_seed1", False, 1)):
        extra = speed_flags(ctx, fast) + ["--seed", str(seed)]
        attempt(report, runs, {"run": name, "seed": seed}, partial(galmet_train, ctx, name, extra))
    by_name = {r["run"]: r for r in runs if r["ok"]}
    if {"fast", "plain"} <= by_name.keys():
        fast, plain = by_name["fast"]["test_rmse"], by_name["plain"]["test_rmse"]
        seeds = by_name.get("plain_seed1", {}).get("test_rmse")
        noise = abs(plain - seeds) if seeds is not None else 0.0
        tolerance = max(RMSE_TOLERANCE_DEX, 2 * noise)
        report.data["agreement"] = {
            "fast_rmse": fast,
            "plain_rmse": plain,
            "difference_dex": abs(fast - plain),
            "seed_difference_dex": noise if seeds is not None else None,
            "tolerance_dex": tolerance,
            "pass": abs(fast - plain) <= tolerance,
            "speedup_per_epoch": round(by_name["plain"]["epoch_s"] / by_name["fast"]["epoch_s"], 2),
        }
    report.data["ok"] = all(r["ok"] for r in runs) and "agreement" in report.data
    report.save()


def ddp(ctx: dict, report) -> None:
    """Step 5: ``torchrun --nproc_per_node 1`` runs one short epoch of ``galmet train`` through
    its DDP path (``bench/gpu_ddp.py`` turns it on for one process) and writes a checkpoint."""
    p = ctx["profile"]
    work = Path(ctx["work"])
    out, probe = work / "ddp.pt", work / "ddp_probe.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    cmd += [str(BENCH / "gpu_ddp.py"), str(probe), "train", "--data", ctx["data"]]
    cmd += ["--out", str(out), "--device", ctx["device"], "--batch-size", str(p["train_batch"])]
    cmd += [*p["train_args"], "--frozen-epochs", "0", "--cycles", "1", "--tta", "1"]
    cmd += ["--max-steps", str(p["ddp_steps"])]
    rc, seconds = run_guarded(cmd, time_left(ctx))
    seen = json.loads(probe.read_text()) if probe.exists() else {}
    ck = Checkpoint.load(out) if out.exists() else None
    report.data |= {
        "rc": rc,
        "wall_s": round(seconds, 1),
        **seen,
        "checkpoint": ck is not None,
        "test_rmse": ck.metrics["results"]["tta1"]["oh_p50"]["rmse"] if ck else None,
    }
    if rc != 0:
        report.data["error"] = f"torchrun exited with {rc} (see the step's log)"
    report.data["ok"] = bool(rc == 0 and ck is not None and seen.get("ddp"))
    report.save()
