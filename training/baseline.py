"""``galmet baseline``: a random forest on g, r, i model magnitudes, scored like the CNN.

The paper's baseline (0.136 dex in metallicity, 0.331 dex in mass on real SDSS): one
scikit-learn random forest per target on ``modelMag_g``, ``modelMag_r``, ``modelMag_i``,
trained on the training part of the very rows and split the CNN uses
(``training.dataset.select_rows`` + ``split_indices``) and evaluated on the chosen part.

Writes to ``--out`` (default ``DATA/baseline``): ``metrics.json`` (format in
``training.metrics``), ``predictions.csv`` (objID and, per target, true and predicted value),
``prediction_{target}.png`` (the paper's Figure 1), and with both ``oh_p50`` and
``lgm_tot_p50`` as targets ``mmr.png`` and the scatter-at-fixed-mass ratios. On a mock sky
(``DATA/truth.csv`` present) the oracle floor on the same rows goes into the metrics too.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from galmet.errors import GalmetError

FEATURES = ["modelMag_g", "modelMag_r", "modelMag_i"]
SPLITS = ("train", "valid", "test")
OH, MASS = "oh_p50", "lgm_tot_p50"
# Leaves of a few galaxies keep the forest from memorising the measurement noise.
MIN_SAMPLES_LEAF = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with catalog.csv, images/")
    parser.add_argument("--out", type=Path, help="output folder (default: DATA/baseline)")
    parser.add_argument(
        "--target",
        action="append",
        help=f"catalog column to predict; repeat for several (default {OH})",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed, as for the CNN (0)")
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="part to evaluate on (test)"
    )
    parser.add_argument("--trees", type=int, default=200, help="trees per forest (200)")


def _oracle_floor(data_dir: Path, objid: np.ndarray, oh: np.ndarray) -> dict | None:
    """RMSE/NMAD of the measured oh_p50 about its latent mean, on the given rows of a mock."""
    path = data_dir / "truth.csv"
    if not path.exists():
        return None
    from galmet.training.metrics import nmad, rmse

    truth = Table.read(path, format="ascii.csv")
    lookup = dict(
        zip(np.asarray(truth["objID"]).tolist(), np.asarray(truth["true_oh_mean"]), strict=True)
    )
    try:
        mean = np.array([lookup[i] for i in objid.tolist()], dtype=float)
    except KeyError as exc:
        raise GalmetError(f"{path} has no row for objID {exc.args[0]}") from None
    res = oh - mean
    return {
        "rmse": rmse(res),
        "nmad": nmad(res),
        "n": int(res.size),
        "definition": "oh_p50 about truth.csv true_oh_mean on the evaluated rows",
    }


def _write_predictions(path: Path, objid, targets, y_true, y_pred) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objID"] + [f"{t}_{kind}" for t in targets for kind in ("true", "pred")])
        for i, oid in enumerate(objid):
            values = [f"{v:.6f}" for j in range(len(targets)) for v in (y_true[i, j], y_pred[i, j])]
            w.writerow([int(oid), *values])


def run(
    data: Path,
    out: Path | None = None,
    targets: list[str] | None = None,
    seed: int = 0,
    split: str = "test",
    trees: int = 200,
) -> dict:
    """Fit one forest per target, evaluate on ``split``, write the files; returns the metrics."""
    from sklearn.ensemble import RandomForestRegressor

    from galmet.training.dataset import select_rows, split_indices
    from galmet.training.figures import MASS_LABEL, OH_LABEL, plot_mmr, plot_prediction
    from galmet.training.metrics import metrics_record, mmr_comparison, summarise, write_metrics

    data = Path(data)
    targets = list(dict.fromkeys(targets or [OH]))  # drop repeats, keep order
    out = Path(out) if out is not None else data / "baseline"
    if not data.is_dir():
        raise GalmetError(f"data folder {data} does not exist")
    if trees < 1:
        raise GalmetError("--trees must be at least 1")
    if split not in SPLITS:
        raise GalmetError(f"--split must be one of {', '.join(SPLITS)}")
    rows, y, _ = select_rows(data, targets)
    missing = [c for c in FEATURES if c not in rows.colnames]
    if missing:
        raise GalmetError(f"{data / 'catalog.csv'} lacks the column(s) {', '.join(missing)}")
    x = np.stack([np.asarray(rows[c], dtype=float) for c in FEATURES], axis=1)
    parts = split_indices(len(rows), seed)
    train, evaluate = parts["train"], parts[split]
    if len(train) < 2 or len(evaluate) < 2:
        raise GalmetError(f"too few galaxies ({len(rows)}) in {data} for a train/{split} split")
    good = np.all(np.isfinite(x), axis=1)
    if not good.all():
        raise GalmetError(f"{np.count_nonzero(~good)} rows have a non-finite g, r or i magnitude")

    pred = np.empty((len(evaluate), len(targets)))
    for j in range(len(targets)):
        forest = RandomForestRegressor(
            n_estimators=trees, min_samples_leaf=MIN_SAMPLES_LEAF, n_jobs=-1, random_state=0
        )
        forest.fit(x[train], y[train, j])
        pred[:, j] = forest.predict(x[evaluate])
    true = y[evaluate]
    objid = np.asarray(rows["objID"])[evaluate]

    out.mkdir(parents=True, exist_ok=True)
    results = {t: summarise(pred[:, j], true[:, j]) for j, t in enumerate(targets)}
    extra: dict = {
        "features": FEATURES,
        "trees": trees,
        "min_samples_leaf": MIN_SAMPLES_LEAF,
        "random_state": 0,
        "n_train": int(len(train)),
    }
    files = ["metrics.json", "predictions.csv"]
    for j, t in enumerate(targets):
        label = {OH: OH_LABEL, MASS: MASS_LABEL}.get(t, t)
        plot_prediction(
            true[:, j],
            pred[:, j],
            out / f"prediction_{t}.png",
            name=label,
            title=f"random forest on g, r, i: {t} ({split}, N = {len(evaluate):,})",
        )
        files.append(f"prediction_{t}.png")
    if OH in targets and MASS in targets:
        io, im = targets.index(OH), targets.index(MASS)
        extra["mmr"] = mmr_comparison(true[:, im], true[:, io], pred[:, im], pred[:, io])
        plot_mmr(
            true[:, im],
            true[:, io],
            pred[:, im],
            pred[:, io],
            out / "mmr.png",
            labels=("catalog", "random forest (mass and O/H)"),
        )
        files.append("mmr.png")
    if OH in targets:
        floor = _oracle_floor(data, objid, true[:, targets.index(OH)])
        if floor is not None:
            extra["oracle_floor"] = floor

    record = metrics_record(
        "random_forest",
        data.resolve(),
        split,
        seed,
        len(evaluate),
        targets,
        {"random_forest": results},
        **extra,
    )
    write_metrics(out / "metrics.json", record)
    _write_predictions(out / "predictions.csv", objid, targets, true, pred)
    record["files"] = [str(out / f) for f in files]
    return record


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    rec = run(args.data, args.out, args.target, args.seed, args.split, args.trees)
    print(
        f"random forest on {', '.join(FEATURES)}: {rec['trees']} trees, trained on "
        f"{rec['n_train']:,} galaxies, evaluated on {rec['split']} ({rec['n']:,}), "
        f"seed {rec['seed']}"
    )
    print(f"{'target':14s}{'RMSE':>9s}{'NMAD':>9s}{'bias':>9s}{'outliers':>10s}")
    for t, s in rec["results"]["random_forest"].items():
        print(
            f"{t:14s}{s['rmse']:9.4f}{s['nmad']:9.4f}{s['bias']:+9.4f}"
            f"{100 * s['outlier_fraction']:9.1f}%"
        )
    print("(dex; bias = median of pred - true; outliers: |pred - true| > 3 NMAD)")
    if "oracle_floor" in rec:
        f = rec["oracle_floor"]
        print(
            f"oracle floor (oh_p50 about the mock's true mean): RMSE {f['rmse']:.4f}, "
            f"NMAD {f['nmad']:.4f}"
        )
    if "mmr" in rec:
        print("MMR scatter at fixed mass, random forest / catalog (paper's CNN: 0.82 ± 0.08):")
        for key in ("oh_predicted", "mass_predicted", "both_predicted"):
            r = rec["mmr"][key]
            print(f"  {key.replace('_', ' '):16s}{r['ratio']:6.2f} ± {r['ratio_err']:.2f}")
    print(
        f"wrote {len(rec['files'])} files to {Path(rec['files'][0]).parent} "
        f"in {time.perf_counter() - start:.1f} s: {', '.join(Path(f).name for f in rec['files'])}"
    )
    return 0
