"""The real sample's metallicity distribution, which the mock sky is built to match, and the
summary that holds a mock's ``oh_p50`` against it.

The real numbers come from the paper's public test-set predictions (20,466 SDSS galaxies,
jwuphysics/galaxy-cnns): the distribution of the catalogue's ``oh_p50`` (MPA-JHU) over the
sample, and a random forest on g, r, i model magnitudes (0.130-0.136 dex, 0.65 x the spread).
``tests/test_mock_distribution.py`` checks a mock against them; ``bench/mock_baseline.py``
prints them side by side.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import skew

#: Quantiles (per cent) of the real sample's 12 + log(O/H) and their values.
REAL_OH_QUANTILES: dict[float, float] = {
    1: 8.29,
    5: 8.49,
    16: 8.71,
    25: 8.81,
    50: 8.96,
    75: 9.05,
    84: 9.09,
    95: 9.13,
    99: 9.19,
}
REAL_OH_STD = 0.200  # dex
REAL_OH_SKEW = -1.1  # a long metal-poor tail
REAL_RF_RMSE = (0.130, 0.136)  # random forest on g, r, i, dex
REAL_RF_RATIO = 0.65  # its RMSE over the spread of oh_p50


def oh_distribution(oh) -> dict:
    """Quantiles (keys as in ``REAL_OH_QUANTILES``), standard deviation and skewness of a
    sample's 12 + log(O/H)."""
    oh = np.asarray(oh, dtype=float)
    values = np.percentile(oh, list(REAL_OH_QUANTILES))
    return {
        "quantiles": dict(zip(REAL_OH_QUANTILES, map(float, values), strict=True)),
        "std": float(np.std(oh)),
        "skew": float(skew(oh)),
    }
