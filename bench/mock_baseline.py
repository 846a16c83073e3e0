"""Oracle floor vs a random forest on g, r, i model magnitudes, for a `galmet simulate` folder.

A quick sklearn fit (the proper `galmet baseline` comes with the training pipeline):

    python bench/mock_baseline.py data/mock

Splits the sample like the paper (90k / 20k / 20k of 130k), fits on the training part and
prints RMSE and NMAD on the test part, next to the oracle floor on the same rows. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from sklearn.ensemble import RandomForestRegressor


def nmad(residual: np.ndarray) -> float:
    """Normalised median absolute deviation, 1.4826 * median(|d - median(d)|)."""
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder written by galmet simulate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cat = Table.read(args.data / "catalog.csv", format="ascii.csv")
    truth = Table.read(args.data / "truth.csv", format="ascii.csv")
    y = np.asarray(cat["oh_p50"], dtype=float)
    x = np.c_[cat["modelMag_g"], cat["modelMag_r"], cat["modelMag_i"]]
    order = np.random.default_rng(args.seed).permutation(len(y))
    n_train, n_val = round(len(y) * 90 / 130), round(len(y) * 20 / 130)
    train, test = order[:n_train], order[n_train + n_val :]
    start = time.perf_counter()
    rf = RandomForestRegressor(n_estimators=200, min_samples_leaf=5, n_jobs=-1, random_state=0)
    rf.fit(x[train], y[train])
    res_rf = rf.predict(x[test]) - y[test]
    res_floor = np.asarray(truth["true_oh_mean"], dtype=float)[test] - y[test]
    figures = {
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "rf_gri_rmse": float(np.sqrt(np.mean(res_rf**2))),
        "rf_gri_nmad": nmad(res_rf),
        "oracle_floor_rmse": float(np.sqrt(np.mean(res_floor**2))),
        "oracle_floor_nmad": nmad(res_floor),
        "fit_seconds": round(time.perf_counter() - start, 2),
    }
    print(f"test galaxies: {len(test)} (trained on {len(train)})")
    print(f"{'':24s}{'RMSE':>8s}{'NMAD':>8s}")
    for label, key in (("random forest on g,r,i", "rf_gri"), ("oracle floor", "oracle_floor")):
        print(f"{label:24s}{figures[key + '_rmse']:8.4f}{figures[key + '_nmad']:8.4f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
