"""The out-of-distribution statistics a checkpoint carries: what its training images look like
to the network.

At the end of training, the head's input (the pooled ResNet features, 1024 numbers per image)
is computed for every training image, without augmentation, by each ensemble member; their mean
and a Ledoit-Wolf shrunk covariance (more features than a small sample could pin down, so the
sample covariance alone would be singular) give each member a Mahalanobis distance
(``galmet.predictor.ood_scores``). The threshold is set later, with sigma's calibration, at the
99th percentile of the validation split's scores per TTA level (``training.calibration``): by
construction about 1 % of galaxies like the training ones are flagged.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from galmet.predictor import Predictor
from galmet.training.dataset import GalaxyData

#: The validation quantile of the score above which a prediction is flagged.
OOD_QUANTILE = 0.99


def feature_statistics(features: np.ndarray) -> dict[str, torch.Tensor]:
    """Mean and precision (the inverse of the Ledoit-Wolf covariance) of (N, F) features, as
    float32 tensors: one member's entry of ``Checkpoint.ood["members"]``."""
    if len(features) < 2:
        raise ValueError("feature statistics need at least two images")
    fit = LedoitWolf().fit(np.asarray(features, dtype=np.float64))
    return {
        "mean": torch.from_numpy(fit.location_).float(),
        "precision": torch.from_numpy(fit.precision_).float(),
    }


def fit_ood(predictor: Predictor, data: GalaxyData, train_rows: list[np.ndarray]) -> dict:
    """``Checkpoint.ood`` without its threshold: each member's statistics on its own training
    rows (``train_rows``, one array per member). Sets it on the predictor's checkpoint and
    returns it; build a new ``Predictor`` to score with it."""
    members = []
    for k, rows in enumerate(train_rows):
        images = data.images[torch.from_numpy(np.asarray(rows))]
        features = predictor.pooled_features(images)[k]
        members.append(feature_statistics(features))
    ood = {
        "members": members,
        "threshold": {},
        "quantile": OOD_QUANTILE,
        "n_train": int(sum(len(r) for r in train_rows)),
        "feature": "pooled body features (the head's input), mean score over the TTA copies",
    }
    predictor.checkpoint.ood = ood
    return ood
