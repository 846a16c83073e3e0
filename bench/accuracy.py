"""The accuracy table: oracle floor, random forest on g, r, i, and the CNN at TTA 1 and 8,
on one mock sample and its test split, side by side.

    python bench/accuracy.py --out runs/accuracy                  # the README's budget
    python bench/accuracy.py --out runs/accuracy --n 2000 --cycles 2   # quicker

Simulates a mock sample (``galmet simulate``: ``--n`` galaxies, ``--size`` px at
``--scale`` ″/px; the default 64 px at 0.592″/px covers the field of the service's 128 px
cutouts at 0.296″/px), trains the ResNet-34 on it (``galmet train``'s ``train``: AdamW,
one frozen epoch, then ``--cycles`` SGDR cycles of 1, 2, 4 … epochs) and scores, all on the
same test split of that sample, with the project's own evaluation code:

- the oracle floor: oh_p50 about the mock's latent mean (``training.baseline``'s floor; no σ);
- the random forest on g, r, i model magnitudes (``galmet baseline``; no σ);
- the CNN at TTA 1 and TTA 8 (``galmet evaluate``): σ coverage is the fraction of test
  galaxies within their calibrated 1σ (0.683 ideal).

Steps already done in ``--out`` (the sample, the model) are reused. Prints the table, the
aim (CNN RMSE ≤ 1.1 × floor and ≤ 0.65 × RF, issue 12) and whether it is met, and how far
the predictor's bf16 path (on CPUs with native bf16) moves the CNN's predictions from
float32; writes ``OUT/accuracy.json`` and prints it as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from galmet.files import atomic_write
from galmet.model import Checkpoint
from galmet.predictor import Predictor, default_bf16, native_bf16
from galmet.training import baseline
from galmet.training.config import TrainConfig
from galmet.training.dataset import load_images
from galmet.training.evaluate import evaluate
from galmet.training.simulate import simulate
from galmet.training.train import train

OH = "oh_p50"
#: The aim of issue 12: the CNN's RMSE against the floor and against the forest.
AIM_FLOOR, AIM_RF = 1.1, 0.65


def accuracy_table(data: Path, model: Path, work: Path, tta: int = 8, trees: int = 200) -> dict:
    """The table's rows (floor, rf_gri, cnn_tta1, cnn_tta{tta}: rmse, nmad, coverage, n) on
    the test split of ``data`` that ``model`` was trained with, the aim and whether it is
    met, and the largest |bf16 − float32| of the CNN's predictions there (dex)."""
    ev = evaluate(model, data, "test", tta, out=work / "eval", device="cpu")
    ck = Checkpoint.load(model)
    rf = baseline.run(data, work / "baseline", [OH], seed=ck.split_seed, trees=trees)
    floor = ev.record["oracle_floor"]
    forest = rf["results"]["random_forest"][OH]
    rows = {
        "floor": {"rmse": floor["rmse"], "nmad": floor["nmad"], "coverage": None, "n": floor["n"]},
        "rf_gri": {
            "rmse": forest["rmse"],
            "nmad": forest["nmad"],
            "coverage": None,
            "n": forest["n"],
        },
    }
    for variant, results in ev.record["results"].items():
        s = results[OH]
        rows[f"cnn_{variant}"] = {
            "rmse": s["rmse"],
            "nmad": s["nmad"],
            "coverage": s["calibration_1sigma"],
            "n": s["n"],
        }
    cnn = rows[f"cnn_tta{tta}"]["rmse"]
    aim = {
        "cnn_over_floor": cnn / floor["rmse"],
        "cnn_over_rf": cnn / forest["rmse"],
        "floor_limit": AIM_FLOOR,
        "rf_limit": AIM_RF,
    }
    aim["met"] = aim["cnn_over_floor"] <= AIM_FLOOR and aim["cnn_over_rf"] <= AIM_RF
    return {
        "sample": str(data),
        "n_test": rows["floor"]["n"],
        "tta": tta,
        "rows": rows,
        "aim": aim,
        "bf16": bf16_difference(ck, data, ev.objid, tta),
    }


def bf16_difference(ck: Checkpoint, data: Path, objid: np.ndarray, tta: int) -> dict:
    """max and mean |bf16 − float32| of oh_p50 (dex) on the evaluated galaxies, TTA 1 and
    ``tta``; whether this CPU runs bf16 natively, and whether the predictor serves this
    model in bf16 here (native, and the model's training-time check passed)."""
    paths = [data / "images" / f"{int(i)}.jpg" for i in objid]
    images = load_images(paths, ck.input_size, progress=False)
    exact, fast = Predictor(ck, bf16=False), Predictor(ck, bf16=True)
    out: dict = {
        "native_on_this_cpu": native_bf16("cpu"),
        "served_in_bf16": default_bf16(ck, "cpu"),
    }
    for n in sorted({1, tta}):
        diff = np.abs(fast.predict_images(images, n).mean - exact.predict_images(images, n).mean)
        out[f"tta{n}"] = {"max": float(diff.max()), "mean": float(diff.mean())}
    return out


def print_table(table: dict) -> None:
    names = {
        "floor": "oracle floor",
        "rf_gri": "random forest g,r,i",
        "cnn_tta1": "CNN, TTA 1",
        f"cnn_tta{table['tta']}": f"CNN, TTA {table['tta']}",
    }
    print(f"{table['sample']}: {table['n_test']} test galaxies; 12+log(O/H), dex")
    print(f"{'':22s}{'RMSE':>8s}{'NMAD':>8s}{'within 1σ':>11s}")
    for key, name in names.items():
        r = table["rows"][key]
        cover = "-" if r["coverage"] is None else f"{r['coverage']:.3f}"
        print(f"{name:22s}{r['rmse']:8.4f}{r['nmad']:8.4f}{cover:>11s}")
    a = table["aim"]
    print(
        f"aim: CNN TTA {table['tta']} RMSE <= {a['floor_limit']} x floor and <= "
        f"{a['rf_limit']} x RF; got {a['cnn_over_floor']:.2f} x floor, "
        f"{a['cnn_over_rf']:.2f} x RF: {'met' if a['met'] else 'not met'}"
    )
    b = table["bf16"]
    levels = [k for k in b if k.startswith("tta")]
    print(
        "bf16 vs float32, |Δ oh_p50| max / mean (dex): "
        + ", ".join(f"TTA {k[3:]} {b[k]['max']:.4f} / {b[k]['mean']:.4f}" for k in levels)
        + f"; served in bf16 on this CPU: {'yes' if b['served_in_bf16'] else 'no'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (reused)")
    parser.add_argument("--n", type=int, default=6000, help="mock galaxies")
    parser.add_argument("--seed", type=int, default=0, help="mock seed")
    parser.add_argument("--size", type=int, default=64, help="image pixels")
    parser.add_argument("--scale", type=float, default=0.592, help="arcsec per pixel")
    parser.add_argument("--train-size", type=int, help="resize to this for training (smoke runs)")
    parser.add_argument("--cycles", type=int, default=3, help="SGDR cycles (1, 2, 4 … epochs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-steps", type=int, help="batches per epoch at most (smoke runs)")
    parser.add_argument("--trees", type=int, default=200, help="random forest trees")
    parser.add_argument("--tta", type=int, default=8, help="the CNN's TTA row besides 1")
    args = parser.parse_args()

    started = time.perf_counter()
    data, model = args.out / "data", args.out / "model.pt"
    if not (data / "mock.json").exists():
        simulate(args.n, data, args.seed, args.size, args.scale, workers=os.cpu_count() or 1)
    simulated = time.perf_counter()
    if not model.exists():
        cfg = TrainConfig(
            data=str(data),
            out=str(model),
            size=args.train_size,
            batch_size=args.batch_size,
            optimizer="adamw",  # measured better than SGD from scratch on the mock (app/demo)
            lr=1e-3,
            frozen_epochs=1,
            cycles=args.cycles,
            tta=args.tta,
            max_steps=args.max_steps,
            device="cpu",
            # bf16 training where the CPU has it: 1.8x here; channels_last goes with it
            bf16=native_bf16("cpu"),
            channels_last=native_bf16("cpu"),
        )
        train(cfg)
    trained = time.perf_counter()
    table = accuracy_table(data, model, args.out, args.tta, args.trees)
    table["budget"] = {
        "galaxies": args.n,
        "size": args.size,
        "scale": args.scale,
        "epochs": 1 + TrainConfig(data="", out="", cycles=args.cycles).epochs,
        "batch_size": args.batch_size,
        "max_steps": args.max_steps,
        "seconds": {
            "simulate": round(simulated - started, 1),
            "train": round(trained - simulated, 1),
            "score": round(time.perf_counter() - trained, 1),
        },
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    print()
    print_table(table)
    atomic_write(args.out / "accuracy.json", json.dumps(table, indent=2) + "\n")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
