"""The prediction record: from model outputs to the fields users see, written once.

A model's raw record (``Predictor.predict_arrays``; what the cache stores) is keyed by the
checkpoint's output names (catalog columns: ``oh_p50``, ``lgm_tot_p50``). Users see the
design's fields: ``oh_p50`` with ``oh_sigma`` and ``oh_p16``/``oh_p84`` (∓ sigma),
``log_mstar`` with ``log_mstar_sigma``, the TTA spread of each value, and ``ood_score``
(how unlike the training images the image looks to the network; None for a model without the
statistics), whose flag ``out_of_distribution`` joins the quality flags (``record_flags``).
The API, batch jobs, ``galmet predict`` and every export take them from ``public_fields``,
rounded there once, so every answer and format shows the same digits.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Checkpoint output name -> (value field, sigma field) of a prediction.
FIELDS = {"oh_p50": ("oh_p50", "oh_sigma"), "lgm_tot_p50": ("log_mstar", "log_mstar_sigma")}
#: The value fields every prediction has (None where the model does not predict it).
VALUE_FIELDS = ("oh_p50", "oh_sigma", "oh_p16", "oh_p84", "log_mstar", "log_mstar_sigma")
#: Decimals of a value in dex users see: the model's own scatter is ~0.08 dex.
DEX_DECIMALS = 4
#: The quality flag of a prediction whose ``ood_score`` is above the model's threshold.
OOD_FLAG = "out_of_distribution"
#: Decimals of the public ``ood_score``: about 1 for a typical training galaxy, the
#: threshold near 1.1-1.5, so 0.001 resolves it without pretending to more.
OOD_DECIMALS = 3


def field_names(output: str) -> tuple[str, str]:
    """(value field, sigma field) of a checkpoint output; other outputs keep their name."""
    return FIELDS.get(output, (output, f"{output}_sigma"))


def public_fields(
    outputs: Mapping[str, float],
    sigma: Mapping[str, float],
    tta_spread: Mapping[str, float] | None = None,
    ood_score: float | None = None,
) -> dict:
    """The design's fields of one prediction: every ``VALUE_FIELDS`` entry (None where the
    model has no such output), the fields of any other output, ``tta_spread`` keyed by
    value field, and ``ood_score`` rounded to ``OOD_DECIMALS`` (None when not scored)."""
    values: dict = dict.fromkeys(VALUE_FIELDS)
    spread: dict[str, float] = {}
    for name, value in outputs.items():
        value_field, sigma_field = field_names(name)
        values[value_field] = float(value)
        values[sigma_field] = float(sigma[name])
        if tta_spread is not None and name in tta_spread:
            spread[value_field] = float(tta_spread[name])
    oh, oh_sigma = values["oh_p50"], values["oh_sigma"]
    if oh is not None:
        values["oh_p16"], values["oh_p84"] = oh - oh_sigma, oh + oh_sigma
    for name, value in values.items():
        if value is not None:
            values[name] = round(value, DEX_DECIMALS)
    values["tta_spread"] = {k: round(v, DEX_DECIMALS) for k, v in spread.items()}
    values["ood_score"] = None if ood_score is None else round(float(ood_score), OOD_DECIMALS)
    return values


def record_flags(record: Mapping) -> list[str]:
    """The quality flags a raw prediction record (``Predictor.predict_arrays``) raises:
    ``OOD_FLAG`` when its score is above the model's threshold."""
    return [OOD_FLAG] if record.get("out_of_distribution") else []
