"""The trained model on held-out rows: sigma and the OOD threshold calibrated on validation,
metrics on test."""

from __future__ import annotations

import numpy as np
import torch

from galmet.d4 import TTA_TRANSFORMS
from galmet.predictor import Predictor
from galmet.training.dataset import GalaxyData
from galmet.training.metrics import summarise
from galmet.training.ood import set_ood_thresholds


def calibrate_sigma(predictor: Predictor, data: GalaxyData, rows: np.ndarray) -> dict[int, float]:
    """Per TTA level, the factor that puts 68.3% of validation residuals within ±sigma.

    Where the predictor scores out-of-distribution (its checkpoint has ``ood`` statistics),
    the same predictions set its thresholds (``training.ood.set_ood_thresholds``).
    """
    predictor.checkpoint.sigma_scale = {}
    images = data.images[torch.from_numpy(rows)]
    scales, parts = {}, {}
    for tta in TTA_TRANSFORMS:
        pred = predictor.predict_images(images, tta)
        ratio = np.abs(pred.mean - data.targets[rows]) / np.maximum(pred.sigma, 1e-9)
        scales[tta] = float(np.quantile(ratio, 0.6827))
        if pred.ood_features is not None:
            parts[tta] = (pred.ood_features, pred.ood_pixels)
    if parts:
        set_ood_thresholds(predictor.checkpoint.ood, parts)
    return scales


def test_metrics(predictor: Predictor, data: GalaxyData, rows: np.ndarray, tta: int) -> dict:
    """RMSE, NMAD and calibration on the test rows, without and with TTA."""
    results = {}
    if len(rows) == 0:
        return {"n_test": 0}
    images = data.images[torch.from_numpy(rows)]
    for n in sorted({1, tta}):
        pred = predictor.predict_images(images, n)
        results[f"tta{n}"] = {
            name: summarise(pred.mean[:, j], data.targets[rows, j], pred.sigma[:, j])
            for j, name in enumerate(pred.outputs)
        }
    return {"split": "test", "n": int(len(rows)), "results": results}
