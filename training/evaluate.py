"""``galmet evaluate``: a trained model scored the way the paper scores it, on a held-out split.

The rows are those of training and the baseline (``training.dataset.select_rows`` with the
checkpoint's targets and ``--limit``, split by ``split_indices`` with the checkpoint's split
seed), so the test galaxies are the ones training never saw and the numbers compare with
``galmet baseline`` row for row. Images are resized to the checkpoint's input size, as in
training. Predictions are made without TTA and with ``--tta`` copies (default 8).

``--split`` is test (default), valid, train or ``all`` (every usable row: a sample the model
never saw, such as a fresh mock or a ``galmet download`` folder, is evaluated whole);
``--catalog FILE`` reads the rows from FILE instead of ``DATA/catalog.csv``. A mock-sky demo
model's notice is written into the metrics and along the foot of every figure.

Writes to ``--out`` (default: the model's folder / ``eval``; for a model in galmet's cache
folder, such as the service's demo model, ``eval-<model>`` in the current folder):

- ``metrics.json`` (format in ``training.metrics``): kind ``cnn``, variants ``tta1`` and
  ``tta{n}``, each target's RMSE, NMAD, bias, outlier fraction and fraction within ±1σ; the
  model version (SHA-256 of the file) and its training configuration; on a mock sky
  (``DATA/truth.csv``) the oracle floor on the same rows; with both ``oh_p50`` and
  ``lgm_tot_p50`` predicted, the mass–metallicity scatter test (paper: 0.82 ± 0.08).
- ``prediction_{target}.png`` (the paper's Figure 1) and ``calibration_{target}.png`` for the
  TTA variant, and ``mmr.png`` when the MMR test applies.
- ``predictions.csv``: objID, ra, dec and per target the true value, the prediction, its σ
  and the spread over the TTA copies.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from galmet.d4 import TTA_LEVELS, TTA_LEVELS_TEXT
from galmet.errors import GalmetError
from galmet.model import Checkpoint, file_sha256
from galmet.predictor import Prediction, Predictor
from galmet.training.dataset import load_images, select_rows, split_indices

SPLITS = ("test", "valid", "train", "all")
OH, MASS = "oh_p50", "lgm_tot_p50"
#: Training settings worth keeping next to the metrics (the whole config is in the checkpoint).
CONFIG_SUMMARY = (
    "data",
    "targets",
    "size",
    "bands",
    "init",
    "batch_size",
    "lr",
    "frozen_epochs",
    "cycles",
    "cycle_len",
    "cycle_mult",
    "schedule",
    "optimizer",
    "folds",
    "seed",
    "limit",
    "max_steps",
)


@dataclass
class Evaluation:
    """What ``evaluate`` computed: the metrics record, the files written and the predictions
    (one ``Prediction`` per variant, rows as in ``objid``)."""

    record: dict
    files: list[Path]
    objid: np.ndarray
    true: np.ndarray
    predictions: dict[str, Prediction]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (.pt) to evaluate")
    parser.add_argument("--data", type=Path, required=True, help="folder with catalog.csv, images/")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="part to evaluate (test); all: every usable row (a sample the model never saw)",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        help="the catalog CSV (default: DATA/catalog.csv), e.g. the one a download used",
    )
    parser.add_argument(
        "--tta", type=int, choices=TTA_LEVELS, default=8, help="TTA copies (8; tta1 always too)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: MODEL's folder/eval, or ./eval-MODEL for a cached model)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--batch-size", type=int, default=128, help="images per forward pass, x TTA copies (128)"
    )


def _catalog_columns(data: Path, catalog: Path | None = None) -> list[str]:
    """The header of the catalog (``DATA/catalog.csv`` by default), without reading rows."""
    path = catalog or data / "catalog.csv"
    if not path.is_file():
        where = f"{catalog} does not exist" if catalog else f"no catalog.csv in {data}"
        raise GalmetError(
            f"{where} (make one with galmet simulate or catalog, or give --catalog FILE)"
        )
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def predict_rows(
    predictor: Predictor, images: torch.Tensor, tta: int, batch_size: int, desc: str = ""
) -> Prediction:
    """``predictor.predict_images`` in chunks of ``batch_size``, with a progress bar."""
    parts = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        parts.append(predictor.predict_images(images[start : start + batch_size], tta, batch_size))
    return Prediction(
        parts[0].outputs,
        np.concatenate([p.mean for p in parts]),
        np.concatenate([p.sigma for p in parts]),
        np.concatenate([p.spread for p in parts]),
    )


def _model_summary(path: Path, ck: Checkpoint) -> dict:
    return {
        "path": str(path.resolve()),
        "version": file_sha256(path),
        "architecture": ck.architecture,
        "outputs": list(ck.outputs),
        "input_size": ck.input_size,
        "bands": ck.bands,
        "members": len(ck.model_states),
        "sigma_scale": ck.sigma_scale,
        "split_seed": ck.split_seed,
        "data": ck.data,
    }


def _write_predictions(
    path: Path, rows, targets: list[str], true: np.ndarray, pred: Prediction
) -> None:
    kinds = ("true", "pred", "sigma", "tta_spread")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objID", "ra", "dec"] + [f"{t}_{k}" for t in targets for k in kinds])
        for i, row in enumerate(rows):
            values = []
            for j in range(len(targets)):
                values += [true[i, j], pred.mean[i, j], pred.sigma[i, j], pred.spread[i, j]]
            w.writerow(
                [int(row["objID"]), f"{row['ra']:.7f}", f"{row['dec']:.7f}"]
                + [f"{v:.6f}" for v in values]
            )


def evaluate(
    model: Path,
    data: Path,
    split: str = "test",
    tta: int = 8,
    out: Path | None = None,
    device: str = "auto",
    batch_size: int = 128,
    catalog: Path | None = None,
) -> Evaluation:
    """Predict ``split`` with TTA 1 and ``tta``, write metrics, figures and predictions."""
    from galmet.device import pick_device
    from galmet.training.baseline import _oracle_floor
    from galmet.training.figures import (
        MASS_LABEL,
        OH_LABEL,
        plot_calibration,
        plot_mmr,
        plot_prediction,
    )
    from galmet.training.metrics import metrics_record, mmr_comparison, summarise, write_metrics

    model, data = Path(model), Path(data)
    if split not in SPLITS:
        raise GalmetError(f"--split must be one of {', '.join(SPLITS)}")
    if tta not in TTA_LEVELS:
        raise GalmetError(f"--tta must be {TTA_LEVELS_TEXT}")
    if batch_size < 1:
        raise GalmetError("--batch-size must be at least 1")
    if not model.is_file():
        raise GalmetError(f"no model file {model}")
    if not data.is_dir():
        raise GalmetError(f"data folder {data} does not exist")
    ck = Checkpoint.load(model)
    targets = list(ck.outputs)
    missing = [t for t in targets if t not in _catalog_columns(data, catalog)]
    if missing:
        raise GalmetError(
            f"the model predicts {', '.join(missing)}, which {catalog or data / 'catalog.csv'} "
            "lacks"
        )
    dev = pick_device(device)
    out = Path(out) if out is not None else default_out(model)
    notice = ck.config.get("notice") if ck.config.get("demo") else None

    # The training run's --limit changes the split: apply it, or training rows leak into test.
    limit = ck.config.get("limit")
    rows, y, paths = select_rows(data, targets, limit, catalog=catalog)
    if split == "all":
        part = np.arange(len(rows))
    else:
        part = split_indices(len(rows), ck.split_seed)[split]
    if len(part) < 2:
        raise GalmetError(f"the {split} split of {data} has {len(part)} galaxies; need 2 or more")
    # Only the evaluated images are decoded: the same pixels load_data would give these rows.
    images = load_images([paths[i] for i in part], ck.input_size)
    rows, true = rows[part], y[part]
    objid = np.asarray(rows["objID"])
    print(
        f"{len(part):,} {split} galaxies of {data} ({ck.input_size} px, split seed "
        f"{ck.split_seed}" + (f", limit {limit}" if limit else "") + f"), on {dev}"
    )

    predictor = Predictor(ck, dev)
    predictions: dict[str, Prediction] = {}
    for n in sorted({1, tta}):
        predictions[f"tta{n}"] = predict_rows(
            predictor, images, n, batch_size, desc=f"predicting, TTA {n}"
        )
    results = {
        variant: {
            t: summarise(p.mean[:, j], true[:, j], p.sigma[:, j]) for j, t in enumerate(targets)
        }
        for variant, p in predictions.items()
    }
    best = predictions[f"tta{tta}"]

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "metrics.json", out / "predictions.csv"]
    extra: dict = {
        "tta": tta,
        "model": _model_summary(model, ck),
        "training": {k: ck.config[k] for k in CONFIG_SUMMARY if k in ck.config},
        "training_test_metrics": ck.metrics,
        "demo": bool(notice),
        "notice": notice,
    }
    for j, t in enumerate(targets):
        label = {OH: OH_LABEL, MASS: MASS_LABEL}.get(t, t)
        files.append(
            plot_prediction(
                true[:, j],
                best.mean[:, j],
                out / f"prediction_{t}.png",
                name=label,
                title=f"ResNet-34, TTA {tta}: {t} ({split}, N = {len(part):,})",
                note=notice,
            )
        )
        files.append(
            plot_calibration(
                best.mean[:, j] - true[:, j],
                best.sigma[:, j],
                out / f"calibration_{t}.png",
                label,
                note=notice,
            )
        )
    if OH in targets and MASS in targets:
        io, im = targets.index(OH), targets.index(MASS)
        extra["mmr"] = mmr_comparison(true[:, im], true[:, io], best.mean[:, im], best.mean[:, io])
        extra["mmr"]["variant"] = f"tta{tta}"
        files.append(
            plot_mmr(
                true[:, im],
                true[:, io],
                best.mean[:, im],
                best.mean[:, io],
                out / "mmr.png",
                labels=("catalog", f"CNN, TTA {tta} (mass and O/H)"),
                note=notice,
            )
        )
    if OH in targets:
        floor = _oracle_floor(data, objid, true[:, targets.index(OH)])
        if floor is not None:
            extra["oracle_floor"] = floor

    record = metrics_record(
        "cnn", data.resolve(), split, ck.split_seed, len(part), targets, results, **extra
    )
    if limit:
        record["limit"] = limit
    write_metrics(out / "metrics.json", record)
    _write_predictions(out / "predictions.csv", rows, targets, true, best)
    return Evaluation(record, files, objid, true, predictions)


def default_out(model: Path) -> Path:
    """Beside the model, unless the model lives in galmet's cache folder (the service's demo
    model): results do not belong in a cache, so ``./eval-<model>`` then."""
    from platformdirs import user_cache_dir

    cache = Path(os.environ.get("GALMET_CACHE_DIR") or user_cache_dir("galmet")).resolve()
    if model.resolve().parent == cache or cache in model.resolve().parents:
        return Path.cwd() / f"eval-{model.stem}"
    return model.parent / "eval"


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ev = evaluate(
        args.model,
        args.data,
        args.split,
        args.tta,
        args.out,
        args.device,
        args.batch_size,
        catalog=args.catalog,
    )
    rec = ev.record
    print(f"model {rec['model']['version'][:12]}, {rec['split']} split, N = {rec['n']:,}")
    if rec.get("notice"):
        print(f"NOTE: {rec['notice']}")
    header = f"{'target':14s}{'variant':>8s}{'RMSE':>9s}{'NMAD':>9s}{'bias':>9s}"
    print(header + f"{'outliers':>10s}{'within 1σ':>11s}")
    for t in rec["targets"]:
        for variant, per_target in rec["results"].items():
            s = per_target[t]
            print(
                f"{t:14s}{variant:>8s}{s['rmse']:9.4f}{s['nmad']:9.4f}{s['bias']:+9.4f}"
                f"{100 * s['outlier_fraction']:9.1f}%{100 * s['calibration_1sigma']:10.1f}%"
            )
    print(
        "(dex; bias = median of pred - true; outliers: |pred - true| > 3 NMAD; "
        "within 1σ is 68.3% when σ is right)"
    )
    if "oracle_floor" in rec:
        f = rec["oracle_floor"]
        print(f"oracle floor (oh_p50 about the mock's true mean): RMSE {f['rmse']:.4f}")
    if "mmr" in rec:
        print("MMR scatter at fixed mass, with predictions / with catalog values:")
        paper = {"oh_predicted": "0.82 ± 0.08", "mass_predicted": "0.81 ± 0.06"}
        for key in ("oh_predicted", "mass_predicted", "both_predicted"):
            r = rec["mmr"][key]
            print(
                f"  {key.replace('_', ' '):16s}{r['ratio']:6.2f} ± {r['ratio_err']:.2f}"
                + (f"   (paper {paper[key]})" if key in paper else "")
            )
    print(
        f"wrote {len(ev.files)} files to {ev.files[0].parent} in "
        f"{time.perf_counter() - start:.1f} s: {', '.join(f.name for f in ev.files)}"
    )
    return 0
