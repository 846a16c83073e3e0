"""Inference throughput, JPEG bytes to predictions, batched vs one image at a time.

    python bench/infer_throughput.py [--device cpu] [--batch-size 64] [--n 256] [--size 128]

Renders a few mock-sky cutouts (128 px at 0.296″/px, as the service fetches them), repeats
them to N JPEGs, and times three ways of predicting them at each TTA level (1, 2, 4, 8 by
default), on the predictor as it was before the CPU fixes (``before``: float32, NCHW, a whole
batch of images × TTA copies in one forward pass; ``--no-before`` skips it) and as it is: on
the CPU in float32 (``fp32``: a model without a passed bf16 check) and, on a CPU with native
bf16, in bf16 (``bf16``: a model whose check passed); on CUDA as it is (``after``):

- ``naive``: the loop a first version would write: decode one, predict one;
- ``batched``: one ``Predictor.predict_bytes`` call per ``--batch-size`` JPEGs, which
  decodes the batch with ``decode_batch``: on CUDA with nvJPEG on the GPU, on the CPU with
  ``decode_image`` per image;
- ``engine``: N concurrent one-image ``InferenceEngine.predict`` calls, micro-batched.

Every image is decoded (and resized to the model's input) inside the timing; ``naive``
and ``engine`` use ``decode_image`` on the CPU, as the service does. The model has random
weights (the speed does not depend on them) unless ``--model PATH`` is given. Peak memory
is ``torch.cuda.max_memory_allocated`` per row on CUDA, and the process's ``ru_maxrss``
(a high-water mark since start, not per row) on the CPU. Prints a table, then one JSON
line. The side-by-side table gives images/s one at a time, batched and through the engine,
and batched / one-at-a-time, per TTA level, before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time

import torch

from galmet.device import pick_device
from galmet.engine import InferenceEngine
from galmet.images import decode_image
from galmet.model import Checkpoint, GalmetNet
from galmet.predictor import CPU_VIEWS_PER_PASS, Predictor, native_bf16
from galmet.training.mocksky import MockSky


def random_checkpoint(size: int) -> Checkpoint:
    torch.manual_seed(0)
    net = GalmetNet(1)
    return Checkpoint(["oh_p50"], [9.0], [0.1], size, "gri", [net.state_dict()])


class BeforePredictor(Predictor):
    """The predictor as it was before the CPU fixes: float32 and NCHW on the CPU, and the
    whole batch (images × TTA copies) in one forward pass."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device) -> None:
        super().__init__(checkpoint, device, bf16=device.type == "cuda")
        if device.type != "cuda":
            self.memory_format = torch.contiguous_format
            self.nets = [n.to(memory_format=self.memory_format) for n in self.nets]

    def _images_per_pass(self, tta: int, batch_size: int) -> int:
        return batch_size


def mock_jpegs(n: int, distinct: int = 16) -> list[bytes]:
    sky = MockSky(distinct, seed=0)
    cat = sky.catalog()
    cutouts = [sky.cutout_jpeg(float(r["ra"]), float(r["dec"]), 0.296, 128, 128) for r in cat]
    return [cutouts[i % len(cutouts)] for i in range(n)]


def naive(predictor: Predictor, jpegs: list[bytes], tta: int) -> None:
    for data in jpegs:
        predictor.predict_arrays([decode_image(data, predictor.input_size)], tta)


def batched(predictor: Predictor, jpegs: list[bytes], tta: int, batch_size: int) -> None:
    for start in range(0, len(jpegs), batch_size):
        predictor.predict_bytes(jpegs[start : start + batch_size], tta)


def engine(predictor: Predictor, jpegs: list[bytes], tta: int, batch_size: int) -> float:
    """Runs the engine path; returns its mean batch size."""

    async def main() -> float:
        async with InferenceEngine(predictor, batch_size, batch_wait_ms=5) as eng:

            async def one(data: bytes) -> None:
                await eng.predict([decode_image(data, predictor.input_size)], tta)

            await asyncio.gather(*(one(d) for d in jpegs))
            return eng.stats.mean_batch_size

    return asyncio.run(main())


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    """Peak GPU memory since ``reset_peak`` on CUDA; the process's peak resident memory on
    the CPU (Linux reports ru_maxrss in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


MODES = ("naive", "batched", "engine")


def run_modes(predictor: Predictor, jpegs: list[bytes], tta: int, args) -> list[dict]:
    """One row per mode (naive, batched, engine) at this TTA level."""
    device = predictor.device
    rows = []
    for mode in MODES:
        n = min(args.naive_n, args.n) if mode == "naive" else args.n
        reset_peak(device)
        if mode == "naive":
            seconds, _ = timed(naive, predictor, jpegs[:n], tta)
            mean_batch = 1.0
        elif mode == "batched":
            seconds, _ = timed(batched, predictor, jpegs[:n], tta, args.batch_size)
            mean_batch = min(n, args.batch_size)
        else:
            seconds, mean_batch = timed(engine, predictor, jpegs[:n], tta, args.batch_size)
        rows.append(
            {
                "mode": mode,
                "tta": tta,
                "n": n,
                "seconds": round(seconds, 3),
                "images_per_s": round(n / seconds, 1),
                "ms_per_image": round(1000 * seconds / n, 2),
                "mean_batch": round(float(mean_batch), 1),
                "peak_mem_mb": round(peak_mb(device), 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=256, help="images per batched run")
    parser.add_argument("--naive-n", type=int, default=32, help="images for the slow loop")
    parser.add_argument("--size", type=int, default=128, help="model input size (random model)")
    parser.add_argument("--model", help="checkpoint to time instead of a random model")
    parser.add_argument("--tta", default="1,2,4,8", help="TTA levels, comma-separated")
    parser.add_argument("--no-before", action="store_true", help="skip the old path")
    args = parser.parse_args()

    device = pick_device(args.device)
    ck = Checkpoint.load(args.model) if args.model else random_checkpoint(args.size)
    paths = {} if args.no_before else {"before": BeforePredictor(ck, device)}
    if device.type == "cuda":
        paths["after"] = Predictor(ck, device)
    else:
        # float32: what a model gets whose bf16 check failed or is missing (the random
        # model); bf16: a model whose check passed, on a CPU with native bf16.
        paths["fp32"] = Predictor(ck, device, bf16=False)
        if native_bf16(device):
            paths["bf16"] = Predictor(ck, device, bf16=True)
    levels = [int(t) for t in args.tta.split(",")]
    jpegs = mock_jpegs(args.n)
    results: dict[str, list[dict]] = {}
    for name, predictor in paths.items():
        # Warm up: allocator, cuDNN/oneDNN algorithm choice, lazy imports.
        batched(predictor, jpegs[: args.batch_size], max(levels), args.batch_size)
        naive(predictor, jpegs[:2], 1)
        results[name] = []
        for tta in levels:
            results[name] += run_modes(predictor, jpegs, tta, args)
            for r in results[name][-len(MODES) :]:
                print(
                    f"{name:6s} {r['mode']:8s} tta {tta}  {r['n']:5d} img  {r['seconds']:8.2f} s  "
                    f"{r['images_per_s']:8.1f} img/s  {r['ms_per_image']:8.2f} ms/img  "
                    f"batch {r['mean_batch']:5.1f}  peak {r['peak_mem_mb']:8.1f} MiB",
                    flush=True,
                )

    print()
    print(
        "images/s, JPEG bytes to predictions (one = one image at a time; batched = "
        f"batches of {args.batch_size}; ratio = batched / one)"
    )
    header = f"{'TTA':>3s}"
    for name in results:
        header += f" | {name + ':':7s}{'one':>7s} {'batched':>8s} {'engine':>7s} {'ratio':>6s}"
    print(header)
    for i, tta in enumerate(levels):
        line = f"{tta:3d}"
        for rows in results.values():
            one, bat, eng = (r["images_per_s"] for r in rows[i * len(MODES) : (i + 1) * len(MODES)])
            line += f" | {'':7s}{one:7.1f} {bat:8.1f} {eng:7.1f} {bat / one:6.2f}"
        print(line)
    predictor = list(paths.values())[-1]
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "input_size": predictor.input_size,
        "batch_size": args.batch_size,
        "model": args.model or "random",
        "after": {
            name: {"bf16": p.bf16, "channels_last": True, "cpu_views_per_pass": CPU_VIEWS_PER_PASS}
            for name, p in paths.items()
            if name != "before"
        },
        "before": "float32, NCHW, one forward pass per batch on the CPU",
        "batched_decode": "nvJPEG on the GPU" if device.type == "cuda" else "Pillow on the CPU",
        "peak_mem": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "ru_maxrss (process high-water mark)",
        "results": results,
    }
    print(json.dumps(info))


if __name__ == "__main__":
    main()
