"""Point-estimate metrics of the paper, the mass–metallicity scatter test, and the metrics file.

Residuals are Δ = predicted − true, in the target's units (dex for 12+log(O/H) and log M*).

- ``rmse``: sqrt(mean(Δ²)).
- ``nmad``: 1.4826 × median(|Δ − median(Δ)|), the paper's Eq. (1); equals σ for a Gaussian
  and ignores outliers.
- ``bias``: the median of Δ (robust, and the centre NMAD is measured about); ``summarise``
  also gives the mean as ``mean_bias``.
- ``outlier_fraction``: the fraction with |Δ| > k × NMAD (k = 3 by default); the definition
  is written next to the number.
- ``calibration``: the fraction with |Δ| <= σ for a predicted uncertainty σ (0.683 when the
  uncertainties are right and the errors Gaussian).

The metrics file (``metrics.json``), written by ``galmet baseline`` and ``galmet evaluate``::

    {
      "kind": "cnn" | "random_forest",
      "data": "<data folder>",
      "split": "test",
      "seed": 0,                      # the split seed of training.dataset.split_indices
      "n": 3077,                      # galaxies evaluated
      "targets": ["oh_p50", "lgm_tot_p50"],
      "results": {
        "<variant>": {                # "random_forest", or "tta1" / "tta8" for the CNN
          "<target>": {               # summarise(pred, true[, sigma])
            "n": 3077, "rmse": 0.0851, "nmad": 0.0664, "bias": 0.0012, "mean_bias": 0.0008,
            "outlier_fraction": 0.021, "outlier_definition": "|pred - true| > 3 NMAD",
            "calibration_1sigma": 0.69    # only when an uncertainty was given
          }
        }
      },
      ...                             # extras of the writer, e.g. "mmr" (mmr_comparison),
                                      # "oracle_floor" on a mock sky
    }
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from galmet.files import atomic_write

#: Converts a median absolute deviation to σ for a Gaussian: 1 / Φ⁻¹(3/4).
NMAD_SCALE = 1.4826


def _array(x) -> np.ndarray:
    return np.asarray(x, dtype=float).ravel()


def rmse(res) -> float:
    """Root mean square of the residuals."""
    r = _array(res)
    return float(np.sqrt(np.mean(r**2)))


def nmad(res) -> float:
    """Normalised median absolute deviation, 1.4826 × median(|Δ − median(Δ)|)."""
    r = _array(res)
    return float(NMAD_SCALE * np.median(np.abs(r - np.median(r))))


def bias(res) -> float:
    """Median residual: the systematic offset, unmoved by a few outliers."""
    return float(np.median(_array(res)))


def outlier_fraction(res, k: float = 3.0) -> float:
    """Fraction of residuals with |Δ| > k × NMAD(Δ)."""
    r = _array(res)
    return float(np.mean(np.abs(r) > k * nmad(r)))


def outlier_definition(k: float = 3.0) -> str:
    """The outlier rule of ``outlier_fraction`` in words, stored beside the number."""
    return f"|pred - true| > {k:g} NMAD"


def calibration(res, sigma) -> float:
    """Fraction of residuals within their predicted 1σ uncertainty (ideal: 0.683)."""
    r, s = _array(res), np.broadcast_to(_array(sigma), np.shape(_array(res)))
    return float(np.mean(np.abs(r) <= s))


def summarise(pred, true, sigma=None, k: float = 3.0) -> dict:
    """Every point metric of predictions ``pred`` against ``true`` as a JSON-ready dict."""
    p, t = _array(pred), _array(true)
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in length ({p.size} vs {t.size})")
    if p.size == 0:
        raise ValueError("no predictions to summarise")
    res = p - t
    out = {
        "n": int(res.size),
        "rmse": rmse(res),
        "nmad": nmad(res),
        "bias": bias(res),
        "mean_bias": float(np.mean(res)),
        "outlier_fraction": outlier_fraction(res, k),
        "outlier_definition": outlier_definition(k),
    }
    if sigma is not None:
        out["calibration_1sigma"] = calibration(res, sigma)
    return out


# ------------------------------------------------------------------ mass–metallicity relation
def mass_bins(mass, width: float = 0.25) -> np.ndarray:
    """Bin edges of ``width`` dex over the 1st–99th percentile of ``mass``."""
    lo, hi = np.percentile(_array(mass), [1, 99])
    lo, hi = np.floor(lo / width) * width, np.ceil(hi / width) * width
    return np.arange(lo, hi + width / 2, width)


def default_min_count(n: int) -> int:
    """Fewest galaxies a mass bin needs: 20, fewer (down to 5) for samples under 400."""
    return int(np.clip(n // 20, 5, 20))


def binned_relation(mass, oh, bins, min_count: int = 20) -> dict[str, np.ndarray]:
    """Median and 16th/84th percentiles of ``oh`` in mass bins, with each bin's NMAD.

    Bins holding fewer than ``min_count`` galaxies are left out. Returns arrays ``lo``,
    ``hi``, ``centre``, ``n``, ``median``, ``p16``, ``p84``, ``nmad`` (one entry per kept bin).
    """
    m, y, edges = _array(mass), _array(oh), _array(bins)
    idx = np.digitize(m, edges) - 1
    rows = []
    for b in range(len(edges) - 1):
        yb = y[idx == b]
        if yb.size >= min_count:
            p16, p50, p84 = np.percentile(yb, [16, 50, 84])
            rows.append((edges[b], edges[b + 1], yb.size, p50, p16, p84, nmad(yb)))
    cols = np.array(rows, dtype=float).reshape(-1, 7).T
    out = dict(zip(["lo", "hi", "n", "median", "p16", "p84", "nmad"], cols, strict=True))
    out["centre"] = (out["lo"] + out["hi"]) / 2
    return out


def _offsets_from_binned_median(m: np.ndarray, y: np.ndarray, edges, min_count: int):
    """``y`` minus the median of its mass bin; NaN outside the bins or in sparse bins."""
    idx = np.digitize(m, edges) - 1
    out = np.full(y.shape, np.nan)
    for b in range(len(edges) - 1):
        sel = idx == b
        if np.count_nonzero(sel) >= min_count:
            out[sel] = y[sel] - np.median(y[sel])
    return out


def nmad_at_fixed_mass(mass, oh, bins, min_count: int = 20) -> float:
    """Scatter of ``oh`` about the binned median mass–metallicity relation, as NMAD.

    Each galaxy's offset from the median of its mass bin is pooled over all bins with at
    least ``min_count`` galaxies; galaxies outside ``bins`` are left out.
    """
    off = _offsets_from_binned_median(_array(mass), _array(oh), _array(bins), min_count)
    off = off[np.isfinite(off)]
    # An NMAD of a handful of offsets is no scatter estimate.
    return nmad(off) if off.size >= 2 * min_count else float("nan")


def mmr_scatter_ratio(
    mass_ref,
    oh_ref,
    mass_alt,
    oh_alt,
    bins=None,
    min_count: int | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict:
    """NMAD at fixed mass of the relation (mass_alt, oh_alt) over that of (mass_ref, oh_ref).

    The two relations are for the same galaxies (e.g. catalog values vs predictions), so the
    uncertainty is a paired bootstrap: the galaxies are resampled together and the standard
    deviation of the ratio over ``n_boot`` resamples is ``ratio_err``. A ratio below 1 means
    the alternative relation is tighter. ``bins`` default to ``mass_bins(mass_ref)``;
    ``min_count`` (fewest galaxies a bin needs) to ``default_min_count(n)``.

    The paper reports a weighted mean over mass bins of per-bin NMAD ratios (0.82 ± 0.08);
    this pools the offsets of all bins instead, which is less noisy in sparse bins.
    """
    arrays = [_array(a) for a in (mass_ref, oh_ref, mass_alt, oh_alt)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError("the four arrays must hold the same galaxies")
    edges = mass_bins(arrays[0]) if bins is None else _array(bins)
    n = arrays[0].size
    min_count = default_min_count(n) if min_count is None else min_count

    def ratio(sel) -> tuple[float, float, float]:
        mr, yr, ma, ya = (a[sel] for a in arrays)
        ref = nmad_at_fixed_mass(mr, yr, edges, min_count)
        alt = nmad_at_fixed_mass(ma, ya, edges, min_count)
        return (alt / ref if ref > 0 else float("nan")), ref, alt

    value, ref, alt = ratio(slice(None))
    rng = np.random.default_rng(seed)
    boots = np.array([ratio(rng.integers(0, n, n))[0] for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    return {
        "ratio": float(value),
        "ratio_err": float(np.std(boots)) if boots.size > 1 else float("nan"),
        "nmad_ref": float(ref),
        "nmad_alt": float(alt),
        "n": int(n),
        "bins": [float(e) for e in edges],
        "min_count": int(min_count),
        "n_boot": int(n_boot),
    }


def mmr_comparison(mass_cat, oh_cat, mass_pred, oh_pred, bins=None, seed: int = 0) -> dict:
    """The paper's MMR test: scatter at fixed mass with predictions over with catalog values.

    Three relations against the catalog one (catalog mass, catalog O/H), all on the same
    galaxies and mass bins: ``oh_predicted`` (catalog mass, predicted O/H; paper 0.821 ±
    0.077), ``mass_predicted`` (predicted mass, catalog O/H; paper 0.811 ± 0.057) and
    ``both_predicted``. Each entry is a ``mmr_scatter_ratio`` dict.
    """
    edges = mass_bins(mass_cat) if bins is None else bins
    pairs = {
        "oh_predicted": (mass_cat, oh_pred),
        "mass_predicted": (mass_pred, oh_cat),
        "both_predicted": (mass_pred, oh_pred),
    }
    out = {"definition": "NMAD of O/H about the binned median relation, alternative / catalog"}
    for name, (m, y) in pairs.items():
        out[name] = mmr_scatter_ratio(mass_cat, oh_cat, m, y, edges, seed=seed)
    return out


# ------------------------------------------------------------------ the metrics file
def metrics_record(
    kind: str,
    data: str | Path,
    split: str,
    seed: int,
    n: int,
    targets: list[str],
    results: dict[str, dict[str, dict]],
    **extra,
) -> dict:
    """The metrics dict in the shape documented at the top of this module."""
    if kind not in ("cnn", "random_forest"):
        raise ValueError(f"kind must be 'cnn' or 'random_forest', not {kind!r}")
    return {
        "kind": kind,
        "data": str(data),
        "split": split,
        "seed": int(seed),
        "n": int(n),
        "targets": list(targets),
        "results": results,
        **extra,
    }


def write_metrics(path: str | Path, record: dict) -> Path:
    """Write a metrics dict as indented JSON (NaN is written as null, so any reader parses it)."""
    text = json.dumps(_finite_or_none(record), indent=2, allow_nan=False)
    return atomic_write(path, text + "\n")  # a killed run never leaves half a file


def _finite_or_none(obj):
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite_or_none(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    return obj
