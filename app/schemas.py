"""Request and response bodies of the HTTP API (pydantic), with examples for /docs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema


def _utc(value: datetime) -> datetime:
    """Times are UTC with an offset whatever the database: SQLite keeps none, so a naive
    time from it is UTC, and an aware one (PostgreSQL) is put in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: A time in UTC, written with its offset (RFC 3339 ``date-time``).
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]

# The forms of a position the API documents, and accepts (anchored by fullmatch): decimal
# degrees (as many digits as a float prints, and the exponent Python gives small ones, 1e-05),
# or sexagesimal with ``:``, spaces or letters (RA in hours). Only where a long fraction could
# round up past the range (RA 359.x, seconds) is it bounded. Stricter than what ``galmet.sky``
# can parse (no 1.5e2, no spaces around): a generated client's check and the server's agree.
_MIN = r"[0-5]?[0-9]"
_SEC = _MIN + r"(?:\.[0-9]{1,6})?"
_FRAC = r"(?:\.[0-9]+)?"
_SMALL = r"[0-9](?:\.[0-9]+)?[eE]-[0-9]{1,3}"  # below 10 degrees whatever the digits
_HOURS = r"(?:[01]?[0-9]|2[0-3])"
_DEG = r"[0-8]?[0-9]"
RA_FORM = (
    rf"(?:[0-9]{{1,2}}|[12][0-9]{{2}}|3[0-4][0-9]|35[0-8]){_FRAC}|359(?:\.[0-9]{{1,12}})?"
    rf"|{_SMALL}|{_HOURS}(?::{_MIN}(?::{_SEC})?| {_MIN}(?: {_SEC})?|h{_MIN}m(?:{_SEC}s)?)"
)
DEC_FORM = (
    rf"[+-]?(?:{_DEG}{_FRAC}|90(?:\.0+)?|{_SMALL}"
    rf"|{_DEG}(?::{_MIN}(?::{_SEC})?| {_MIN}(?: {_SEC})?|d{_MIN}m(?:{_SEC}s)?)"
    r"|90(?::00?(?::00?)?| 00?(?: 00?)?|d00?m(?:00?s)?))"
)
RA_TEXT = re.compile(RA_FORM)
DEC_TEXT = re.compile(DEC_FORM)
RA_STRING = {
    "type": "string",
    "pattern": f"^(?:{RA_FORM})$",
    "description": "right ascension: decimal degrees in [0, 360), or hours hh:mm[:ss.s], "
    "hh mm ss.s or 10h00m00s",
    "examples": ["150.0", "10:00:24"],
}
DEC_STRING = {
    "type": "string",
    "pattern": f"^(?:{DEC_FORM})$",
    "description": "declination: decimal degrees in [-90, 90], or dd:mm[:ss.s], dd mm ss.s or "
    "+02d12m00s",
    "examples": ["2.2", "+02:12:00"],
}
_RA_JSON = {
    "anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": 360}, RA_STRING],
    "description": RA_STRING["description"],
}
_DEC_JSON = {
    "anyOf": [{"type": "number", "minimum": -90, "maximum": 90}, DEC_STRING],
    "description": DEC_STRING["description"],
}
#: A coordinate of a request body, as the schema states it (checked by the routes).
RaIn = Annotated[float | str, WithJsonSchema(_RA_JSON)]
DecIn = Annotated[float | str, WithJsonSchema(_DEC_JSON)]

EXAMPLE_PREDICTION = {
    "oh_p50": 8.98,
    "oh_sigma": 0.08,
    "oh_p16": 8.90,
    "oh_p84": 9.06,
    "log_mstar": None,
    "log_mstar_sigma": None,
    "tta": 8,
    "tta_spread": {"oh_p50": 0.012},
    "ood_score": 0.962,
    "model_version": "12942675c3f6e0a4…",
    "model_name": "oh",
    "demo": False,
    "notice": None,
    "cached": False,
    "flags": [],
    "source": "coordinates",
    "ra": 150.0,
    "dec": 2.2,
    "object": {
        "objID": 1237651753997238347,
        "type": 3,
        "type_name": "galaxy",
        "ra": 150.000431,
        "dec": 2.200212,
        "separation_arcsec": 1.73,
        "petroR90_r": 6.1,
        "petroMag_r": 16.9,
        "explore_url": "https://skyserver.sdss.org/dr17/VisualTools/explore/summary?id=1237651753997238347",
    },
    "object_error": None,
    "image_sha256": None,
}


class CoordinatesIn(BaseModel):
    """A sky position: decimal degrees, or sexagesimal strings (RA in hours)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ra": 150.0, "dec": 2.2}, {"ra": "10:00:00", "dec": "+02:12:00"}]
        }
    )

    ra: RaIn
    dec: DecIn


class ObjectOut(BaseModel):
    """The SDSS photometric object a prediction is about (its cutout is centred on it)."""

    objID: int = Field(description="SDSS photometric object ID")  # noqa: N815
    type: int = Field(description="PhotoObj.type: 3 galaxy, 6 star, …")
    type_name: str
    ra: float = Field(description="the object's right ascension (deg)")
    dec: float = Field(description="the object's declination (deg)")
    separation_arcsec: float = Field(description="from the position asked for")
    petroR90_r: float | None = Field(description="r-band Petrosian R90 (arcsec)")  # noqa: N815
    petroMag_r: float | None = Field(description="r-band Petrosian magnitude")  # noqa: N815
    explore_url: str = Field(description="SkyServer's Explore page for the object")


class PredictionOut(BaseModel):
    """One galaxy's prediction. Values are dex; sigma is calibrated (68% within ±sigma)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_PREDICTION]})

    oh_p50: float | None = Field(description="12 + log(O/H)")
    oh_sigma: float | None = Field(description="uncertainty of oh_p50 (1 sigma)")
    oh_p16: float | None = Field(description="oh_p50 - oh_sigma")
    oh_p84: float | None = Field(description="oh_p50 + oh_sigma")
    log_mstar: float | None = Field(
        description="log10 stellar mass [Msun], if the model predicts it"
    )
    log_mstar_sigma: float | None = None
    tta: int = Field(description="test-time augmentation copies averaged (1, 2, 4 or 8)")
    tta_spread: dict[str, float] = Field(description="std of each output over the TTA copies")
    ood_score: float | None = Field(
        None,
        description="out-of-distribution score: the Mahalanobis distance of the image's "
        "network features (and, for newer models, the larger of that and the distance of its "
        "pixel statistics: colours, concentration, sky) from the training set's, over the "
        "square root of their number (about 1 for a typical training galaxy); above the "
        "model's threshold (the 99th percentile of its "
        "validation galaxies) the flags hold out_of_distribution. Null for a model trained "
        "before the score existed",
    )
    model_version: str = Field(description="SHA-256 of the checkpoint file")
    model_name: str
    demo: bool = Field(description="true for the mock-sky demo model: not for science")
    notice: str | None = None
    cached: bool = Field(description="answered from the cache")
    flags: list[str] = Field(
        description="quality flags, e.g. grayscale_converted, resized, out_of_distribution"
    )
    source: Literal["coordinates", "image"]
    ra: float | None = Field(None, description="the position asked for (deg)")
    dec: float | None = Field(None, description="the position asked for (deg)")
    matched_ra: float | None = Field(
        None,
        description="where the prediction was made (deg): the cutout's centre, on the SDSS "
        "object when there is one; a cached answer's own position (within 0.5 arcsec)",
    )
    matched_dec: float | None = Field(None, description="as matched_ra, the declination")
    object: ObjectOut | None = Field(
        None,
        description="the SDSS object at the position (null: none within the match radius, "
        "the look-up failed, or an uploaded image)",
    )
    object_error: str | None = Field(None, description="why the object is unknown")
    image_sha256: str | None = None


class ModelOut(BaseModel):
    """The loaded model."""

    name: str
    version: str = Field(description="SHA-256 of the checkpoint file (the cache key's model part)")
    checkpoint_sha256: str
    architecture: str
    outputs: list[str]
    input_size: int
    bands: str
    pixel_scale: float | None
    training_data: str
    test_metrics: dict
    demo: bool
    notice: str | None
    tta: int = Field(description="test-time augmentation copies this service averages")
    served_test_metrics: dict | None = Field(
        description="the test metrics at the TTA served (null where training did not measure "
        "that level; test_metrics holds the levels it did)"
    )
    device: str


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str]


class ErrorOut(BaseModel):
    """Every error: a one-line reason, and flags where the input had a known problem."""

    detail: str
    flags: list[str] = []


class TargetIn(BaseModel):
    """One target of a JSON batch job. Rows are checked one by one: a row that is not a valid
    target does not fail the job; it is kept, reported ``invalid`` with its reason."""

    ra: RaIn
    dec: DecIn
    id: str | int | None = Field(None, description="your identifier, returned with the result")


class JobCounts(BaseModel):
    queued: int = Field(description="valid targets not answered yet")
    done: int = Field(description="predicted, or answered from the cache")
    failed: int = Field(description="could not be predicted; the results say why")
    invalid: int = Field(description="bad input rows, never run; the results say why")


class JobOut(BaseModel):
    """A batch job's status. ``progress`` is the fraction of rows answered."""

    id: str
    status: Literal["queued", "running", "done"]
    n_targets: int
    counts: JobCounts
    progress: float
    n_chunks: int
    model_version: str
    tta: int
    source: str
    filename: str | None
    notice: str | None = Field(None, description="the model's caveat (the mock-sky demo's)")
    input_columns: list[str] = Field(
        [], description="the input's columns, given back first in every results row"
    )
    created_at: UtcDateTime
    finished_at: UtcDateTime | None
    links: dict[str, str] = Field(description="status and results URLs")
