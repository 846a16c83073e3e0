"""Training throughput of the ResNet-34, the plain fp32 loop against ``galmet train``'s own.

    python bench/train_throughput.py [--device auto] [--size 128] [--batch-size 64]
        [--n 1024] [--steps 20] [--bf16/--no-bf16] [--channels-last/--no-channels-last]
        [--compile] [--data-on-device auto|yes|no]

Times full training steps (every layer trains; SGD with momentum on the three layer groups)
on N random uint8 images of ``--size`` px (the speed does not depend on what they show):

- ``plain``: the loop a first version would write: fp32, NCHW, an unfused optimiser, the
  batch gathered on the host and copied from pageable memory, each of the 8 D4 transforms
  applied by its own index operations, and the loss read back (``.item()``) every step;
- ``fast``: ``Trainer.run_epoch`` of ``galmet train`` itself, with the flags given (by
  default as ``galmet train`` sets them: bf16 autocast and channels_last on CUDA only,
  fused optimiser on CUDA, images on the GPU when they fit).

Both warm up for ``--warmup`` steps first (allocator, cuDNN/oneDNN algorithm choice and,
with ``--compile``, compilation). Peak memory is ``torch.cuda.max_memory_allocated`` per
row on CUDA, and the process's ``ru_maxrss`` (a high-water mark since start) on the CPU.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import time

import numpy as np
import torch

from galmet.d4 import N_D4, d4
from galmet.device import pick_device
from galmet.model import build_model
from galmet.preprocess import normalise
from galmet.training.config import TrainConfig
from galmet.training.dataset import GalaxyData, TargetScaler
from galmet.training.table import CatalogTable
from galmet.training.trainer import (
    GROUP_LR_RATIOS,
    Trainer,
    loss_fn,
    make_optimizer,
    make_scheduler,
    stage_images,
)


def random_data(n: int, size: int, seed: int = 0) -> GalaxyData:
    """N random uint8 images (N, 3, size, size) with a random metallicity each."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    targets = np.random.default_rng(seed).normal(9.0, 0.1, (n, 1))
    return GalaxyData(CatalogTable({"objID": np.arange(n)}), images, targets, ["oh_p50"])


def loop_d4(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random D4 per image, one transform at a time (each moving its indices to the device)."""
    ks = torch.randint(0, N_D4, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for k in range(N_D4):
        idx = (ks == k).nonzero().flatten().to(x.device)
        if len(idx):
            out[idx] = d4(x[idx], k)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    """Peak GPU memory of the row on CUDA; the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def plain(data: GalaxyData, device: torch.device, args: argparse.Namespace) -> float:
    """Seconds for ``--steps`` steps of the plain fp32 loop (after ``--warmup`` steps)."""
    torch.manual_seed(0)
    model = build_model(1).to(device).train()
    groups = model.layer_groups()
    opt = torch.optim.SGD(
        [{"params": p, "lr": 0.01 * r} for p, r in zip(groups, GROUP_LR_RATIOS, strict=True)],
        momentum=0.9,
        weight_decay=1e-4,
    )
    y = torch.from_numpy((data.targets - 9.0) / 0.1).float()
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data), generator=gen)

    def step(i: int) -> float:
        start = (i * args.batch_size) % (len(perm) - args.batch_size + 1)
        idx = perm[start : start + args.batch_size]
        x = normalise(loop_d4(data.images[idx].to(device), gen))
        mean, log_sigma = model(x)
        loss, _ = loss_fn(mean, log_sigma, y[idx].to(device), 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for i in range(args.warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync(device)
    return time.perf_counter() - start


def fast(data: GalaxyData, device: torch.device, args: argparse.Namespace) -> tuple[float, dict]:
    """Seconds for ``--steps`` steps of ``galmet train``'s loop (``Trainer.run_epoch``), and
    the settings it ran with."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as galmet train sets it
    cfg = TrainConfig(
        data="",
        out="",
        batch_size=args.batch_size,
        bf16=args.bf16,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_backend=args.compile_backend,
        data_on_device=args.data_on_device,
    )
    staged = GalaxyData(
        data.catalog,
        stage_images(data.images, device, args.data_on_device),
        data.targets,
        data.target_names,
    )
    rows = np.arange(len(data))
    valid = rows[: args.batch_size]  # validation is not timed; keep it short
    scaler = TargetScaler.fit(["oh_p50"], data.targets)
    torch.manual_seed(0)
    trainer = Trainer(cfg, staged, scaler, rows, valid, device)
    lrs = [cfg.head_lr() * r for r in GROUP_LR_RATIOS]
    opt = make_optimizer(trainer.model.layer_groups(), lrs, cfg, device)
    sched = make_scheduler(opt, args.warmup + args.steps, 1, 1, 1)
    with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch line
        trainer.steps_per_epoch = args.warmup
        if args.warmup:
            trainer.run_epoch(0, opt, sched, "warm-up")
        trainer.steps_per_epoch = args.steps
        # run_epoch's seconds end after its one read-back of the loss: the GPU is done.
        record = trainer.run_epoch(1, opt, sched, "timed")
    settings = {
        "bf16": trainer.bf16,
        "channels_last": trainer.channels_last,
        "compile": cfg.compile,
        "data_on_device": trainer.images_on_device,
        "fused_optimizer": device.type == "cuda",
    }
    return record["seconds"], settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (128)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=1024, help="images in memory (1024)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    flag = argparse.BooleanOptionalAction
    parser.add_argument("--bf16", action=flag, help="fast path: bf16 (default: CUDA only)")
    parser.add_argument("--channels-last", action=flag, help="fast path (default: CUDA only)")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--data-on-device", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--baseline", action=flag, default=True, help="time the plain loop")
    args = parser.parse_args()
    if args.n < args.batch_size:
        parser.error("--n must be at least --batch-size")

    device = pick_device(args.device)
    data = random_data(args.n, args.size)
    modes = (["plain"] if args.baseline else []) + ["fast"]
    rows = []
    for mode in modes:
        reset_peak(device)
        if mode == "fast":
            seconds, settings = fast(data, device, args)
        else:
            seconds = plain(data, device, args)
            settings = {
                "bf16": False,
                "channels_last": False,
                "compile": False,
                "data_on_device": device.type == "cpu",
                "fused_optimizer": False,
            }
        images = args.steps * args.batch_size
        rows.append(
            {
                "mode": mode,
                "steps": args.steps,
                "seconds": round(seconds, 3),
                "images_per_s": round(images / seconds, 1),
                "ms_per_step": round(1000 * seconds / args.steps, 1),
                "peak_mem_mb": round(peak_mb(device), 1),
                **settings,
            }
        )
        r = rows[-1]
        on = [k for k in ("bf16", "channels_last", "compile", "data_on_device") if r[k]]
        print(
            f"{mode:6s} {args.steps:4d} steps  {r['seconds']:8.2f} s  "
            f"{r['images_per_s']:8.1f} img/s  {r['ms_per_step']:8.1f} ms/step  "
            f"peak {r['peak_mem_mb']:8.1f} MiB  {', '.join(on) or 'fp32'}",
            flush=True,
        )
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "size": args.size,
        "batch_size": args.batch_size,
        "n": args.n,
        "peak_mem": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "ru_maxrss (process high-water mark)",
        "results": rows,
    }
    if len(rows) == 2:
        info["speedup"] = round(rows[1]["images_per_s"] / rows[0]["images_per_s"], 2)
        print(f"fast / plain: {info['speedup']:.2f}x")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
