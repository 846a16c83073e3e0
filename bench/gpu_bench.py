"""The GPU check's timed steps: training throughput and inference from JPEG bytes.

``bench/gpu_check.py`` runs each step in a process of its own; a step fills ``report.data``
and saves it after every row, so that a row that fails (or a step that runs out of time)
still leaves the rows before it. Sizes come from the check's profile (``PROFILES`` in
gpu_check.py): full on a GPU, tiny for the CPU dry run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import traceback
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import train_throughput as tt  # bench/ is on the path: gpu_check.py runs from there

from galmet.model import Checkpoint, build_model
from galmet.predictor import Predictor
from galmet.preprocess import decode_batch
from galmet.training.config import TrainConfig
from galmet.training.dataset import GalaxyData, TargetScaler
from galmet.training.table import CatalogTable
from galmet.training.trainer import (
    DATA_ON_DEVICE_FRACTION,
    GROUP_LR_RATIOS,
    Trainer,
    make_optimizer,
    make_scheduler,
)

#: Predictions on the device may differ from the CPU path's by at most this (dex).
AGREEMENT_DEX = 0.005


def attempt(report, rows: list, label: dict, fn) -> dict:
    """Run one row: its figures, or ``ok: false`` with the error; saved either way."""
    start = time.perf_counter()
    try:
        row = {**label, "ok": True, **fn()}
    except Exception as exc:  # one failing row is reported; the next rows still run
        row = {**label, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        row["traceback"] = traceback.format_exc().splitlines()[-8:]
    row["wall_s"] = round(time.perf_counter() - start, 2)
    rows.append(row)
    report.save()
    return row


def speed_args(ctx: dict, batch: int, compile_: bool = False) -> argparse.Namespace:
    """``bench/train_throughput.py``'s options for one row.

    On CUDA the fast path's flags are left to ``galmet train``'s defaults (bf16,
    channels_last, fused optimiser and images on the GPU all on); on the CPU bf16 and
    channels_last are switched on, so that the dry run goes through the same code.
    """
    cpu = ctx["device"] == "cpu"
    p = ctx["profile"]
    return argparse.Namespace(
        batch_size=batch,
        steps=p["steps"],
        warmup=p["warmup"],
        bf16=True if cpu else None,
        channels_last=True if cpu else None,
        compile=compile_,
        compile_backend="aot_eager" if cpu else "inductor",
        data_on_device="auto",
    )


def throughput_row(ctx: dict, device: torch.device, data: GalaxyData, mode: str, batch: int):
    """Images/s and peak memory of ``--steps`` training steps after ``--warmup``."""
    args = speed_args(ctx, batch, compile_=mode == "compile")
    tt.reset_peak(device)
    start = time.perf_counter()
    if mode == "plain":
        seconds = tt.plain(data, device, args)
        settings = {"bf16": False, "channels_last": False, "compile": False}
    else:
        seconds, settings = tt.fast(data, device, args)
    tt.sync(device)
    return {
        "images_per_s": round(args.steps * batch / seconds, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "timed_s": round(seconds, 3),
        # Warm-up, cuDNN's algorithm search and (compile) compilation, outside the timing.
        "setup_s": round(time.perf_counter() - start - seconds, 2),
        "peak_mem_mb": round(tt.peak_mb(device), 1),
        **settings,
        **({"compile_backend": args.compile_backend} if mode == "compile" else {}),
    }


def dataset_row(ctx: dict, device: torch.device) -> dict:
    """A full-size dataset (130,000 cutouts) held on the device: its memory, and the fast
    path's speed and peak memory with it there."""
    p = ctx["profile"]
    n, size, batch = p["dataset_n"], p["size"], max(p["batches"])
    shape = (n, 3, size, size)
    nbytes = int(np.prod(shape))
    out: dict = {"n": n, "size": size, "dataset_gb": round(nbytes / 1e9, 3)}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        out["free_gb_before"] = round(free / 1e9, 2)
        out["auto_puts_it_on_device"] = nbytes <= DATA_ON_DEVICE_FRACTION * free
        before = torch.cuda.memory_allocated(device)
    # Random pixels, drawn where they will live (zeros could run faster than real data), a
    # slice at a time (one kernel over 6.4e9 elements would need 64-bit indexing).
    images = torch.empty(shape, dtype=torch.uint8, device=device)
    for part in images.split(8192):
        part.random_(0, 256)
    if device.type == "cuda":
        out["held_gb"] = round((torch.cuda.memory_allocated(device) - before) / 1e9, 3)
    targets = np.random.default_rng(0).normal(9.0, 0.1, (n, 1))
    data = GalaxyData(CatalogTable({"objID": np.arange(n)}), images, targets, ["oh_p50"])
    args = speed_args(ctx, batch)
    args.data_on_device = "yes"
    tt.reset_peak(device)
    seconds, settings = tt.fast(data, device, args)
    out |= {
        "batch": batch,
        "images_per_s": round(args.steps * batch / seconds, 1),
        "peak_mem_mb": round(tt.peak_mb(device), 1),
        "data_on_device": settings["data_on_device"],
    }
    return out


def sync_row(ctx: dict, device: torch.device, data: GalaxyData) -> dict:
    """Host-device synchronisations in ``galmet train``'s epoch at two step counts: equal
    counts mean none per step (``torch.cuda.set_sync_debug_mode("warn")`` reports each)."""
    if device.type != "cuda":
        return {"skipped": "needs CUDA (set_sync_debug_mode watches CUDA streams)"}
    batch = min(ctx["profile"]["batches"])
    cfg = TrainConfig(data="", out="", batch_size=batch)
    rows = np.arange(len(data))
    scaler = TargetScaler.fit(["oh_p50"], data.targets)
    staged = GalaxyData(data.catalog, data.images.to(device), data.targets, data.target_names)
    trainer = Trainer(cfg, staged, scaler, rows, rows[:batch], device)
    lrs = [cfg.head_lr() * r for r in GROUP_LR_RATIOS]
    opt = make_optimizer(trainer.model.layer_groups(), lrs, cfg, device)
    sched = make_scheduler(opt, 100, 1, 1, 1)
    counts = {}
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.steps_per_epoch = 2
        trainer.run_epoch(0, opt, sched, "warm-up")
        for steps in (4, 12):
            trainer.steps_per_epoch = steps
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    trainer.run_epoch(1, opt, sched, "timed")
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            counts[steps] = sum("synchroniz" in str(w.message) for w in seen)
    return {
        "syncs_at_4_steps": counts[4],
        "syncs_at_12_steps": counts[12],
        "none_per_step": counts[4] == counts[12],
    }


def train_throughput(ctx: dict, report) -> None:
    """Step 2: the plain fp32 loop against the fast path (and compiled), synthetic images."""
    device = torch.device(ctx["device"])
    p = ctx["profile"]
    n = max(p["batches"]) * max(p["steps"], p["warmup"])  # whole batches only
    data = tt.random_data(n, p["size"])
    rows: list = []
    report.data |= {"size": p["size"], "n": n, "rows": rows}
    for batch in p["batches"]:
        for mode in ("plain", "fast"):
            row = partial(throughput_row, ctx, device, data, mode, batch)
            attempt(report, rows, {"mode": mode, "batch": batch}, row)
    report.data["sync"] = sync_check = []
    attempt(report, sync_check, {"check": "syncs"}, partial(sync_row, ctx, device, data))
    report.data["dataset"] = dataset = []
    attempt(report, dataset, {"check": "dataset on device"}, partial(dataset_row, ctx, device))
    # Compilation last: the slowest row, so a timeout leaves every other figure.
    batch = max(p["batches"])
    row = partial(throughput_row, ctx, device, data, "compile", batch)
    attempt(report, rows, {"mode": "compile", "batch": batch}, row)
    report.data["ok"] = all(r["ok"] for r in rows + sync_check + dataset)


# ------------------------------------------------------------------------------ inference
def jpegs(data_dir: Path, n: int, distinct: int = 4096) -> list[bytes]:
    """``n`` JPEGs: the sample's cutouts (up to ``distinct`` files), repeated."""
    files = sorted((data_dir / "images").glob("*.jpg"))[:distinct]
    if not files:
        raise FileNotFoundError(f"no images/*.jpg in {data_dir}")
    raw = [f.read_bytes() for f in files]
    return [raw[i % len(raw)] for i in range(n)]


def checkpoint_for(ctx: dict) -> tuple[Checkpoint, str]:
    """The fast model of the training step, or a random one at the sample's size."""
    model = Path(ctx["work"]) / "train_fast.pt"
    if model.exists():
        return Checkpoint.load(model), str(model)
    torch.manual_seed(0)
    size = ctx["profile"]["infer_size"]
    net = build_model(1)
    return Checkpoint(["oh_p50"], [9.0], [0.1], size, "gri", [net.state_dict()]), "random"


def timed_predictions(device: torch.device, fn, chunks: list[list[bytes]]) -> dict:
    """Images/s and peak memory of ``fn`` over ``chunks`` (the first once more, untimed)."""
    fn(chunks[0])  # warm-up: cuDNN's algorithms, nvJPEG's handles, lazy imports
    tt.sync(device)
    tt.reset_peak(device)
    start = time.perf_counter()
    for chunk in chunks:
        fn(chunk)  # returns NumPy arrays: the GPU has finished each chunk
    seconds = time.perf_counter() - start
    n = sum(len(c) for c in chunks)
    return {
        "n": n,
        "images_per_s": round(n / seconds, 1),
        "ms_per_image": round(1000 * seconds / n, 4),
        "peak_mem_mb": round(tt.peak_mb(device), 1),
    }


def inference(ctx: dict, report) -> None:
    """Step 4: JPEG bytes to predictions, TTA 1 and 8, batched; GPU decoding (nvJPEG)
    against Pillow; agreement with the CPU path on the same images."""
    device = torch.device(ctx["device"])
    p = ctx["profile"]
    ck, source = checkpoint_for(ctx)
    predictor = Predictor(ck, device)
    cpu = Predictor(ck, "cpu") if device.type == "cuda" else predictor
    size = predictor.input_size
    data_dir = Path(ctx["data"])
    batch = p["infer_batch"]
    rows: list = []
    agreement: list = []
    report.data |= {"model": source, "input_size": size, "batch": batch, "rows": rows}
    report.data["agreement"] = agreement

    def speed(decode: str, tta: int, n: int) -> dict:
        data = jpegs(data_dir, n)
        chunks = [data[i : i + batch] for i in range(0, n, batch)]
        if decode == "nvjpeg":
            return timed_predictions(device, partial(predictor.predict_bytes, tta=tta), chunks)
        # Pillow on the CPU (decode_image per image), then the model on the device.
        return timed_predictions(
            device, lambda c: predictor.predict_images(decode_batch(c, size, "cpu"), tta), chunks
        )

    def agree(tta: int) -> dict:
        same = jpegs(data_dir, p["agree_n"], distinct=p["agree_n"])
        want = cpu.predict_bytes(same, tta).mean
        got = predictor.predict_bytes(same, tta).mean  # nvJPEG and bf16 on CUDA
        pillow_pixels = predictor.predict_images(decode_batch(same, size, "cpu"), tta).mean
        diff = np.abs(got - want)
        return {
            "n": len(same),
            "max_abs_dex": float(diff.max()),
            "p99_abs_dex": float(np.quantile(diff, 0.99)),
            # The same from Pillow's pixels: the part that the model's bf16 accounts for.
            "max_abs_dex_pillow_pixels": float(np.abs(pillow_pixels - want).max()),
            "tolerance_dex": AGREEMENT_DEX,
            "pass": bool(diff.max() <= AGREEMENT_DEX),
        }

    for tta in (1, 8):
        n = p["infer_n"] if tta == 1 else max(batch, p["infer_n"] // 4)
        if device.type == "cuda":
            attempt(
                report, rows, {"decode": "nvjpeg", "tta": tta}, partial(speed, "nvjpeg", tta, n)
            )
        n_pillow = min(n, p["infer_pillow_n"])
        attempt(
            report, rows, {"decode": "pillow", "tta": tta}, partial(speed, "pillow", tta, n_pillow)
        )
    for tta in (1, 8):
        attempt(report, agreement, {"tta": tta}, partial(agree, tta))
    report.data["ok"] = all(r["ok"] for r in rows + agreement)
