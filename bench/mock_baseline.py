"""The mock sky against the real sample: O/H distribution, random forest on g, r, i, oracle floor.

    python bench/mock_baseline.py                  # draws a 30,000-galaxy mock (no images)
    python bench/mock_baseline.py --n 5000 --seed 3
    python bench/mock_baseline.py data/mock        # a `galmet simulate` folder

Prints one table: the quantiles, standard deviation and skewness of the mock's oh_p50 next to
the real sample's (the paper's 20,466 test galaxies), then a random forest on g, r, i model
magnitudes (the `galmet baseline` forest, trained on the paper's train split and scored on its
test split), its RMSE over the spread of oh_p50 on those rows, and the oracle floor on the same
rows. Last line: the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from sklearn.ensemble import RandomForestRegressor

from galmet.training.baseline import FEATURES, MIN_SAMPLES_LEAF
from galmet.training.dataset import split_indices
from galmet.training.metrics import nmad, rmse
from galmet.training.mocksky_reference import (
    REAL_OH_QUANTILES,
    REAL_OH_SKEW,
    REAL_OH_STD,
    REAL_RF_RATIO,
    REAL_RF_RMSE,
    oh_distribution,
)


def load(args: argparse.Namespace) -> tuple[Table, np.ndarray, str]:
    """The catalogue, the oracle's prediction (true_oh_mean) per row, and a label."""
    if args.data is not None:
        cat = Table.read(args.data / "catalog.csv", format="ascii.csv")
        truth = Table.read(args.data / "truth.csv", format="ascii.csv")
        if not np.array_equal(cat["objID"], truth["objID"]):
            raise SystemExit(f"{args.data}: catalog.csv and truth.csv list different galaxies")
        return cat, np.asarray(truth["true_oh_mean"], dtype=float), str(args.data)
    from galmet.training.mocksky import MockSky

    sky = MockSky(args.n, seed=args.seed)
    truth = sky.truth()
    return sky.catalog(), np.asarray(truth["true_oh_mean"], dtype=float), f"MockSky({args.n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", help="a `galmet simulate` folder")
    parser.add_argument("--n", type=int, default=30000, help="galaxies to draw (no DATA)")
    parser.add_argument("--seed", type=int, default=0, help="mock seed (no DATA)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--trees", type=int, default=200)
    args = parser.parse_args()

    start = time.perf_counter()
    cat, oracle, label = load(args)
    y = np.asarray(cat["oh_p50"], dtype=float)
    x = np.stack([np.asarray(cat[c], dtype=float) for c in FEATURES], axis=1)
    parts = split_indices(len(y), args.split_seed)
    train, test = parts["train"], parts["test"]
    forest = RandomForestRegressor(
        n_estimators=args.trees, min_samples_leaf=MIN_SAMPLES_LEAF, n_jobs=-1, random_state=0
    )
    forest.fit(x[train], y[train])
    res_rf = forest.predict(x[test]) - y[test]
    dist = oh_distribution(y)
    spread = float(np.std(y[test]))
    figures = {
        "sample": label,
        "n": int(len(y)),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "oh_quantiles": {str(q): round(v, 4) for q, v in dist["quantiles"].items()},
        "oh_quantile_max_offset": round(
            max(abs(dist["quantiles"][q] - v) for q, v in REAL_OH_QUANTILES.items()), 4
        ),
        "oh_std": round(dist["std"], 4),
        "oh_skew": round(dist["skew"], 3),
        "rf_gri_rmse": round(rmse(res_rf), 4),
        "rf_gri_nmad": round(nmad(res_rf), 4),
        "rf_ratio": round(rmse(res_rf) / spread, 3),
        "oracle_floor_rmse": round(rmse(oracle[test] - y[test]), 4),
        "oracle_floor_nmad": round(nmad(oracle[test] - y[test]), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }

    print(f"{label}: {len(y)} galaxies; forest trained on {len(train)}, tested on {len(test)}")
    print(f"{'12+log(O/H)':24s}{'mock':>9s}{'real':>13s}{'mock-real':>11s}")
    for q, real in REAL_OH_QUANTILES.items():
        mock = dist["quantiles"][q]
        print(f"{f'  {q:g} %':24s}{mock:9.3f}{real:13.2f}{mock - real:+11.3f}")
    print(f"{'  std':24s}{dist['std']:9.3f}{REAL_OH_STD:13.3f}{dist['std'] - REAL_OH_STD:+11.3f}")
    print(
        f"{'  skew':24s}{dist['skew']:9.2f}{REAL_OH_SKEW:13.2f}{dist['skew'] - REAL_OH_SKEW:+11.2f}"
    )
    real_rf = f"{REAL_RF_RMSE[0]:.3f}-{REAL_RF_RMSE[1]:.3f}"
    print(f"{'RF on g,r,i RMSE':24s}{figures['rf_gri_rmse']:9.4f}{real_rf:>13s}")
    print(f"{'RF on g,r,i NMAD':24s}{figures['rf_gri_nmad']:9.4f}{'':>13s}")
    print(f"{'RF RMSE / std':24s}{figures['rf_ratio']:9.3f}{REAL_RF_RATIO:13.2f}")
    print(f"{'oracle floor RMSE':24s}{figures['oracle_floor_rmse']:9.4f}{'(mock only)':>13s}")
    print(f"{'oracle floor NMAD':24s}{figures['oracle_floor_nmad']:9.4f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
