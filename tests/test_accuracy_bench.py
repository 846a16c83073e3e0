"""bench/accuracy.py stays alive: its table on a tiny mock (a model trained a few steps) has
every row, sane values, and the floor below the forest, as on any mock.

The figures at full budget are a measurement, in the README."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from galmet.training.config import TrainConfig
from galmet.training.simulate import simulate
from galmet.training.train import train

BENCH = Path(__file__).resolve().parents[1] / "bench" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_has_every_row_and_sane_values(accuracy, tmp_path, capsys):
    data, model = tmp_path / "data", tmp_path / "model.pt"
    simulate(120, data, seed=7, size=64, workers=1)
    cfg = TrainConfig(
        data=str(data),
        out=str(model),
        size=32,
        batch_size=16,
        frozen_epochs=1,
        cycles=1,
        tta=8,
        max_steps=2,
    )
    train(cfg)
    table = accuracy.accuracy_table(data, model, tmp_path, tta=8, trees=10)
    rows = table["rows"]
    assert list(rows) == ["floor", "rf_gri", "cnn_tta1", "cnn_tta8"]
    n = table["n_test"]
    assert n >= 10 and all(r["n"] == n for r in rows.values())  # one test split for all
    for r in rows.values():
        assert 0 < r["nmad"] < 1 and 0 < r["rmse"] < 1
    assert rows["rf_gri"]["rmse"] > rows["floor"]["rmse"]  # nothing beats the oracle
    assert rows["floor"]["coverage"] is None and rows["rf_gri"]["coverage"] is None
    assert all(0 <= rows[k]["coverage"] <= 1 for k in ("cnn_tta1", "cnn_tta8"))
    aim = table["aim"]
    cnn = rows["cnn_tta8"]["rmse"]
    assert aim["cnn_over_floor"] == pytest.approx(cnn / rows["floor"]["rmse"])
    assert aim["met"] == (aim["cnn_over_floor"] <= 1.1 and aim["cnn_over_rf"] <= 0.65)
    assert math.isfinite(table["bf16"]["tta8"]["max"])

    accuracy.print_table(table)
    printed = capsys.readouterr().out
    for name in ("oracle floor", "random forest g,r,i", "CNN, TTA 1", "CNN, TTA 8", "aim:"):
        assert name in printed
