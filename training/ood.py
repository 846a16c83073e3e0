"""The out-of-distribution statistics a checkpoint carries: what its training images look like
to the network.

At the end of training, the head's input (the pooled ResNet features, 1024 numbers per image)
is computed for every training image, without augmentation, by each ensemble member; their mean
and a Ledoit-Wolf shrunk covariance (more features than a small sample could pin down, so the
sample covariance alone would be singular) give each member a Mahalanobis distance
(``galmet.predictor.ood_scores``). The training images' pixel statistics
(``galmet.image_stats``: band means in central apertures and in the outskirts) get the same
treatment under the key ``image``; a prediction's score is the larger of the two. The threshold
is set later, with sigma's calibration, at the 99th percentile of the validation split's scores
per TTA level (``training.calibration``): by construction about 1 % of galaxies like the
training ones are flagged.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

from galmet.image_stats import image_statistics
from galmet.predictor import Predictor
from galmet.preprocess import normalise
from galmet.training.dataset import GalaxyData

#: The validation quantile of the score above which a prediction is flagged.
OOD_QUANTILE = 0.99


def feature_statistics(features: np.ndarray, standardise: bool = False) -> dict[str, torch.Tensor]:
    """Mean and precision (the inverse of the Ledoit-Wolf covariance) of (N, F) features, as
    float32 tensors: one member's entry of ``Checkpoint.ood["members"]``. ``standardise``
    shrinks the correlations instead (Ledoit-Wolf on each feature over its own spread), and
    not at all given ten images per feature: for a few features in unlike units, where
    shrinking towards one common variance would drown the small-spread ones (a colour's) in
    the large (a brightness')."""
    if len(features) < 2:
        raise ValueError("feature statistics need at least two images")
    features = np.asarray(features, dtype=np.float64)
    scale = features.std(axis=0).clip(min=1e-12) if standardise else np.ones(features.shape[1])
    # Shrinkage is for too few images to pin the covariance down; with ten per feature the
    # sample covariance is kept whole, since shrinking the correlations would blur exactly
    # the tight combinations (a colour gradient) that tell an odd image from a galaxy.
    shrink = not standardise or len(features) < 10 * features.shape[1]
    fit = (LedoitWolf() if shrink else EmpiricalCovariance()).fit(features / scale)
    return {
        "mean": torch.from_numpy(fit.location_ * scale).float(),
        "precision": torch.from_numpy(fit.precision_ / np.outer(scale, scale)).float(),
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
    every = np.unique(np.concatenate([np.asarray(r) for r in train_rows]))
    ood = {
        "members": members,
        "image": feature_statistics(
            pixel_statistics(predictor, data.images, every), standardise=True
        ),
        "threshold": {},
        "quantile": OOD_QUANTILE,
        "n_train": int(sum(len(r) for r in train_rows)),
        "feature": "pooled body features (the head's input), mean score over the TTA copies; "
        "the larger of that and the score of the image's pixel statistics",
    }
    predictor.checkpoint.ood = ood
    return ood


def pixel_statistics(
    predictor: Predictor, images: torch.Tensor, rows: np.ndarray, batch_size: int = 512
) -> np.ndarray:
    """``galmet.image_stats.image_statistics`` of the model's input for ``images[rows]``
    (uint8), float64 (N, K), computed in batches (a real sample's inputs as floats would
    not fit in memory at once)."""
    ck = predictor.checkpoint
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = images[torch.from_numpy(rows[start : start + batch_size])]
        x = normalise(chunk, ck.bands, ck.input_mean, ck.input_std)
        out.append(image_statistics(x, ck.input_mean, ck.input_std).double().numpy())
    return np.concatenate(out)


def set_ood_thresholds(ood: dict, parts: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> dict:
    """Set ``ood``'s thresholds from validation scores, ``{tta: (feature part, pixel part)}``:
    ``threshold`` per TTA level at the ``OOD_QUANTILE`` of the feature part, and the pixel
    part's (the same at every level: it is computed once per image) under ``image``. Also
    ``n_valid``. Returns ``ood``."""
    ood["threshold"] = {
        tta: float(np.quantile(features, OOD_QUANTILE)) for tta, (features, _) in parts.items()
    }
    features, pixels = next(iter(parts.values()))
    if pixels is not None and ood.get("image") is not None:
        ood["image"]["threshold"] = float(np.quantile(pixels, OOD_QUANTILE))
    ood["n_valid"] = len(features)
    return ood
